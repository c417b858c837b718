// infernb: write new tokens' K/V into a paged KV cache.
//
// k, v:      [num_tokens, num_heads, HEAD_DIM] T, contiguous, 16-byte aligned
// pool NHD:  [num_pages, 2, page_size, num_heads, HEAD_DIM] T      (HND: [num_pages, 2, num_heads, page_size, HEAD_DIM])
// dest:      [2, num_tokens] int32: row 0 = destination page, row 1 = slot within the page
//
// The page of every token was allocated on the host (PagedKVCache bookkeeping); this kernel only moves
// bytes. Work item = one 16-byte vector of one head of one token, for K and V: consecutive threads take
// consecutive vectors of a head, so both the reads and the writes of a warp are contiguous 16-byte
// accesses (a head's HEAD_DIM elements are contiguous in both layouts). Grid-stride loop.
#pragma once
#include <infernb/common.cuh>

namespace infernb {

template <typename T, int HEAD_DIM, bool HND, int NUM_THREADS>
__global__ void __launch_bounds__(NUM_THREADS)
append_paged_kv_kernel(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ pool,
                       const int* __restrict__ dest, int num_tokens, int num_heads, int page_size) {
  constexpr int VEC = vec16_size<T>();
  constexpr int VECS_PER_HEAD = HEAD_DIM / VEC;
  static_assert(HEAD_DIM % VEC == 0, "HEAD_DIM must be a multiple of the 16-byte vector width");
  const long long total = (long long)num_tokens * num_heads * VECS_PER_HEAD;
  const long long kv_plane = (long long)page_size * num_heads * HEAD_DIM;   // elements of K (or V) per page
  for (long long i = (long long)blockIdx.x * NUM_THREADS + threadIdx.x; i < total;
       i += (long long)gridDim.x * NUM_THREADS) {
    const int lane = int(i % VECS_PER_HEAD);
    const long long th = i / VECS_PER_HEAD;
    const int h = int(th % num_heads);
    const int t = int(th / num_heads);
    const long long page = dest[t];
    const int slot = dest[num_tokens + t];
    const long long src = th * HEAD_DIM + lane * VEC;
    const long long within = HND ? ((long long)h * page_size + slot) * HEAD_DIM
                                 : ((long long)slot * num_heads + h) * HEAD_DIM;
    const long long dst = page * 2 * kv_plane + within + lane * VEC;
    vec_t<T, VEC> kx, vx;
    kx.load_stream(k + src);
    vx.load_stream(v + src);
    kx.store(pool + dst);
    vx.store(pool + dst + kv_plane);
  }
}

}  // namespace infernb
