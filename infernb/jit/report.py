"""What a compile produced: per-kernel resource usage and timing (parsed from ptxas' verbose log)."""
from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class KernelResources:
    """ptxas' resource report for one entry point."""

    name: str            # short name (``merge_states``)
    lowered_name: str    # mangled symbol in the cubin
    registers: int
    spill_stores: int    # bytes
    spill_loads: int     # bytes
    stack_frame: int     # bytes
    smem_static: int     # bytes of static shared memory
    barriers: int

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


@dataclasses.dataclass(frozen=True, repr=False)
class CompileReport:
    """Everything :func:`infernb.jit.build` knows about one specialization."""

    spec_name: str
    arch: str
    cache_key: str
    kernels: tuple[KernelResources, ...]
    compile_seconds: float        # NVRTC time when it was compiled (also reported on a cache hit)
    cache_hit: bool
    load_seconds: float           # time to obtain the cubin in this call (cache read or compile)
    nvrtc_version: tuple[int, int]
    cubin_bytes: int
    note: str = ""                # e.g. "rebuilt: corrupt cache entry"

    @property
    def spills(self) -> bool:
        return any(k.spills for k in self.kernels)

    def rows(self) -> list[dict]:
        """One dict per kernel, for tables and plots."""
        return [dict(spec=self.spec_name, kernel=k.name, arch=self.arch, registers=k.registers,
                     spill_stores=k.spill_stores, spill_loads=k.spill_loads, stack_frame=k.stack_frame,
                     smem_static=k.smem_static, compile_s=round(self.compile_seconds, 3),
                     cache="hit" if self.cache_hit else "miss") for k in self.kernels]

    def __str__(self) -> str:
        head = (f"{self.spec_name} [{self.arch}, NVRTC {self.nvrtc_version[0]}.{self.nvrtc_version[1]}] "
                f"{'cache hit' if self.cache_hit else 'compiled'} in {self.load_seconds * 1e3:.1f} ms "
                f"(compile {self.compile_seconds:.2f} s), cubin {self.cubin_bytes} B"
                + (f"; {self.note}" if self.note else ""))
        body = [f"  {k.name:<24} {k.registers:>3} regs  {k.spill_stores:>4} B spill st  {k.spill_loads:>4} B spill ld"
                f"  {k.stack_frame:>4} B stack  {k.smem_static:>6} B smem" for k in self.kernels]
        return "\n".join([head, *body])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{k.name}</td><td>{k.registers}</td><td>{k.spill_stores}/{k.spill_loads}</td>"
            f"<td>{k.stack_frame}</td><td>{k.smem_static}</td></tr>" for k in self.kernels)
        status = "cache hit" if self.cache_hit else "compiled"
        return (f"<b>{self.spec_name}</b> &mdash; {self.arch}, {status} in {self.load_seconds * 1e3:.1f} ms "
                f"(NVRTC compile {self.compile_seconds:.2f} s)<table><tr><th>kernel</th><th>registers</th>"
                f"<th>spill st/ld (B)</th><th>stack (B)</th><th>smem (B)</th></tr>{rows}</table>")


_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def parse_ptxas_log(log: str) -> dict[str, dict]:
    """``{lowered_name: {registers, spill_stores, spill_loads, stack_frame, smem_static, barriers}}``."""
    out: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = out.setdefault(m.group(1), dict(registers=0, spill_stores=0, spill_loads=0, stack_frame=0,
                                                        smem_static=0, barriers=0))
        elif m := _PROPS.search(line):
            current = out.setdefault(m.group(1), dict(registers=0, spill_stores=0, spill_loads=0, stack_frame=0,
                                                        smem_static=0, barriers=0))
        elif current is not None and (m := _FRAME.search(line)):
            current.update(stack_frame=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := _USED.search(line)):
            current.update(registers=int(m.group(1)), barriers=int(m.group(2) or 0), smem_static=int(m.group(3) or 0))
    return out
