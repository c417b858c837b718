// infernb: the epilogue of a tile of query rows held in mma.m16n8k16 accumulator fragments (a kernel part).
//
// A warp holds M tiles of 16 rows x HEAD_DIM of O (lane g = lane / 4, t = lane % 4 owns rows g and g + 8 of each
// tile, columns 2t, 2t + 1 of each 8-column n-tile: mma.cuh), and per row the output scale and the natural-log LSE
// from softmax_state_t::finish.
//
//   store_o_lse(...)    normalized O rounded to T through the warp's own rows of a swizzled shared-memory tile
//                       (only this warp reads them), then out with 16-byte stores; the rows' LSE. ROWS says
//                       where tile row r goes: valid(r) (padding rows are skipped), out_row(out, r) (the row in
//                       out), lse_index(r).
//   store_partial(...)  a split item's part: fp32 O (scaled) and LSE into partial-state slot `slot`
//                       ([slots][TILE_Q][HEAD_DIM], [slots][TILE_Q]), merged later by merge_states.cuh.
#pragma once
#include <infernb/common.cuh>
#include <infernb/mma.cuh>

namespace infernb {

template <typename T, int HEAD_DIM, int M, int WARP_ROWS, typename ROWS>
__device__ __forceinline__ void store_o_lse(float (&o)[M][HEAD_DIM / 8][4], const float (&scale)[2 * M],
                                            const float (&lse_r)[2 * M], T* s_tile, const ROWS& rows, T* out,
                                            float* lse, int warp, int lane) {
  constexpr int CH = HEAD_DIM / 8, DTILES = HEAD_DIM / 8;
  const int g = lane / 4, t = lane % 4;
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < M; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp * WARP_ROWS + mt * 16 + g + 8 * h;
#pragma unroll
      for (int j = 0; j < DTILES; ++j) {
        const unsigned val = mma::pack2<T>(o[mt][j][2 * h] * scale[2 * mt + h], o[mt][j][2 * h + 1] * scale[2 * mt + h]);
        *reinterpret_cast<unsigned*>(s_tile + mma::swizzle_elem<CH>(row, 8 * j + 2 * t)) = val;
      }
    }
  }
  __syncwarp();
  for (int i = lane; i < WARP_ROWS * CH; i += 32) {
    const int row = warp * WARP_ROWS + i / CH, ch = i % CH;
    if (rows.valid(row)) {
      T* dst = rows.out_row(out, row);
      *reinterpret_cast<uint4*>(dst + ch * 8) = *reinterpret_cast<const uint4*>(s_tile + mma::swizzle<CH>(row, ch) * 8);
    }
  }
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < 2 * M; ++r) {
      const int row = warp * WARP_ROWS + (r / 2) * 16 + g + (r % 2) * 8;
      if (rows.valid(row)) lse[rows.lse_index(row)] = lse_r[r];
    }
  }
}

template <int HEAD_DIM, int M, int WARP_ROWS, int TILE_Q>
__device__ __forceinline__ void store_partial(float (&o)[M][HEAD_DIM / 8][4], const float (&scale)[2 * M],
                                              const float (&lse_r)[2 * M], float* part_o, float* part_lse, int slot,
                                              int warp, int lane) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < M; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp * WARP_ROWS + mt * 16 + g + 8 * h;
      float* dst = part_o + ((long long)slot * TILE_Q + row) * HEAD_DIM + 2 * t;
#pragma unroll
      for (int j = 0; j < HEAD_DIM / 8; ++j)
        *reinterpret_cast<float2*>(dst + 8 * j) =
            make_float2(o[mt][j][2 * h] * scale[2 * mt + h], o[mt][j][2 * h + 1] * scale[2 * mt + h]);
      if (t == 0) part_lse[(long long)slot * TILE_Q + row] = lse_r[2 * mt + h];
    }
  }
}

}  // namespace infernb
