"""NVRTC compilation of a :class:`KernelSpec` to a cubin, with readable errors."""
from __future__ import annotations

import re
import time
from pathlib import Path

from ..errors import CompileError
from . import toolchain
from .spec import INCLUDE_DIR, KernelSpec

BASE_OPTIONS = ("-std=c++17", "--ptxas-options=-v", "-lineinfo", "-default-device")


def compile_options(arch: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Options passed to NVRTC (include paths are added at compile time, not hashed: contents are)."""
    return [f"-arch={arch}", *BASE_OPTIONS, *extra]


def compile_spec(spec: KernelSpec, arch: str, extra_options: tuple[str, ...] = ()) -> dict:
    """Compile ``spec`` for ``arch``; return ``{cubin, log, lowered, seconds}``. Raises :class:`CompileError`."""
    nvrtc = toolchain.nvrtc()
    source = spec.render()
    options = compile_options(arch, extra_options) + [f"-I{INCLUDE_DIR}"] + [f"-I{d}" for d in toolchain.cuda_include_dirs()]
    t0 = time.perf_counter()
    prog = nvrtc.createProgram(source, spec.filename, [], [])
    try:
        for _, expr in spec.kernels:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError:
            log = nvrtc.getProgramLog(prog)
            raise CompileError(format_compile_error(spec, arch, log, source), kernel=spec.name, log=log,
                               source=source) from None
        log = nvrtc.getProgramLog(prog)
        lowered = {short: nvrtc.getLoweredName(prog, expr) for short, expr in spec.kernels}
        cubin = toolchain.get_cubin(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return dict(cubin=bytes(cubin), log=log, lowered=lowered, seconds=time.perf_counter() - t0)


_DIAG = re.compile(r"^(?P<file>[^\s(][^(]*)\((?P<line>\d+)\): (?P<kind>error|catastrophic error|warning)[^:]*: (?P<msg>.*)$")


def format_compile_error(spec: KernelSpec, arch: str, log: str, source: str, context: int = 2,
                         max_errors: int = 8) -> str:
    """Turn an NVRTC log into a message that shows each error's lines with ``context`` lines around them."""
    errors = []   # (file, line, message, ["detected during ..." lines naming the template instantiation])
    for line in log.splitlines():
        m = _DIAG.match(line.strip())
        if m and "error" in m.group("kind"):
            errors.append((m.group("file"), int(m.group("line")), m.group("msg"), []))
        elif errors and m is None and line.strip() and ("detected during" in line or "instantiation of" in line
                                                         or line.startswith(" " * 10)):
            errors[-1][3].append(line.strip())
    parts = [f"NVRTC could not compile {spec.name} for {arch}: {len(errors) or 'unparsed'} error(s)"]
    for file, lineno, msg, during in errors[:max_errors]:
        if file == spec.filename:
            text, shown = source.splitlines(), f"{spec.filename} (generated)"
        else:
            try:
                text, shown = Path(file).read_text().splitlines(), _short_path(file)
            except OSError:
                text, shown = [], file
        parts.append(f"\n{shown}:{lineno}: error: {msg}")
        for i in range(max(1, lineno - context), min(len(text), lineno + context) + 1):
            parts.append(f"{'>' if i == lineno else ' '} {i:4d} | {text[i - 1]}")
        if file == spec.filename and (origin := spec.origin_of_line(lineno)):
            parts.append(f"         generated from: {origin}")
        parts.extend(f"         {d}" for d in during[:6])
    if len(errors) > max_errors:
        parts.append(f"\n... and {len(errors) - max_errors} more error(s); the full log is in err.log")
    if not errors:
        parts.append(log.strip())
    return "\n".join(parts)


def _short_path(file: str) -> str:
    p = Path(file)
    try:
        return str(p.resolve().relative_to(INCLUDE_DIR.parent.parent))
    except ValueError:
        return file
