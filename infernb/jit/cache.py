"""On-disk cubin cache.

One file per (specialization, arch, options, compiler, kernels/ contents): ``<name>-<key16>.ibk`` holding
a magic tag, a JSON header (lowered names, ptxas log, compile time, SHA-256 and size of the cubin) and the
cubin. Files are written to a temporary name and ``os.replace``-d into place, so a reader sees either
nothing or a whole entry and two processes compiling the same kernel at once both succeed (the last
rename wins; both entries are valid). A damaged entry (truncated, wrong checksum) is detected on read
and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

MAGIC = b"INFERNB1"
FORMAT_VERSION = 1


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


def write_entry(path: Path, meta: dict, cubin: bytes) -> None:
    meta = dict(meta, cubin_sha256=hashlib.sha256(cubin).hexdigest(), cubin_size=len(cubin))
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


def read_entry(path: Path) -> tuple[dict, bytes] | None:
    """``(meta, cubin)``; ``None`` if absent; :class:`CorruptEntry` if present but damaged."""
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
        if len(cubin) != meta["cubin_size"] or hashlib.sha256(cubin).hexdigest() != meta["cubin_sha256"]:
            raise CorruptEntry("cubin checksum mismatch")
        return meta, cubin
    except CorruptEntry:
        raise
    except Exception as e:  # truncated header, bad JSON, missing fields
        raise CorruptEntry(f"unreadable entry: {e}") from None
