"""On-disk cubin cache.

One file per (specialization, arch, options, compiler, kernels/ contents): ``<name>-<key16>.ibk`` holding
a magic tag, a JSON header (lowered names, ptxas log, compile time, SHA-256 and size of the cubin) and the
cubin. Files are written to a temporary name and ``os.replace``-d into place, so a reader sees either
nothing or a whole entry and two processes compiling the same kernel at once both succeed (the last
rename wins; both entries are valid). A damaged entry (truncated, wrong checksum) is detected on read
and rebuilt; so is one whose header was altered (the whole entry, header and cubin, is checksummed), one whose
fields are missing or of the wrong type, and one that is not the entry the caller asked for (another name, arch or
set of entry points).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

MAGIC = b"INFERNB2"
FORMAT_VERSION = 2          # 2: whole cubins (1 held CuPy-truncated ones), whole-entry checksum


class CorruptEntry(Exception):
    """A cache file that exists but cannot be trusted."""


def cache_dir() -> Path:
    """``$INFERNB_CACHE_DIR`` or ``~/.cache/infernb/kernels``."""
    d = os.environ.get("INFERNB_CACHE_DIR")
    return Path(d) if d else Path.home() / ".cache" / "infernb" / "kernels"


def cache_key(source: str, arch: str, options: list[str], nvrtc_version, kernels_digest: str,
              toolchain: str = "") -> str:
    """SHA-256 over everything that decides the cubin: the generated unit, arch, options, NVRTC version,
    every file under ``kernels/`` and the toolchain fingerprint (NVRTC build, CUDA headers)."""
    h = hashlib.sha256()
    for part in (f"format={FORMAT_VERSION}", source, arch, "\0".join(options), repr(tuple(nvrtc_version)),
                 kernels_digest, toolchain):
        h.update(part.encode())
        h.update(b"\x00\x01")
    return h.hexdigest()


def entry_path(name: str, key: str) -> Path:
    return cache_dir() / f"{name}-{key[:16]}.ibk"


#: The header's fields and their types (anything else, or anything missing, means rebuild).
FIELDS = {"name": str, "arch": str, "lowered": dict, "log": str, "compile_seconds": (int, float),
          "nvrtc_version": list, "cubin_sha256": str, "cubin_size": int}


def _entry_sum(meta: dict, cubin: bytes) -> str:
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "entry_sha256"}, sort_keys=True).encode())
    h.update(b"\0")
    h.update(cubin)
    return h.hexdigest()


def write_entry(path: Path, meta: dict, cubin: bytes) -> None:
    meta = dict(meta, cubin_sha256=hashlib.sha256(cubin).hexdigest(), cubin_size=len(cubin))
    meta["entry_sha256"] = _entry_sum(meta, cubin)
    header = json.dumps(meta, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header + cubin)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_entry(path: Path, expect: dict | None = None) -> tuple[dict, bytes] | None:
    """``(meta, cubin)``; ``None`` if absent; :class:`CorruptEntry` if present but damaged, altered, incomplete, or
    not what ``expect`` describes (``name``, ``arch``: equal; ``kernels``: the entry points' short names)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if data[:8] != MAGIC:
            raise CorruptEntry("bad magic")
        (n,) = struct.unpack("<Q", data[8:16])
        meta = json.loads(data[16:16 + n])
        cubin = data[16 + n:]
        if not isinstance(meta, dict):
            raise CorruptEntry("header is not an object")
        for key, typ in FIELDS.items():
            if not isinstance(meta.get(key), typ) or isinstance(meta.get(key), bool):
                raise CorruptEntry(f"header field {key!r} missing or not a {typ}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta["lowered"].items()):
            raise CorruptEntry("header field 'lowered' is not a map of names")
        if len(cubin) != meta["cubin_size"] or hashlib.sha256(cubin).hexdigest() != meta["cubin_sha256"]:
            raise CorruptEntry("cubin checksum mismatch")
        if meta.get("entry_sha256") != _entry_sum(meta, cubin):
            raise CorruptEntry("entry checksum mismatch (header altered)")
        if expect is not None:
            if "name" in expect and meta["name"] != expect["name"]:
                raise CorruptEntry(f"entry is for {meta['name']}, not {expect['name']}")
            if "arch" in expect and meta["arch"] != expect["arch"]:
                raise CorruptEntry(f"entry is for {meta['arch']}, not {expect['arch']}")
            if "kernels" in expect and sorted(meta["lowered"]) != sorted(expect["kernels"]):
                raise CorruptEntry(f"entry points {sorted(meta['lowered'])}, expected {sorted(expect['kernels'])}")
        return meta, cubin
    except CorruptEntry:
        raise
    except Exception as e:  # truncated header, bad JSON
        raise CorruptEntry(f"unreadable entry: {e}") from None
