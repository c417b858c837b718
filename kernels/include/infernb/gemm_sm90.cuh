// infernb: a warp-specialized wgmma + TMA bf16 GEMM for sm_90a -- the proof of the Hopper vocabulary (hopper.cuh)
// before the attention kernel is built on it (issue 16).
//
//   C[M, N] = A[M, K] B[N, K]^T      A, B K-major bf16 (torch's x @ w.T), fp32 accumulation, C bf16 row-major
//
// A CTA computes one BM x BN = 128 x 256 tile of C with three warpgroups:
//   warpgroup 0, the producer: one thread issues the TMA loads of each BK = 64 block of K (A's 128 x 64 and B's
//     256 x 64 tiles, 128-byte swizzled) into STAGES shared-memory stages; `full[s]` completes when a stage's bytes
//     have landed, `empty[s]` when both consumers are done reading it. Its registers go to the consumers
//     (setmaxnreg).
//   warpgroups 1 and 2, the consumers: rows [0, 64) and [64, 128) of the tile; per K block four wgmma m64n256k16
//     from the stage's descriptors into 128 fp32 accumulators a thread, one wgmma group in flight while the
//     previous block's stage is handed back; the epilogue rounds to bf16 and stores pairs straight to C.
// Shapes: M % 128 == 0, N % 256 == 0, K % 64 == 0 (infernb.ops.gemm checks them).
#pragma once
#include <infernb/common.cuh>
#include <infernb/hopper.cuh>

namespace infernb {

template <int BM, int BN, int BK, int STAGES>
struct gemm_sm90_cfg_t {
  static constexpr int THREADS = 384;                           // producer + two consumer warpgroups
  static constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 2 * STAGES * 8;   // stages, then full / empty barriers
  static constexpr int PRODUCER_REGS = 40, CONSUMER_REGS = 232;  // 128 x 40 + 256 x 232 <= 64 K
  static_assert(BM == 128 && BN == 256 && BK == 64,
                "two consumer warpgroups of 64 x 256 (m64n256k16), K blocks of one 128-byte swizzled row");
  static_assert(SMEM_BYTES <= 227 * 1024, "shared memory of one SM");
  static_assert(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= 65536, "the SM's register file");
};

template <int BM, int BN, int BK, int STAGES>
__global__ void __launch_bounds__(384, 1)
gemm_bf16_tn_kernel(const __grid_constant__ sm90::tensor_map_t a_map, const __grid_constant__ sm90::tensor_map_t b_map,
                    __nv_bfloat16* __restrict__ c, int M, int N, int K) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using cfg = gemm_sm90_cfg_t<BM, BN, BK, STAGES>;
  extern __shared__ __align__(1024) unsigned char smem[];
  if (sm90::smem_addr(smem) % 1024 != 0) __trap();             // 128-byte swizzle atoms are 1024-byte aligned
  unsigned char* s_a = smem;
  unsigned char* s_b = smem + STAGES * cfg::A_BYTES;
  unsigned long long* full = reinterpret_cast<unsigned long long*>(smem + STAGES * cfg::STAGE_BYTES);
  unsigned long long* empty = full + STAGES;
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN, kblocks = K / BK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      sm90::mbar_init(full + s, 1);                              // the producer's arrive (with the TMA bytes)
      sm90::mbar_init(empty + s, 2);                             // one arrive per consumer warpgroup
    }
    sm90::fence_barrier_init();
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------ producer
    sm90::setmaxnreg_dec<cfg::PRODUCER_REGS>();
    if (t == 0) {
      sm90::tma_prefetch_descriptor(&a_map);
      sm90::tma_prefetch_descriptor(&b_map);
      for (int kb = 0; kb < kblocks; ++kb) {
        const int s = kb % STAGES;
        // the stage's previous use (block kb - STAGES) released: phase kb / STAGES - 1 of empty[s]
        if (kb >= STAGES) sm90::mbar_wait(empty + s, ((kb / STAGES) & 1) ^ 1);
        sm90::mbar_arrive_expect_tx(full + s, cfg::STAGE_BYTES);
        sm90::tma_load_2d(s_a + s * cfg::A_BYTES, &a_map, full + s, kb * BK, m0);
        sm90::tma_load_2d(s_b + s * cfg::B_BYTES, &b_map, full + s, kb * BK, n0);
      }
    }
  } else {
    // ------------------------------------------------------------ consumers
    sm90::setmaxnreg_inc<cfg::CONSUMER_REGS>();
    float d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0.f;
    const int a_rows = (wg - 1) * 64 * BK * 2;                   // this warpgroup's 64 rows of the A tile, bytes
    for (int kb = 0; kb < kblocks; ++kb) {
      const int s = kb % STAGES;
      sm90::mbar_wait(full + s, (kb / STAGES) & 1);
      const unsigned a = sm90::smem_addr(s_a + s * cfg::A_BYTES + a_rows);
      const unsigned b = sm90::smem_addr(s_b + s * cfg::B_BYTES);
      sm90::wgmma_fence();
#pragma unroll
      for (int k = 0; k < BK / 16; ++k)
        sm90::wgmma_m64n256k16_bf16(d, sm90::desc_sw128(a + 32 * k), sm90::desc_sw128(b + 32 * k), true);
      sm90::wgmma_commit();
      sm90::wgmma_wait<1>();                                     // block kb - 1's wgmma done: its stage is free
      sm90::fence_operands(d);
      if (kb > 0 && t == 0) sm90::mbar_arrive(empty + (kb - 1) % STAGES);
    }
    sm90::wgmma_wait<0>();
    sm90::fence_operands(d);
    // epilogue: thread t holds rows 16 w + l / 4 (+ 8), columns 8 j + 2 (l % 4) (+ 1) of its 64 x 256 (hopper.cuh)
    const int w = t / 32, l = t % 32;
    const long long row = m0 + (wg - 1) * 64 + 16 * w + l / 4;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int col = n0 + 8 * j + 2 * (l % 4);
      *reinterpret_cast<__nv_bfloat162*>(c + row * N + col) = __floats2bfloat162_rn(d[4 * j], d[4 * j + 1]);
      *reinterpret_cast<__nv_bfloat162*>(c + (row + 8) * N + col) = __floats2bfloat162_rn(d[4 * j + 2], d[4 * j + 3]);
    }
  }
#else
  __trap();                                                       // sm_90a only (KernelSpec.archs)
#endif
}

}  // namespace infernb
