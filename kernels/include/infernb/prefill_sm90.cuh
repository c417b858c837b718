// infernb: prefill / append attention for Hopper (sm_90a): wgmma + TMA, warp-specialized (issue 16).
//
// The same work items, key runs and plan as the mma.sync kernel (prefill.cuh: prefill_item_t, prefill_run_t; an item
// is TILE_Q = 128 packed rows of one request and one KV head against its key runs), the same online-softmax state
// (softmax_state.cuh: a warp's 16 rows of a wgmma accumulator are 16 mma.m16n8 tiles, the layout that part is
// written for) and the same GQA packing. A CTA runs the items the planner gave it with three warpgroups:
//
//   warpgroup 0, the producer (its registers handed to the consumers by setmaxnreg): one thread walks the CTA's items
//     and their key runs in blocks of BLOCK_N keys and loads each block's K and V with TMA (2-D boxes of
//     BLOCK_N keys x 64 head-dim columns, 128-byte swizzled, from k / v viewed as [tokens, num_kv_heads * head_dim])
//     into STAGES shared-memory stages; full[s] completes when a stage has landed, empty[s] when the 8 consumer warps
//     are done with it. A box past the tensor's end is zero-filled; keys past a run's end are masked.
//   warpgroups 1 and 2, the consumers: rows [64 c, 64 c + 64) of the tile (c = warpgroup - 1). Per item they load
//     their Q rows (cp.async, rows past the tile zero-filled) into the 128-byte-swizzled layout wgmma reads; per
//     block: S = Q K^T (HEAD_DIM / 16 wgmma m64nBLOCK_Nk16, both operands K-major in shared memory) -> logits: scale,
//     causal / window / run-end masks on the blocks that need them -> online softmax -> P rounded to T in registers
//     (the accumulator layout is the A-fragment layout) -> O += P V (BLOCK_N / 16 k-steps of m64nPV_Nk16 wgmmas
//     with A from registers, V MN-major in shared memory) -> the stage handed back. The epilogue normalizes O and
//     writes it and the natural-log LSE straight from registers.
//
// Plans must not split a unit (no partial states here: the planner is asked for none). Head dims 64, 128, 256 (one,
// two, four 64-column swizzled slabs per tile; 64-key blocks at 256), bf16 or f16, ragged K/V (TMA) or paged (the
// producer's cp.async), softmax variants (score_mod / mask_mod hooks, block structures), no RoPE (the op rotates q
// and K by a pass before it): infernb.ops.prefill_sm90 says which runs qualify.
#pragma once
#include <infernb/common.cuh>
#include <infernb/hopper.cuh>
#include <infernb/mma.cuh>
#include <infernb/prefill.cuh>
#include <infernb/softmax_state.cuh>
#include <infernb/variant.cuh>

// Diagnostics (infernb.profile.sm90_trace, notebook 06): -DINFERNB_SM90_TRACE=<CTAs> records the first <CTAs> CTAs'
// timelines: per CTA a header (global timer and clock64 at its start and end, its SM, its items) and, for each of its
// first SM90_TR_BLOCKS blocks, SM90_TR_SLOTS clock64 stamps of each warpgroup (its first thread's view):
//   producer   0 waits for a free stage, 1 the stage is free, 2 its loads issued, 3 (paged) its copies landed
//   consumer   0 waits for the stage, 1 it is full, 2 its turn (pingpong) taken and the GEMMs issued, 3 S landed,
//              4 the softmax done, 5 this block's P V done, 6 / 7 (the item's last block) its epilogue's start / end
// The build without the define has none of it.
#ifdef INFERNB_SM90_TRACE
#define INFERNB_SM90_TR(...) __VA_ARGS__
// (at global scope: the host looks the buffer up by this unmangled name)
__device__ unsigned long long infernb_sm90_trace[INFERNB_SM90_TRACE * (8 + 3 * 256 * 8)];
#else
#define INFERNB_SM90_TR(...)
#endif

namespace infernb {

#ifdef INFERNB_SM90_TRACE
constexpr int SM90_TR_BLOCKS = 256, SM90_TR_SLOTS = 8, SM90_TR_HEADER = 8;
constexpr int SM90_TR_CTA = SM90_TR_HEADER + 3 * SM90_TR_BLOCKS * SM90_TR_SLOTS;
static_assert(sizeof(infernb_sm90_trace) == INFERNB_SM90_TRACE * SM90_TR_CTA * 8, "trace buffer size");
namespace detail {
// stamp `slot` of block n for role (0 producer, 1 + c consumer c) when this CTA and block are recorded
__device__ __forceinline__ void sm90_stamp(int role, int n, int slot) {
  if (blockIdx.x < INFERNB_SM90_TRACE && n >= 0 && n < SM90_TR_BLOCKS)
    infernb_sm90_trace[blockIdx.x * SM90_TR_CTA + SM90_TR_HEADER + (role * SM90_TR_BLOCKS + n) * SM90_TR_SLOTS + slot] =
        clock64();
}
__device__ __forceinline__ void sm90_stamp_header(int at, int items) {
  if (blockIdx.x >= INFERNB_SM90_TRACE) return;
  unsigned long long gt;
  unsigned smid;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(gt));
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  unsigned long long* h = infernb_sm90_trace + blockIdx.x * SM90_TR_CTA;
  h[at] = gt;
  h[at + 1] = clock64();
  if (at == 0) h[2] = smid | (unsigned long long)items << 32;
}
}  // namespace detail
#endif

// SCHED bits of the Hopper prefill kernel's consumers
constexpr int SM90_OVERLAP = 1;    // inside a warpgroup: S_j = Q K_j^T and O += P_(j-1) V_(j-1) in flight together,
                                   // S_j's softmax while P V runs, O rescaled after it
constexpr int SM90_PINGPONG = 2;   // between the two: each issues its GEMMs after the other has issued its own
constexpr int SM90_PAGED_ASYNC = 4;  // paged producer: each thread's copies of a block arrive on its full barrier as
                                     // they land (cp.async.mbarrier.arrive.noinc), the thread going on to the next
                                     // block at once; the consumers fence the stage to the async proxy after their
                                     // wait. Without it, a thread waits for its copies before it arrives.

namespace detail {
// a load the compiler cannot merge with an earlier one of the same address (asm volatile): a value read again
// instead of kept live in a register
__device__ __forceinline__ int ld_uncached(const int* p) {
  int v;
  asm volatile("ld.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p));
  return v;
}
// blockIdx.x read where it is used (asm volatile: not kept live in a register, nor anything computed from it)
__device__ __forceinline__ int ctaid_here() {
  int v;
  asm volatile("mov.u32 %0, %%ctaid.x;\n" : "=r"(v));
  return v;
}
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

template <typename T, int HEAD_DIM, int STAGES, int BLOCK_N_>
struct prefill_sm90_cfg_t {
  static_assert(HEAD_DIM == 64 || HEAD_DIM == 128 || HEAD_DIM == 256, "head dims 64, 128, 256");
  // BLOCK_N keys a stage (Sm90Traits.block_n): 128, or 64 at head dim 256 (its O accumulators take 128 registers a
  // thread, its K and V stages 32 KiB each at 64 keys); 80 there is the alternative with 2 stages
  static_assert(BLOCK_N_ == 64 || BLOCK_N_ == 80 || BLOCK_N_ == 128, "BLOCK_N: 64, 80 or 128 keys");
  static constexpr int THREADS = 384, TILE_Q = 128, BLOCK_N = BLOCK_N_;
  static constexpr int PV_N = HEAD_DIM < 128 ? HEAD_DIM : 128;      // O columns of one P V wgmma (n64 or n128)
  static constexpr int SLAB = 64;                                   // head-dim columns of one 128-byte swizzled slab
  static constexpr int SLABS = HEAD_DIM / SLAB;
  static constexpr int Q_BYTES = TILE_Q * HEAD_DIM * 2;             // [slab][128 rows][128 B]
  static constexpr int KV_BYTES = BLOCK_N * HEAD_DIM * 2;           // K or V of a stage: [slab][128 keys][128 B]
  static constexpr int STAGE_BYTES = 2 * KV_BYTES;                  // K, then V
  static constexpr int ROWS_BYTES = TILE_Q * 8;                     // each tile row's (position, query head)
  static constexpr int PAGES_BYTES = 2 * BLOCK_N * 4;                // paged: a block's rows' page indices, 2 buffers
  static constexpr int SMEM_BYTES = Q_BYTES + STAGES * STAGE_BYTES + 2 * STAGES * 8 + ROWS_BYTES + PAGES_BYTES;
  // setmaxnreg moves registers inside the CTA's launch allocation (168 x 384 = 64512 at __launch_bounds__(384, 1)):
  // a budget above it never comes (the consumers' setmaxnreg.inc would wait forever)
  static constexpr int PRODUCER_REGS = 24, CONSUMER_REGS = 240;     // 128 x 24 + 256 x 240 = 64512
  static_assert(SMEM_BYTES <= 227 * 1024, "shared memory of one SM");
  static_assert(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= 168 * THREADS, "the CTA's launch allocation");
};

// grid: the plan's CTAs; block: 384 threads; dynamic shared memory: prefill_sm90_cfg_t::SMEM_BYTES.
// k_map / v_map: TMA descriptors of k and v as [kv_tokens, num_kv_heads * HEAD_DIM] (boxes of 128 x 64).
// q, out: [q_tokens, num_qo_heads, HEAD_DIM]; lse: [q_tokens, num_qo_heads] (natural log). window_left: -1 off.
// VARIANT (variant.cuh; softmax variants), SCORE_MOD / MASK_MOD: whether its hooks run. score_mod sees
// sm_scale * score and returns the logit; mask_mod is evaluated on every pair of a block except in runs the plan's
// block structure marks full (run_full[r] != 0). Both see padding rows as the tile's last real row and keys past a
// run's end as its last key (in-range arguments; those logits are masked).
// KV_MODE: 0 ragged (k_map / v_map, TMA), 1 a paged pool [pages, 2, page_size, num_kv_heads, D] (NHD), 2 one
// [pages, 2, num_kv_heads, page_size, D] (HND): the producer warpgroup's 128 threads copy each block's key rows from
// their pages with cp.async (pages are too small for TMA boxes), kv_indices the page table's indices.
template <typename T, int HEAD_DIM, int STAGES, int BLOCK_N, bool CAUSAL, int SCHED, typename VARIANT, bool SCORE_MOD,
          bool MASK_MOD, int KV_MODE>
__global__ void __launch_bounds__(384, 1)
prefill_sm90_kernel(const __grid_constant__ sm90::tensor_map_t k_map, const __grid_constant__ sm90::tensor_map_t v_map,
                    const T* __restrict__ q, const prefill_item_t* __restrict__ items, const int* __restrict__ cta_ptr,
                    const prefill_run_t* __restrict__ runs, T* __restrict__ out, float* __restrict__ lse,
                    float sm_scale, int group, int num_qo_heads, int window_left,
                    const typename VARIANT::params_t* __restrict__ vparams, const int* __restrict__ run_full,
                    const T* __restrict__ pool, const int* __restrict__ kv_indices, int num_kv_heads, int page_size,
                    int page_shift) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using cfg = prefill_sm90_cfg_t<T, HEAD_DIM, STAGES, BLOCK_N>;
  constexpr int D = HEAD_DIM, BN = cfg::BLOCK_N, ST = STAGES;
  constexpr int NT = BN / 8, DT = D / 8;                            // n-tiles of a block's logits, of O
  if (cta_ptr[blockIdx.x] >= cta_ptr[blockIdx.x + 1]) return;

  extern __shared__ __align__(1024) unsigned char smem[];
  if (sm90::smem_addr(smem) % 1024 != 0) __trap();                 // 128-byte swizzle atoms are 1024-byte aligned
  unsigned char* s_q = smem;
  unsigned char* s_kv = smem + cfg::Q_BYTES;
  unsigned long long* full = reinterpret_cast<unsigned long long*>(s_kv + ST * cfg::STAGE_BYTES);
  unsigned long long* empty = full + ST;
  // tile row r's (position, query head), written and read by the threads holding row r (no barrier): read by the
  // masks and hooks only, so the main loop keeps no registers for them
  int2* s_rows = reinterpret_cast<int2*>(empty + ST);
  int* s_pages = reinterpret_cast<int*>(s_rows + cfg::TILE_Q);     // paged: [2][BLOCK_N] page indices
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < ST; ++s) {
      // the producer's arrive with the TMA bytes (ragged), or each producer thread's once its copies landed (paged)
      sm90::mbar_init(full + s, KV_MODE == 0 ? 1 : 128);
      sm90::mbar_init(empty + s, 8);                                // one arrive per consumer warp
    }
    sm90::fence_barrier_init();
  }
  __syncthreads();
  INFERNB_SM90_TR(if (threadIdx.x == 0) detail::sm90_stamp_header(0, cta_ptr[blockIdx.x + 1] - cta_ptr[blockIdx.x]);)
  // the CTA's items are read again after each warpgroup's setmaxnreg (ptxas spills what is live across it)
  auto cta_items = [&]() {
    return make_int2(detail::ld_uncached(cta_ptr + blockIdx.x), detail::ld_uncached(cta_ptr + blockIdx.x + 1));
  };

  if (wg == 0) {
    // ------------------------------------------------------------ producer
    sm90::setmaxnreg_dec<cfg::PRODUCER_REGS>();
    if (KV_MODE != 0) {
      // paged: every thread copies 16-byte chunk t % CH of rows t / CH + (128 / CH) j of each block (K and V; CH
      // chunks a row), zero past the run; a block is signalled (full[s]) once this thread's copies of it have landed
      // and are made visible to the async proxy (wgmma reads shared memory through it), before the thread waits for
      // the next free stage (SM90_PAGED_ASYNC: as they land, the thread going on). The same job as kv_iter.cuh's
      // iterator for the mma.sync kernel, in this kernel's form: 128-byte-swizzled 64-column slabs (the layout TMA
      // and wgmma use), page ids staged synchronously, and 24 registers (the geometry recomputed from the thread
      // index and the kernel's parameters per row).
      int n = 0, pending = -1;
      // (the CTA's end re-read per item: kept live, it is the register 24 do not have)
      for (int i = cta_items().x; i < detail::ld_uncached(cta_ptr + detail::ctaid_here() + 1); ++i) {
        const prefill_item_t& it = items[i];
        const int kv_start = it.kv_start, kv_head = it.kv_head;
        detail::sm90_blocks_t<BN> bi;
        for (bi.begin(runs, it.run_begin, it.run_end); !bi.done(); bi.next(runs), ++n) {
          const int s = n % ST;
          if (!(SCHED & SM90_PAGED_ASYNC) && pending >= 0) {
            mma::cp_async_wait<0>();
            sm90::fence_proxy_async();
            sm90::mbar_arrive(full + pending);
            INFERNB_SM90_TR(if (t == 0) detail::sm90_stamp(0, n - 1, 3);)
          }
          INFERNB_SM90_TR(if (t == 0) detail::sm90_stamp(0, n, 0);)
          if (n >= ST) sm90::mbar_wait(empty + s, ((n / ST) & 1) ^ 1);   // its previous use released
          INFERNB_SM90_TR(if (t == 0) detail::sm90_stamp(0, n, 1);)
          // the block's rows' page indices, one global load a thread (row t), staged in shared memory for the
          // copies below (one round trip to the page table a block, not one a row); two buffers, so a thread that
          // runs ahead into the next block never overwrites indices another still reads
          if (const int tr = tid_here() % 128; tr < BN) {         // (the thread index read here, not kept live)
            const int pp = min(bi.p0 + tr, bi.pos_end - 1);
            s_pages[(n & 1) * BN + tr] = kv_indices[kv_start + (page_shift >= 0 ? pp >> page_shift : pp / page_size)];
          }
          sm90::named_barrier_sync(5, 128);                         // the producer warpgroup's 128 threads
          constexpr int CH = D / 8;
#pragma unroll 1
          for (int j = 0; j < BN * CH / 128; ++j) {
            const int tt = tid_here(), ch = tt % CH, r = tt / CH + (128 / CH) * j, pos = bi.p0 + r;
            const bool valid = pos < bi.pos_end;
            const int pp = valid ? pos : bi.p0;
            const int pg = page_shift >= 0 ? pp >> page_shift : pp / page_size;
            const long long off = (long long)s_pages[(n & 1) * BN + pp - bi.p0] * (2 * page_size * num_kv_heads * D) +
                                  kv_head * (KV_MODE == 2 ? page_size * D : D) +
                                  (pp - pg * page_size) * (KV_MODE == 2 ? D : num_kv_heads * D) + ch * 8;
            const unsigned dst = sm90::smem_addr(s_kv + s * cfg::STAGE_BYTES) + (ch / 8) * (cfg::KV_BYTES / cfg::SLABS) +
                                 r * 128 + (((ch % 8) ^ (r % 8)) * 16);
            mma::cp_async16(dst, pool + off, valid);
            mma::cp_async16(dst + cfg::KV_BYTES, pool + off + page_size * num_kv_heads * D, valid);
          }
          if (SCHED & SM90_PAGED_ASYNC) sm90::cp_async_mbar_arrive_noinc(full + s);
          else mma::cp_async_commit();
          INFERNB_SM90_TR(if (t == 0) detail::sm90_stamp(0, n, 2);)
          pending = s;
        }
      }
      if (!(SCHED & SM90_PAGED_ASYNC) && pending >= 0) {
        mma::cp_async_wait<0>();
        sm90::fence_proxy_async();
        sm90::mbar_arrive(full + pending);
        INFERNB_SM90_TR(if (t == 0) detail::sm90_stamp(0, n - 1, 3);)
      }
      // (with SM90_PAGED_ASYNC the last copies arrive by themselves; the thread waits for them before it exits)
      if (SCHED & SM90_PAGED_ASYNC) mma::cp_async_wait_all();
      return;
    }
    if (t != 0) return;
    const int2 cta = cta_items();
    const int item_begin = cta.x, item_end = cta.y;
    sm90::tma_prefetch_descriptor(&k_map);
    sm90::tma_prefetch_descriptor(&v_map);
    int n = 0;                                                      // blocks issued so far (all items)
    for (int i = item_begin; i < item_end; ++i) {
      const prefill_item_t& it = items[i];
      const int col0 = it.kv_head * D, row_base = it.kv_start;
      detail::sm90_blocks_t<BN> bi;
      for (bi.begin(runs, it.run_begin, it.run_end); !bi.done(); bi.next(runs), ++n) {
        const int s = n % ST;
        INFERNB_SM90_TR(detail::sm90_stamp(0, n, 0);)
        if (n >= ST) sm90::mbar_wait(empty + s, ((n / ST) & 1) ^ 1);   // its previous use released
        INFERNB_SM90_TR(detail::sm90_stamp(0, n, 1);)
        unsigned char* kst = s_kv + s * cfg::STAGE_BYTES;
        sm90::mbar_arrive_expect_tx(full + s, cfg::STAGE_BYTES);
#pragma unroll
        for (int h = 0; h < cfg::SLABS; ++h) {
          sm90::tma_load_2d(kst + h * (cfg::KV_BYTES / cfg::SLABS), &k_map, full + s, col0 + h * cfg::SLAB,
                            row_base + bi.p0);
          sm90::tma_load_2d(kst + cfg::KV_BYTES + h * (cfg::KV_BYTES / cfg::SLABS), &v_map, full + s,
                            col0 + h * cfg::SLAB, row_base + bi.p0);
        }
        INFERNB_SM90_TR(detail::sm90_stamp(0, n, 2);)
      }
    }
    return;
  }

  // -------------------------------------------------------------- consumers
  sm90::setmaxnreg_inc<cfg::CONSUMER_REGS>();
  const int2 cta = cta_items();
  const int item_begin = cta.x, item_end = cta.y;
  const int c = wg - 1, w = t / 32, lane = t % 32, g = lane / 4, tq = lane % 4;
  static_assert(VARIANT::USE_SOFTMAX, "the Hopper kernel runs softmax variants");
  // the softmax takes logits as scale * x: the raw score and the log2-domain sm_scale, or score_mod's output and
  // log2(e)
  const float scale_log2 = SCORE_MOD ? LOG2E : sm_scale * LOG2E;
  const typename VARIANT::params_t vp = *vparams;
  // this warpgroup's Q rows: 64 rows of each slab (8 KiB a slab)
  unsigned char* s_qw = s_q + c * (64 * 128);
  constexpr int SLAB_Q = cfg::Q_BYTES / cfg::SLABS;                 // bytes of one slab of the whole Q tile
  constexpr int SLAB_KV = cfg::KV_BYTES / cfg::SLABS;
  // pingpong: warpgroup 0 issues first (warpgroup 1 passes it the first turn); every issue section of either is
  // followed by a pass to the other, so warpgroup 0 takes the one pass left over at the end (below)
  if ((SCHED & SM90_PINGPONG) && c == 1) sm90::named_barrier_arrive(3, 256);
  // this warpgroup's 64 Q rows of item i: 16-byte chunks by cp.async, 128-byte swizzle (chunk ^ row % 8), zero past
  // the tile. Issued for the next item as soon as the current one's last S = Q K^T has completed (its P V and
  // epilogue hide the copy); q_ready() waits for them.
  auto load_q = [&](int i) {
    const prefill_item_t& it = items[i];
    const int rows = it.rows, q_start = it.q_start, row0 = it.row0, kv_head = it.kv_head;
    // (the thread index read here: the copy geometry is computed per call, not hoisted out of the item loop into
    // registers live through the main loop)
    const int tt = tid_here() % 128;
#pragma unroll
    for (int j = 0; j < 64 * (D / 8) / 128; ++j) {
      const int idx = tt + 128 * j, r = idx / (D / 8), ch = idx % (D / 8);
      const int rt = 64 * c + r;                                    // row of the tile
      const bool valid = rt < rows;
      const T* src = valid ? q + detail::packed_row_index(q_start, row0 + rt, group, kv_head, num_qo_heads) * D +
                                 ch * 8
                           : q;
      const int slab = ch / 8, cc = ch % 8;
      mma::cp_async16(sm90::smem_addr(s_qw + slab * SLAB_Q + r * 128 + ((cc ^ (r % 8)) * 16)), src, valid);
    }
    mma::cp_async_commit();
  };
  auto q_ready = [&]() {
    mma::cp_async_wait<0>();
    sm90::fence_proxy_async();                                      // the copies visible to wgmma (async proxy)
    sm90::named_barrier_sync(1 + c, 128);
  };
  load_q(item_begin);
  int n = 0;                                                        // blocks consumed so far (all items)
  for (int i = item_begin; i < item_end; ++i) {
    // the item's fields are read from its record where they are used (the loop's asm statements order those reads
    // after it: the main loop keeps none of them in registers)
    const prefill_item_t& it = items[i];
    const int qpos0 = it.kv_len - it.qo_len;                        // position of the request's first query
    q_ready();
    // the item's blocks; the next item's Q is loaded once the last one's S has completed
    int nblocks = 0;
    for (int r = it.run_begin; r < it.run_end; ++r)
      nblocks += max(0, runs[r].pos_end - runs[r].pos_start + BN - 1) / BN;
    const bool next_item = i + 1 < item_end;
    if (nblocks == 0 && next_item) load_q(i + 1);

    // ---- this thread's rows (g and g + 8 of its warp's 16): position (padding rows take the last real row's)
    const int my_row = 64 * c + 16 * w + g;                         // this thread's rows: my_row, my_row + 8
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int rt = min(my_row + 8 * h, it.rows - 1);
      const int2 th = detail::packed_row(it.row0 + rt, group, it.kv_head);
      s_rows[my_row + 8 * h] = make_int2(qpos0 + th.x, th.y);
    }

    float o[1][DT][4];
#pragma unroll
    for (int j = 0; j < DT; ++j) o[0][j][0] = o[0][j][1] = o[0][j][2] = o[0][j][3] = 0.f;
    softmax_state_t<1, true> state;
    state.init();
    float(&of)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);
    const unsigned qa = sm90::smem_addr(s_qw);
    float sacc[1][NT][4];
    float(&sf)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(sacc);
    unsigned pa[BN / 16][4];

    // S = Q K^T of the stage's K (issued, not waited for)
    auto issue_s = [&](int s) {
      const unsigned kst = sm90::smem_addr(s_kv + s * cfg::STAGE_BYTES);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const unsigned off = (kk / 4) * SLAB_Q + 32 * (kk % 4), koff = (kk / 4) * SLAB_KV + 32 * (kk % 4);
        sm90::wgmma_ss<T, BN>(sf, sm90::desc_sw128(qa + off), sm90::desc_sw128(kst + koff), kk > 0);
      }
    };
    // O += P V of the stage's V, P from pa (issued, not waited for: pa stays untouched until then); O's columns in
    // parts of PV_N (two n128 wgmmas at head dim 256, their V slabs 2 SLAB_KV apart)
    auto issue_pv = [&](int s) {
      const unsigned vst = sm90::smem_addr(s_kv + s * cfg::STAGE_BYTES) + cfg::KV_BYTES;
      constexpr int PN = cfg::PV_N;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
        for (int part = 0; part < D / PN; ++part)
          sm90::wgmma_rs<T, PN>(reinterpret_cast<float(&)[PN / 2]>(of[part * (PN / 2)]), pa[kk],
                                sm90::desc_sw128(vst + 2048 * kk + part * (PN / cfg::SLAB) * SLAB_KV, SLAB_KV));
    };
    // logits: score_mod, then the masks -- keys past the run's end, causal (pos <= the row's position), window
    // (pos >= position - w), mask_mod -- on the blocks that need them (a full block inside every row's bounds skips
    // the per-element bounds; a full run of the plan's block structure skips mask_mod)
    auto mask = [&](int p0, int pos_end, int r) {
      const int2 rw0 = s_rows[my_row], rw1 = s_rows[my_row + 8];   // (rows in order: rw0.x <= rw1.x)
      const int last = min(p0 + BN, pos_end) - 1;                   // the block's last valid key
      // inside both rows' bounds (this thread's own test: the lanes of a warp may differ)
      const bool full_block = last == p0 + BN - 1 && (!CAUSAL || last <= rw0.x) &&
                              (window_left < 0 || p0 >= rw1.x - window_left);
      const bool mm = MASK_MOD && run_full[r] == 0;
      if (full_block && !SCORE_MOD && !mm) return;
      const int b = (SCORE_MOD || MASK_MOD) ? items[i].b : 0;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int2 rw = h ? rw1 : rw0;                              // (position, query head)
        const int hi = CAUSAL ? min(last, rw.x) : last;
        const int lo = window_left >= 0 ? rw.x - window_left : -0x7fffffff - 1;
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int pos = p0 + 8 * j + 2 * tq + e;
            const int hpos = min(pos, last);                        // the key the hooks see
            float x = sacc[0][j][2 * h + e];
            if (SCORE_MOD) x = VARIANT::score_mod(vp, x * sm_scale, b, rw.y, rw.x, hpos);
            bool ok = full_block || ((pos <= hi) & (pos >= lo));
            if (MASK_MOD && mm) ok = VARIANT::mask_mod(vp, b, rw.y, rw.x, hpos) & ok;
            sacc[0][j][2 * h + e] = ok ? x : -INFERNB_INF;
          }
      }
    };
    // P as A fragments (k-step kk: keys 16 kk .. 16 kk + 15 = n-tiles 2 kk, 2 kk + 1)
    auto pack_p = [&]() {
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
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
    bi.begin(runs, items[i].run_begin, items[i].run_end);
    INFERNB_SM90_TR(const int tr_role = 1 + c; const bool tr_me = t == 0;)
    // block n's stage full (K and V landed; the paged producer's asynchronous arrivals' copies made visible to the
    // async proxy, wgmma's, by each consumer thread after it has observed the barrier) and this warpgroup's turn to
    // issue its S (the trace's slots 0, 1, 2)
    auto acquire = [&](int s) {
      INFERNB_SM90_TR(if (tr_me) detail::sm90_stamp(tr_role, n, 0);)
      sm90::mbar_wait(full + s, (n / ST) & 1);
      if (KV_MODE != 0 && (SCHED & SM90_PAGED_ASYNC)) sm90::fence_proxy_async();
      INFERNB_SM90_TR(if (tr_me) detail::sm90_stamp(tr_role, n, 1);)
      turn_wait();
      INFERNB_SM90_TR(if (tr_me) detail::sm90_stamp(tr_role, n, 2);)
    };
    // block j of the item in stage s alone: S = Q K^T issued and waited for (the next item's Q copied once the
    // item's last S is done), its logits, the softmax (o rescaled in place), P packed
    auto block_s = [&](int s, int j) {
      acquire(s);
      sm90::wgmma_fence();
      issue_s(s);
      sm90::wgmma_commit();
      turn_pass();
      sm90::wgmma_wait<0>();
      sm90::fence_operands(sf);
      INFERNB_SM90_TR(if (tr_me) detail::sm90_stamp(tr_role, n, 3);)
      if (j == nblocks - 1 && next_item) load_q(i + 1);
      mask(bi.p0, bi.pos_end, bi.r);
      state.update(sacc, o, scale_log2);
      pack_p();
      INFERNB_SM90_TR(if (tr_me) detail::sm90_stamp(tr_role, n, 4);)
    };
    // O += P V of stage s alone, waited for; the stage released
    auto block_pv = [&](int s, int n_pv) {
      turn_wait();
      sm90::wgmma_fence();
      issue_pv(s);
      sm90::wgmma_commit();
      turn_pass();
      sm90::wgmma_wait<0>();
      sm90::fence_operands(of);
      INFERNB_SM90_TR(if (tr_me) detail::sm90_stamp(tr_role, n_pv, 5);)
      release(s);
    };
    if (!(SCHED & SM90_OVERLAP)) {
      // one block at a time: S, wait, softmax, P V, wait, release
      for (int j = 0; !bi.done(); bi.next(runs), ++n, ++j) {
        const int s = n % ST;
        block_s(s, j);
        block_pv(s, n);
      }
    } else if (!bi.done()) {
      // block 0: S, softmax, P
      int s_prev = n % ST;
      block_s(s_prev, 0);                                           // (o is zero: its rescale is void)
      ++n;
      // blocks j >= 1: S_j and P_(j-1) V_(j-1) issued together; S_j's softmax under the P V
      int j = 1;
      for (bi.next(runs); !bi.done(); bi.next(runs), ++n, ++j) {
        const int s = n % ST;
        acquire(s);
        sm90::wgmma_fence();
        issue_s(s);
        sm90::wgmma_commit();
        issue_pv(s_prev);
        sm90::wgmma_commit();
        turn_pass();
        sm90::wgmma_wait<1>();                                      // S_j landed (P V may still run)
        sm90::fence_operands(sf);
        INFERNB_SM90_TR(if (tr_me) detail::sm90_stamp(tr_role, n, 3);)
        if (j == nblocks - 1 && next_item) load_q(i + 1);
        mask(bi.p0, bi.pos_end, bi.r);
        float alpha[2];
        const bool moved = state.update_deferred(sacc, scale_log2, alpha);
        INFERNB_SM90_TR(if (tr_me) detail::sm90_stamp(tr_role, n, 4);)
        sm90::wgmma_wait<0>();                                      // P_(j-1) V_(j-1) done: O, pa and the stage free
        sm90::fence_operands(of);
        INFERNB_SM90_TR(if (tr_me) detail::sm90_stamp(tr_role, n - 1, 5);)
        release(s_prev);
        if (moved) state.rescale(o, alpha);
        pack_p();
        s_prev = s;
      }
      block_pv(s_prev, n - 1);                                      // the last block's P V
    }

    // ---- epilogue: O / l and the LSE, rows of the tile only
    INFERNB_SM90_TR(if (tr_me && nblocks > 0) detail::sm90_stamp(tr_role, n - 1, 6);)
    float osc[2], lrow[2];
    state.finish(osc, lrow);
    // (the item's fields and this thread's rows read again, not kept in registers through the main loop)
    const prefill_item_t* ie = items + i;
    const int e_rows = detail::ld_uncached(&ie->rows), e_q_start = detail::ld_uncached(&ie->q_start);
    const int e_row0 = detail::ld_uncached(&ie->row0), e_kv_head = detail::ld_uncached(&ie->kv_head);
    const int e_row = 64 * c + 16 * ((threadIdx.x % 128) / 32) + (threadIdx.x % 32) / 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int rt = e_row + 8 * h;
      if (rt >= e_rows) continue;
      const long long idx = detail::packed_row_index(e_q_start, e_row0 + rt, group, e_kv_head, num_qo_heads);
      T* orow = out + idx * D;
#pragma unroll
      for (int j = 0; j < DT; ++j)
        *reinterpret_cast<unsigned*>(orow + 8 * j + 2 * tq) =
            mma::pack2<T>(o[0][j][2 * h] * osc[h], o[0][j][2 * h + 1] * osc[h]);
      if (tq == 0) lse[idx] = lrow[h];
    }
    INFERNB_SM90_TR(if (tr_me && nblocks > 0) detail::sm90_stamp(tr_role, n - 1, 7);)
  }
  INFERNB_SM90_TR(if (c == 0 && t == 0) detail::sm90_stamp_header(4, 0);)
  if ((SCHED & SM90_PINGPONG) && c == 0) sm90::named_barrier_sync(3, 256);   // warpgroup 1's last pass
#else
  __trap();                                                         // sm_90a only (KernelSpec.archs)
#endif
}

}  // namespace infernb
