// infernb: a streaming read that computes nothing, the benchmarks' reference for "how fast can N bytes be read"
// (benchmarks/diag/read_floor.py, bench_decode.py's read_ref), and an empty kernel (the launch's own cost).
//
// p: n 16-byte vectors. Grid-stride loop with UNROLL independent 16-byte loads in flight per thread per step
// (evict-first: the data is read once). The loaded words are XOR-ed and written to sink only on a value that
// practically never occurs, so the loads are kept and nothing is stored.
#pragma once
#include <infernb/common.cuh>

namespace infernb {

template <int UNROLL>
__global__ void __launch_bounds__(512) stream_read_kernel(const uint4* __restrict__ p, unsigned long long n,
                                                          unsigned* __restrict__ sink) {
  unsigned acc = 0;
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (; i + (UNROLL - 1) * stride < n; i += UNROLL * stride) {
    uint4 v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) v[u] = __ldcs(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += stride) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

__global__ void empty_kernel() {}

}  // namespace infernb
