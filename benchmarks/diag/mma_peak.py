"""The mma.sync ceiling of this GPU: bf16 m16n8k16 with fp32 accumulation, register operands only (no shared memory),
at the warps per SM the prefill kernel runs (8: 2 CTAs of 4 warps) and at 16. What a tensor-core prefill built on
mma.sync (FlashAttention-2, FlashInfer fa2, infernb) can reach at best; wgmma (issue 16) is not bound by it.

    python3 benchmarks/diag/mma_peak.py          (prints one line per configuration, JSON on the last line)
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SRC = r"""
extern "C" __global__ void mma_loop(float* out, int iters) {
  // ACC independent accumulators: enough mma in flight to cover the pipe's latency
  constexpr int ACC = 8;
  unsigned a[4], b[2];
  for (int i = 0; i < 4; ++i) a[i] = 0x3f803f80u ^ (threadIdx.x * 7 + i);   // bf16 pairs near 1
  for (int i = 0; i < 2; ++i) b[i] = 0x3f803f80u ^ (threadIdx.x * 5 + i);
  float d[ACC][4] = {};
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int j = 0; j < ACC; ++j)
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                   "{%0,%1,%2,%3};\n"
                   : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  float s = 0.f;
  for (int j = 0; j < ACC; ++j) s += d[j][0] + d[j][1] + d[j][2] + d[j][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"""


def main() -> int:
    import cupy as cp

    from infernb.profile import device_name

    dev = cp.cuda.Device()
    sms = dev.attributes["MultiProcessorCount"]
    kern = cp.RawKernel(SRC, "mma_loop", options=("-std=c++17",), backend="nvrtc")
    iters, acc = 4096, 8
    rows = []
    for warps_per_cta, ctas_per_sm in ((4, 2), (4, 4), (8, 2)):
        grid, block = sms * ctas_per_sm, 32 * warps_per_cta
        out = cp.empty(grid * block, cp.float32)
        kern((grid,), (block,), (out, cp.int32(iters)))          # warm-up (and the NVRTC build)
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        best = float("inf")
        for _ in range(5):
            start.record()
            kern((grid,), (block,), (out, cp.int32(iters)))
            stop.record()
            stop.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(start, stop))
        flops = 2 * 16 * 8 * 16 * acc * iters * grid * warps_per_cta
        tf = flops / (best * 1e-3) / 1e12
        rows.append(dict(warps_per_sm=warps_per_cta * ctas_per_sm, ms=best, tflops=tf))
        print(f"{warps_per_cta * ctas_per_sm:2d} warps/SM: {best:.3f} ms, {tf:.0f} TFLOP/s (bf16 mma.sync m16n8k16)")
    print(json.dumps(dict(device=device_name(), sms=sms, mma_sync=rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
