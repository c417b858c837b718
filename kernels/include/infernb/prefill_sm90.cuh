// infernb: prefill / append attention for Hopper (sm_90a): wgmma + TMA, warp-specialized (issue 16).
//
// The same work items, key runs and plan as the mma.sync kernel (prefill.cuh: prefill_item_t, prefill_run_t; an item
// is TILE_Q = 128 packed rows of one request and one KV head against its key runs), the same online-softmax state
// (softmax_state.cuh: a warp's 16 rows of a wgmma accumulator are 16 mma.m16n8 tiles, the layout that part is
// written for) and the same GQA packing. A CTA runs the items the planner gave it with three warpgroups:
//
//   warpgroup 0, the producer (its registers handed to the consumers by setmaxnreg): one thread walks the CTA's items
//     and their key runs in blocks of BLOCK_N = 128 keys and loads each block's K and V with TMA (2-D boxes of
//     128 keys x 64 head-dim columns, 128-byte swizzled, from k / v viewed as [tokens, num_kv_heads * head_dim])
//     into STAGES shared-memory stages; full[s] completes when a stage has landed, empty[s] when the 8 consumer warps
//     are done with it. A box past the tensor's end is zero-filled; keys past a run's end are masked.
//   warpgroups 1 and 2, the consumers: rows [64 c, 64 c + 64) of the tile (c = warpgroup - 1). Per item they load
//     their Q rows (cp.async, rows past the tile zero-filled) into the 128-byte-swizzled layout wgmma reads; per
//     block: S = Q K^T (HEAD_DIM / 16 wgmma m64n128k16, both operands K-major in shared memory) -> logits: scale,
//     causal / window / run-end masks on the blocks that need them -> online softmax -> P rounded to T in registers
//     (the accumulator layout is the A-fragment layout) -> O += P V (8 wgmma m64n128k16 with A from registers, V
//     MN-major in shared memory) -> the stage handed back. The epilogue normalizes O and writes it and the
//     natural-log LSE straight from registers.
//
// Plans must not split a unit (no partial states here: the planner is asked for none). Head dim 128 (two 64-column
// swizzled slabs per tile), bf16 or f16, ragged K/V, no variant hooks, no RoPE: infernb.ops.prefill_sm90 says which
// runs qualify.
#pragma once
#include <infernb/common.cuh>
#include <infernb/hopper.cuh>
#include <infernb/mma.cuh>
#include <infernb/prefill.cuh>
#include <infernb/softmax_state.cuh>

namespace infernb {

// SCHED bits of the Hopper prefill kernel's consumers
constexpr int SM90_OVERLAP = 1;    // inside a warpgroup: S_j = Q K_j^T and O += P_(j-1) V_(j-1) in flight together,
                                   // S_j's softmax while P V runs, O rescaled after it
constexpr int SM90_PINGPONG = 2;   // between the two: each issues its GEMMs after the other has issued its own

namespace detail {
// The blocks of BLOCK_N keys of an item's key runs, in order (producer and consumers walk the same sequence).
template <int BN>
struct sm90_blocks_t {
  int r, r_end, p0, pos_end;
  __device__ __forceinline__ void seek(const prefill_run_t* runs) {
    for (; r < r_end; ++r) {
      p0 = runs[r].pos_start;
      pos_end = runs[r].pos_end;
      if (p0 < pos_end) return;
    }
  }
  __device__ __forceinline__ void begin(const prefill_run_t* runs, int run_begin, int run_end) {
    r = run_begin;
    r_end = run_end;
    seek(runs);
  }
  __device__ __forceinline__ bool done() const { return r >= r_end; }
  __device__ __forceinline__ void next(const prefill_run_t* runs) {
    p0 += BN;
    if (p0 >= pos_end) {
      ++r;
      seek(runs);
    }
  }
};
}  // namespace detail

template <typename T, int HEAD_DIM, int STAGES>
struct prefill_sm90_cfg_t {
  static constexpr int THREADS = 384, TILE_Q = 128, BLOCK_N = 128;
  static constexpr int SLAB = 64;                                   // head-dim columns of one 128-byte swizzled slab
  static constexpr int SLABS = HEAD_DIM / SLAB;
  static constexpr int Q_BYTES = TILE_Q * HEAD_DIM * 2;             // [slab][128 rows][128 B]
  static constexpr int KV_BYTES = BLOCK_N * HEAD_DIM * 2;           // K or V of a stage: [slab][128 keys][128 B]
  static constexpr int STAGE_BYTES = 2 * KV_BYTES;                  // K, then V
  static constexpr int SMEM_BYTES = Q_BYTES + STAGES * STAGE_BYTES + 2 * STAGES * 8;
  static constexpr int PRODUCER_REGS = 24, CONSUMER_REGS = 240;     // 128 x 24 + 256 x 240 <= 64 K
  static_assert(HEAD_DIM == 128, "the Hopper prefill kernel is written for head dim 128");
  static_assert(SMEM_BYTES <= 227 * 1024, "shared memory of one SM");
  static_assert(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= 65536, "the SM's register file");
};

// grid: the plan's CTAs; block: 384 threads; dynamic shared memory: prefill_sm90_cfg_t::SMEM_BYTES.
// k_map / v_map: TMA descriptors of k and v as [kv_tokens, num_kv_heads * HEAD_DIM] (boxes of 128 x 64).
// q, out: [q_tokens, num_qo_heads, HEAD_DIM]; lse: [q_tokens, num_qo_heads] (natural log). window_left: -1 off.
template <typename T, int HEAD_DIM, int STAGES, bool CAUSAL, int SCHED>
__global__ void __launch_bounds__(384, 1)
prefill_sm90_kernel(const __grid_constant__ sm90::tensor_map_t k_map, const __grid_constant__ sm90::tensor_map_t v_map,
                    const T* __restrict__ q, const prefill_item_t* __restrict__ items, const int* __restrict__ cta_ptr,
                    const prefill_run_t* __restrict__ runs, T* __restrict__ out, float* __restrict__ lse,
                    float sm_scale, int group, int num_qo_heads, int window_left) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using cfg = prefill_sm90_cfg_t<T, HEAD_DIM, STAGES>;
  constexpr int D = HEAD_DIM, BN = cfg::BLOCK_N, ST = STAGES;
  const int item_begin = cta_ptr[blockIdx.x], item_end = cta_ptr[blockIdx.x + 1];
  if (item_begin >= item_end) return;

  extern __shared__ __align__(1024) unsigned char smem[];
  if (sm90::smem_addr(smem) % 1024 != 0) __trap();                 // 128-byte swizzle atoms are 1024-byte aligned
  unsigned char* s_q = smem;
  unsigned char* s_kv = smem + cfg::Q_BYTES;
  unsigned long long* full = reinterpret_cast<unsigned long long*>(s_kv + ST * cfg::STAGE_BYTES);
  unsigned long long* empty = full + ST;
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < ST; ++s) {
      sm90::mbar_init(full + s, 1);                                 // the producer's arrive, with the TMA bytes
      sm90::mbar_init(empty + s, 8);                                // one arrive per consumer warp
    }
    sm90::fence_barrier_init();
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------ producer
    sm90::setmaxnreg_dec<cfg::PRODUCER_REGS>();
    if (t != 0) return;
    sm90::tma_prefetch_descriptor(&k_map);
    sm90::tma_prefetch_descriptor(&v_map);
    int n = 0;                                                      // blocks issued so far (all items)
    for (int i = item_begin; i < item_end; ++i) {
      const prefill_item_t& it = items[i];
      const int col0 = it.kv_head * D, row_base = it.kv_start;
      detail::sm90_blocks_t<BN> bi;
      for (bi.begin(runs, it.run_begin, it.run_end); !bi.done(); bi.next(runs), ++n) {
        const int s = n % ST;
        if (n >= ST) sm90::mbar_wait(empty + s, ((n / ST) & 1) ^ 1);   // its previous use released
        unsigned char* kst = s_kv + s * cfg::STAGE_BYTES;
        sm90::mbar_arrive_expect_tx(full + s, cfg::STAGE_BYTES);
#pragma unroll
        for (int h = 0; h < cfg::SLABS; ++h) {
          sm90::tma_load_2d(kst + h * (cfg::KV_BYTES / cfg::SLABS), &k_map, full + s, col0 + h * cfg::SLAB,
                            row_base + bi.p0);
          sm90::tma_load_2d(kst + cfg::KV_BYTES + h * (cfg::KV_BYTES / cfg::SLABS), &v_map, full + s,
                            col0 + h * cfg::SLAB, row_base + bi.p0);
        }
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  sm90::setmaxnreg_inc<cfg::CONSUMER_REGS>();
  const int c = wg - 1, w = t / 32, lane = t % 32, g = lane / 4, tq = lane % 4;
  const float scale_log2 = sm_scale * LOG2E;
  // this warpgroup's Q rows: 64 rows of each slab (8 KiB a slab)
  unsigned char* s_qw = s_q + c * (64 * 128);
  constexpr int SLAB_Q = cfg::Q_BYTES / cfg::SLABS;                 // bytes of one slab of the whole Q tile
  constexpr int SLAB_KV = cfg::KV_BYTES / cfg::SLABS;
  // pingpong: warpgroup 0 issues first (warpgroup 1 passes it the first turn); every issue section of either is
  // followed by a pass to the other, so warpgroup 0 takes the one pass left over at the end (below)
  if ((SCHED & SM90_PINGPONG) && c == 1) sm90::named_barrier_arrive(3, 256);
  int n = 0;                                                        // blocks consumed so far (all items)
  for (int i = item_begin; i < item_end; ++i) {
    const prefill_item_t it = items[i];
    const int qpos0 = it.kv_len - it.qo_len;                        // position of the request's first query
    // ---- this warpgroup's 64 Q rows: 16-byte chunks, 128-byte swizzle (chunk ^ row % 8), zero past the tile
#pragma unroll
    for (int j = 0; j < 64 * (D / 8) / 128; ++j) {
      const int idx = t + 128 * j, r = idx / (D / 8), ch = idx % (D / 8);
      const int rt = 64 * c + r;                                    // row of the tile
      const bool valid = rt < it.rows;
      const T* src = valid ? q + detail::packed_row_index(it.q_start, it.row0 + rt, group, it.kv_head, num_qo_heads) * D +
                                 ch * 8
                           : q;
      const int slab = ch / 8, cc = ch % 8;
      mma::cp_async16(sm90::smem_addr(s_qw + slab * SLAB_Q + r * 128 + ((cc ^ (r % 8)) * 16)), src, valid);
    }
    mma::cp_async_commit();
    mma::cp_async_wait<0>();
    sm90::fence_proxy_async();                                      // the copies visible to wgmma (async proxy)
    sm90::named_barrier_sync(1 + c, 128);

    // ---- this thread's rows (g and g + 8 of its warp's 16): position (padding rows take the last real row's)
    int rpos[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int rt = min(64 * c + 16 * w + g + 8 * h, it.rows - 1);
      rpos[h] = qpos0 + (it.row0 + rt) / group;
    }
    // the warpgroup's first and last positions: a block inside every row's bounds needs no per-element mask
    const int wpos_first = qpos0 + (it.row0 + min(64 * c, it.rows - 1)) / group;
    const int wpos_last = qpos0 + (it.row0 + min(64 * c + 63, it.rows - 1)) / group;

    float o[1][16][4];
#pragma unroll
    for (int j = 0; j < 16; ++j) o[0][j][0] = o[0][j][1] = o[0][j][2] = o[0][j][3] = 0.f;
    softmax_state_t<1, true> state;
    state.init();
    float(&of)[64] = reinterpret_cast<float(&)[64]>(o);
    const unsigned qa = sm90::smem_addr(s_qw);
    float sacc[1][16][4];
    float(&sf)[64] = reinterpret_cast<float(&)[64]>(sacc);
    unsigned pa[8][4];

    // S = Q K^T of the stage's K (issued, not waited for)
    auto issue_s = [&](int s) {
      const unsigned kst = sm90::smem_addr(s_kv + s * cfg::STAGE_BYTES);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const unsigned off = (kk / 4) * SLAB_Q + 32 * (kk % 4), koff = (kk / 4) * SLAB_KV + 32 * (kk % 4);
        sm90::wgmma_m64n128k16_ss<T>(sf, sm90::desc_sw128(qa + off), sm90::desc_sw128(kst + koff), kk > 0);
      }
    };
    // O += P V of the stage's V, P from pa (issued, not waited for: pa stays untouched until then)
    auto issue_pv = [&](int s) {
      const unsigned vst = sm90::smem_addr(s_kv + s * cfg::STAGE_BYTES) + cfg::KV_BYTES;
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)
        sm90::wgmma_m64n128k16_rs<T>(of, pa[kk], sm90::desc_sw128_mn(vst + 2048 * kk, SLAB_KV));
    };
    // masks: keys past the run's end, causal (pos <= the row's position), window (pos >= position - w)
    auto mask = [&](int p0, int pos_end) {
      const int last = min(p0 + BN, pos_end) - 1;                   // the block's last valid key
      const bool full_block = last == p0 + BN - 1 && (!CAUSAL || last <= wpos_first) &&
                              (window_left < 0 || p0 >= wpos_last - window_left);
      if (full_block) return;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int hi = CAUSAL ? min(last, rpos[h]) : last;
        const int lo = window_left >= 0 ? rpos[h] - window_left : -0x7fffffff - 1;
#pragma unroll
        for (int j = 0; j < 16; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int pos = p0 + 8 * j + 2 * tq + e;
            if (!((pos <= hi) & (pos >= lo))) sacc[0][j][2 * h + e] = -INFERNB_INF;
          }
      }
    };
    // P as A fragments (k-step kk: keys 16 kk .. 16 kk + 15 = n-tiles 2 kk, 2 kk + 1)
    auto pack_p = [&]() {
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        pa[kk][0] = mma::pack2<T>(sacc[0][2 * kk][0], sacc[0][2 * kk][1]);
        pa[kk][1] = mma::pack2<T>(sacc[0][2 * kk][2], sacc[0][2 * kk][3]);
        pa[kk][2] = mma::pack2<T>(sacc[0][2 * kk + 1][0], sacc[0][2 * kk + 1][1]);
        pa[kk][3] = mma::pack2<T>(sacc[0][2 * kk + 1][2], sacc[0][2 * kk + 1][3]);
      }
    };
    // pingpong: wait for this warpgroup's turn to issue; hand the turn to the other one
    auto turn_wait = [&]() { if (SCHED & SM90_PINGPONG) sm90::named_barrier_sync(3 + c, 256); };
    auto turn_pass = [&]() { if (SCHED & SM90_PINGPONG) sm90::named_barrier_arrive(3 + (c ^ 1), 256); };
    auto release = [&](int s) { if (lane == 0) sm90::mbar_arrive(empty + s); };   // this warp is done with it

    detail::sm90_blocks_t<BN> bi;
    bi.begin(runs, it.run_begin, it.run_end);
    if (!(SCHED & SM90_OVERLAP)) {
      // one block at a time: S, wait, softmax, P V, wait, release
      for (; !bi.done(); bi.next(runs), ++n) {
        const int s = n % ST;
        sm90::mbar_wait(full + s, (n / ST) & 1);
        turn_wait();
        sm90::wgmma_fence();
        issue_s(s);
        sm90::wgmma_commit();
        turn_pass();
        sm90::wgmma_wait<0>();
        sm90::fence_operands(sf);
        mask(bi.p0, bi.pos_end);
        state.update(sacc, o, scale_log2);
        pack_p();
        turn_wait();
        sm90::wgmma_fence();
        issue_pv(s);
        sm90::wgmma_commit();
        turn_pass();
        sm90::wgmma_wait<0>();
        sm90::fence_operands(of);
        release(s);
      }
    } else if (!bi.done()) {
      // block 0: S, softmax, P
      int s_prev = n % ST;
      sm90::mbar_wait(full + s_prev, (n / ST) & 1);
      turn_wait();
      sm90::wgmma_fence();
      issue_s(s_prev);
      sm90::wgmma_commit();
      turn_pass();
      sm90::wgmma_wait<0>();
      sm90::fence_operands(sf);
      mask(bi.p0, bi.pos_end);
      state.update(sacc, o, scale_log2);                           // (o is zero: its rescale is void)
      pack_p();
      ++n;
      // blocks j >= 1: S_j and P_(j-1) V_(j-1) issued together; S_j's softmax under the P V
      for (bi.next(runs); !bi.done(); bi.next(runs), ++n) {
        const int s = n % ST;
        sm90::mbar_wait(full + s, (n / ST) & 1);
        turn_wait();
        sm90::wgmma_fence();
        issue_s(s);
        sm90::wgmma_commit();
        issue_pv(s_prev);
        sm90::wgmma_commit();
        turn_pass();
        sm90::wgmma_wait<1>();                                      // S_j landed (P V may still run)
        sm90::fence_operands(sf);
        mask(bi.p0, bi.pos_end);
        float alpha[2];
        const bool moved = state.update_deferred(sacc, scale_log2, alpha);
        sm90::wgmma_wait<0>();                                      // P_(j-1) V_(j-1) done: O, pa and the stage free
        sm90::fence_operands(of);
        release(s_prev);
        if (moved) state.rescale(o, alpha);
        pack_p();
        s_prev = s;
      }
      // the last block's P V
      turn_wait();
      sm90::wgmma_fence();
      issue_pv(s_prev);
      sm90::wgmma_commit();
      turn_pass();
      sm90::wgmma_wait<0>();
      sm90::fence_operands(of);
      release(s_prev);
    }

    // ---- epilogue: O / l and the LSE, rows of the tile only
    float osc[2], lrow[2];
    state.finish(osc, lrow);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int rt = 64 * c + 16 * w + g + 8 * h;
      if (rt >= it.rows) continue;
      const long long idx = detail::packed_row_index(it.q_start, it.row0 + rt, group, it.kv_head, num_qo_heads);
      T* orow = out + idx * D;
#pragma unroll
      for (int j = 0; j < 16; ++j)
        *reinterpret_cast<unsigned*>(orow + 8 * j + 2 * tq) =
            mma::pack2<T>(o[0][j][2 * h] * osc[h], o[0][j][2 * h + 1] * osc[h]);
      if (tq == 0) lse[idx] = lrow[h];
    }
  }
  if ((SCHED & SM90_PINGPONG) && c == 0) sm90::named_barrier_sync(3, 256);   // warpgroup 1's last pass
#else
  __trap();                                                         // sm_90a only (KernelSpec.archs)
#endif
}

}  // namespace infernb
