"""Compile every kernel specialization the library can generate, for each requested architecture.

    python -m infernb.ops.build_all                 # sm_90a and sm_80 (CI_ARCHS); no GPU needed
    python -m infernb.ops.build_all --arch sm_90a

Prints one line per kernel (registers, spills, stack, shared memory, compile time) and exits non-zero
if any specialization fails to compile or spills registers.
"""
from __future__ import annotations

import argparse
import sys

from tqdm.auto import tqdm

from ..jit import CI_ARCHS, CompileReport, build
from . import kernel_specializations


def build_all(archs=CI_ARCHS, *, progress: bool = True) -> list[CompileReport]:
    """Build (or load from cache) every specialization for every arch it is written for; return the reports."""
    specs = kernel_specializations()
    jobs = [(s, a) for a in archs for s in specs if s.targets(a)]
    return [build(s, a).report for s, a in tqdm(jobs, desc="compiling kernels", disable=not progress)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", help="target arch (repeatable); default: %s" % " ".join(CI_ARCHS))
    args = ap.parse_args(argv)
    reports = build_all(tuple(args.arch or CI_ARCHS))
    bad = 0
    for r in reports:
        for row in r.rows():
            flag = "  SPILLS" if row["spill_stores"] or row["spill_loads"] else ""
            bad += bool(flag)
            print(f"{row['spec']:<28} {row['kernel']:<20} {row['arch']:<7} {row['registers']:>3} regs "
                  f"{row['spill_stores']:>4}/{row['spill_loads']:<4} B spill {row['stack_frame']:>4} B stack "
                  f"{row['smem_static']:>6} B smem {row['compile_s']:>6.2f} s {row['cache']}{flag}")
    print(f"{len(reports)} specializations built, {bad} kernel(s) spill")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
