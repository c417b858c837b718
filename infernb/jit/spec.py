"""A kernel specialization and its rendering into one translation unit.

Templates hold the logic (``kernels/include/infernb/<family>.cuh``); the generated unit holds only
configuration: includes, a few typedefs/constexprs or a variant's hook struct (``preamble``), and the
instantiations, which are NVRTC *name expressions* (``infernb::merge_states_kernel<__nv_bfloat16, 128, 128>``)
so no kernel signature is repeated in Python.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

#: Root of the CUDA sources (``kernels/`` beside the package in a checkout or an editable install).
KERNELS_DIR = Path(__file__).resolve().parents[2] / "kernels"
INCLUDE_DIR = KERNELS_DIR / "include"


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One specialization of a kernel family.

    Attributes:
        family: header under ``kernels/include/infernb/`` (``"merge_states"`` -> ``merge_states.cuh``).
        name: readable, unique id used in the cache key, file names and reports
            (``merge_states_bf16_hd128``).
        kernels: entry points: ``{short_name: name_expression}``.
        preamble: configuration code placed after the family include (typedefs, variant structs).
        preamble_origin: optional ``{preamble_line_no (1-based): "where it came from"}``; compile errors
            on those lines also show the origin (e.g. the Python line of a traced variant).
        archs: the architectures it is written for (``("sm_90a",)`` for wgmma / TMA kernels); empty: every one.
    """

    family: str
    name: str
    kernels: tuple[tuple[str, str], ...]
    preamble: str = ""
    preamble_origin: tuple[tuple[int, str], ...] = ()
    archs: tuple[str, ...] = ()

    def targets(self, arch: str) -> bool:
        """Whether this specialization is written for ``arch``."""
        return not self.archs or arch in self.archs

    @property
    def filename(self) -> str:
        return f"{self.name}.cu"

    def render(self) -> str:
        """The translation unit NVRTC compiles."""
        lines = [f"// infernb generated translation unit: {self.name}",
                 f"// logic: kernels/include/infernb/{self.family}.cuh; entry points: "
                 + ", ".join(expr for _, expr in self.kernels),
                 f"#include <infernb/{self.family}.cuh>"]
        if self.preamble:
            lines.append(self.preamble.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def origin_of_line(self, line: int) -> str | None:
        """Origin note for line ``line`` of :meth:`render`'s output, if the preamble recorded one."""
        first = 4  # the preamble starts on line 4 of the unit
        return dict(self.preamble_origin).get(line - first + 1)


@functools.lru_cache(maxsize=4)
def _kernels_digest(stamp: tuple) -> str:
    h = hashlib.sha256()
    for rel, _mtime, _size in stamp:
        h.update(rel.encode())
        h.update(b"\0")
        h.update((KERNELS_DIR / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def kernels_stamp() -> tuple:
    """Cheap (path, mtime, size) listing of every file under ``kernels/`` (detects edits without reading)."""
    if not KERNELS_DIR.is_dir():
        raise FileNotFoundError(f"infernb kernel sources not found at {KERNELS_DIR}; install infernb from a "
                                "checkout with `pip install -e .` so kernels/ sits beside the package")
    files = sorted(p for p in KERNELS_DIR.rglob("*") if p.is_file() and not p.name.startswith("."))
    return tuple((str(p.relative_to(KERNELS_DIR)), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def kernels_digest() -> str:
    """SHA-256 over the path and contents of every file under ``kernels/``.

    The cache key includes it, so editing any header a kernel includes invalidates the cached cubins
    (CuPy's own cache hashes only the main source, not ``-I`` headers). Memoized on (path, mtime, size).
    """
    return _kernels_digest(kernels_stamp())
