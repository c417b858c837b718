// infernb: decode attention over a paged KV cache, the GQA group fused into one tensor-core tile.
//
// One new token per request attends to its cached keys. A CTA runs the list of work items the planner gave
// it (infernb.plan: item = one KV head of one request, a range [pos_start, pos_end) of its key positions).
// The GROUP query heads that share the KV head are the rows of a 16-row mma tile, so every K/V byte is read
// once per group (MHA: GROUP = 1, MQA: GROUP = all heads, up to 16).
//
// Pipeline: the CTA's items are one stream of BLOCK_N-token chunks. STAGES - 1 chunks are in flight as
// cp.async copies (K and V, straight from the page pool through the page table, zero-filled past the end)
// while the 4 warps compute on the oldest: warp w copies and computes tokens [16w, 16w + 16) of each chunk
// (no barrier per chunk: warps synchronize only at item boundaries),
//   S = Q K^T (mma), logits -> variant hooks -> online softmax (log2 domain), O += P V (mma).
// The producer runs ahead across item boundaries, so a new item's first keys are already loading while the
// previous item finishes. At an item's end the warps' (m, l, O) are merged through shared memory and the
// item writes either the final output + LSE (unsplit unit) or a partial state (fp32) to its slot; the CTA
// that finishes a split unit's last item merges its partial states (merge_unit_slots), in the same launch.
//
// Fused RoPE (ROPE = 1 half-rotated / Llama, 2 interleaved / GPT-J): q is rotated at its position
// (kv_len - 1) when loaded; each warp rotates its K rows in shared memory before the mma (rope.cuh: angles of the
// chunk's first row computed per pair, a lane walking consecutive rows of one vector of 4 pairs, each angle
// advanced from the previous row by one complex multiply with a per-CTA table).
#pragma once
#include <infernb/common.cuh>
#include <infernb/merge_states.cuh>
#include <infernb/mma.cuh>
#include <infernb/rope.cuh>
#include <infernb/softmax_state.cuh>
#include <infernb/variant.cuh>

// Diagnostics (benchmarks/diag/decode_ab.py): -DINFERNB_DECODE_TRACE=<max CTAs> records per CTA (16 x u64, in this
// array) the global timer at its start and end, clock deltas from its start to its first data, to the end of its
// first and last items' keys (per warp for the last), through its last item's epilogue and merge, its SM and item
// count. Off in every normal build.
#ifdef INFERNB_DECODE_TRACE
__device__ unsigned long long infernb_decode_trace[INFERNB_DECODE_TRACE * 16];
#define INFERNB_TRACE(...) __VA_ARGS__
#else
#define INFERNB_TRACE(...)
#endif

namespace infernb {

// Work item (built by infernb.ops.paged_decode from a Plan and its page table): the keys [pos_start, pos_end)
// of KV head kv_head of request b, whose page ids start at kv_indices[page_begin]; the query row q_token at
// position kv_len - 1. slot = -1: the item is its unit's only one and writes the output. Otherwise it writes
// partial state `slot`; the unit's partial states are slots [slot_begin, slot_end) and the last of its items
// to finish (counted in merge_count[merge_unit]) merges them into the output.
#define INFERNB_DECODE_ITEM_FIELDS(X)                                                                              \
  X(b) X(kv_head) X(pos_start) X(pos_end) X(q_token) X(kv_len) X(slot) X(page_begin) X(merge_unit) X(slot_begin)     \
  X(slot_end) X(pad)
struct decode_item_t { INFERNB_DECODE_ITEM_FIELDS(INFERNB_RECORD_FIELD) };
// checked against infernb.ops.paged_decode.DECODE_ITEM (common.cuh, "Records")
constexpr const char DECODE_ITEM_NAMES[] = INFERNB_DECODE_ITEM_FIELDS(INFERNB_RECORD_NAME);

// A CTA's record (built by DecodeRunner): its item range and a copy of its first item, so the first copies wait for
// two dependent loads (this record, then the page ids) instead of three. Page ids are always read from the page
// table at run time (a table updated in place between calls is followed).
struct decode_cta_t {
  int item_begin, item_end, pad0, pad1;
  decode_item_t first;
};
static_assert(sizeof(decode_item_t) == 48 && sizeof(decode_cta_t) == 64, "the records' layout (DecodeRunner's arrays)");

template <typename T, int HEAD_DIM, int GROUP, int STAGES_, int ROPE = 0>
struct decode_cfg_t {
  static constexpr int NUM_WARPS = 4;
  static constexpr int NUM_THREADS = 32 * NUM_WARPS;
  static constexpr int WARP_TOKENS = 16;                        // keys per warp per chunk (one mma k-step of PV)
  static constexpr int BLOCK_N = WARP_TOKENS * NUM_WARPS;       // keys per pipeline stage
  static constexpr int CHUNKS = HEAD_DIM / 8;                   // 16-byte chunks per K/V row
  static constexpr int STAGES = STAGES_;                         // chunk buffers (STAGES - 1 in flight)
  static constexpr int ROW_HALVES = GROUP > 8 ? 2 : 1;          // mma rows g (+ g + 8 when GROUP > 8) in use
  static constexpr int STAGE_ELEMS = 2 * BLOCK_N * HEAD_DIM;    // K then V
  // shared memory, in bytes, in this order: K/V stages (the stage of an item's last chunk also holds the
  // cross-warp O reduction at its end), the Q tile, (m, l) per warp and row, flags, the RoPE tables (rope.cuh).
  // All of it is dynamic (no static __shared__), so the block starts 1024-byte aligned (checked at entry): tiles
  // of rows of CH * 16 bytes then start at multiples of their row pitch, and ldmatrix addresses are a per-lane
  // constant XOR a compile-time one (see the consumer).
  static constexpr int SMEM_KV = STAGES * STAGE_ELEMS * 2;
  static constexpr int SMEM_Q = 16 * HEAD_DIM * 2;
  // Q tiles: without RoPE, the producer copies an item's Q rows with the item's first chunk, into one of STAGES
  // buffers (the producer is at most STAGES - 1 chunks, so items, ahead); RoPE loads and rotates one tile in place
  static constexpr int Q_BUFS = ROPE ? 1 : STAGES;
  static constexpr int SMEM_QO = Q_BUFS * SMEM_Q;
  // the cross-warp O reduction [NUM_WARPS][GROUP][RED_STRIDE] fp32 lives in a K/V stage (16 GROUP HEAD_DIM bytes
  // <= a stage's 256 HEAD_DIM for GROUP <= 16); rows padded by 8 floats where the padding fits too
  static constexpr int RED_STRIDE = NUM_WARPS * GROUP * (HEAD_DIM + 8) * 4 <= STAGE_ELEMS * 2 ? HEAD_DIM + 8 : HEAD_DIM;
  static_assert(NUM_WARPS * GROUP * RED_STRIDE * 4 <= STAGE_ELEMS * 2, "the O reduction fits one K/V stage");
  static constexpr int SMEM_ML = NUM_WARPS * 16 * 2 * 4;
  static constexpr int SMEM_FLAGS = 64;                         // the merge flag (and the trace build's clocks)
  using rope_smem = detail::rope_smem_t<ROPE, HEAD_DIM, NUM_WARPS>;   // the RoPE tables (rope.cuh)
  static constexpr int SMEM_ROPE = rope_smem::BYTES;
  static constexpr int SMEM_BYTES = SMEM_KV + SMEM_QO + SMEM_ML + SMEM_FLAGS + SMEM_ROPE;
  static_assert(sizeof(T) == 2, "decode runs on fp16 / bf16 (tensor-core operands)");
  static_assert(HEAD_DIM % 64 == 0, "HEAD_DIM must be a multiple of 64");
  static_assert(GROUP >= 1 && GROUP <= 16, "one mma tile holds up to 16 query heads per KV head");
  static_assert(SMEM_BYTES <= 227 * 1024, "shared memory budget of one SM");
  static_assert(STAGES >= 2, "the pipeline needs at least two stages");
  static_assert(WARP_TOKENS * CHUNKS % 32 == 0, "a warp's copies must tile its rows");
};


// q:       [num_tokens, num_kv_heads * GROUP, HEAD_DIM] T (contiguous)
// pool:    NHD [num_pages, 2, page_size, num_kv_heads, HEAD_DIM] / HND [num_pages, 2, num_kv_heads, page_size,
//          HEAD_DIM] T, index 0 = K, 1 = V
// kv_indices [pages] int32: the page table's page ids (items carry where each request's start)
// items:   [num_items] decode_item_t, ordered by CTA; ctas [gridDim.x] decode_cta_t: CTA c runs items
//          [ctas[c].item_begin, ctas[c].item_end)
// out:     [num_tokens, num_qo_heads, HEAD_DIM] T; lse: [num_tokens, num_qo_heads] fp32 (natural log)
// part_o:  [slots, GROUP, HEAD_DIM] fp32; part_lse: [slots, GROUP] fp32 (partial states of split units)
// merge_count: [split units] int32, zero before the launch and left zero after it (the merging CTA resets it)
// page_shift: log2(page_size) when it is a power of two, else -1
// CTAs per SM to reserve registers for: as asked on Hopper (227 KB of shared memory per SM); at most 2 before it
// (164 KB on A100, ~100 KB on sm_86/89: fewer CTAs fit, the register budget need not assume three).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define INFERNB_DECODE_MIN_CTAS(n) ((n) > 2 ? 2 : (n))
#else
#define INFERNB_DECODE_MIN_CTAS(n) (n)
#endif

template <typename T, int HEAD_DIM, int GROUP, bool HND, typename VARIANT, int ROPE, int STAGES, int MIN_CTAS>
__global__ void __launch_bounds__(decode_cfg_t<T, HEAD_DIM, GROUP, STAGES, ROPE>::NUM_THREADS,
                                  INFERNB_DECODE_MIN_CTAS(MIN_CTAS))
decode_kernel(const T* __restrict__ q, const T* __restrict__ pool, const int* __restrict__ kv_indices,
              const decode_item_t* __restrict__ items,
              const decode_cta_t* __restrict__ ctas, const typename VARIANT::params_t* __restrict__ vparams,
              T* __restrict__ out, float* __restrict__ lse, float* __restrict__ part_o, float* __restrict__ part_lse,
              int* __restrict__ merge_count, float sm_scale, int num_kv_heads, int page_size, int page_shift, int rotary_dim,
              float rope_log2_theta, float rope_inv_scale) {
  using cfg = decode_cfg_t<T, HEAD_DIM, GROUP, STAGES, ROPE>;
  constexpr int D = HEAD_DIM, CH = cfg::CHUNKS, BN = cfg::BLOCK_N, NT = cfg::NUM_THREADS, ST = cfg::STAGES;
  constexpr int KSTEPS = D / 16;                 // mma k-steps of Q K^T
  constexpr int DTILES = D / 8;                  // 8-column tiles of O
  constexpr bool SOFTMAX = VARIANT::USE_SOFTMAX;

  INFERNB_TRACE(unsigned long long tr_gt0; unsigned long long tr_clk[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(tr_gt0)); tr_clk[0] = clock64();)
  // the CTA's record, all of it in flight at once (four 16-byte loads; a CTA without items returns below, after them)
  const decode_cta_t* cta = ctas + blockIdx.x;
  int4 rec[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) rec[i] = __ldg(reinterpret_cast<const int4*>(cta) + i);
  const int item_begin = rec[0].x, item_end = rec[0].y;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  if (mma::smem_addr(smem_raw) % 1024 != 0) __trap();   // the XOR addressing below relies on it
  T* s_kv = reinterpret_cast<T*>(smem_raw);
  T* s_q = reinterpret_cast<T*>(smem_raw + cfg::SMEM_KV);
  float2* s_ml = reinterpret_cast<float2*>(smem_raw + cfg::SMEM_KV + cfg::SMEM_QO);
  int* s_flags = reinterpret_cast<int*>(smem_raw + cfg::SMEM_KV + cfg::SMEM_QO + cfg::SMEM_ML);
  INFERNB_TRACE(unsigned long long* tr_warp = reinterpret_cast<unsigned long long*>(s_flags + 8);)
  const typename cfg::rope_smem rope_tab(smem_raw + cfg::SMEM_KV + cfg::SMEM_QO + cfg::SMEM_ML + cfg::SMEM_FLAGS);
  float4* s_rope_freq = rope_tab.freq;
  float2* s_rope_grp = rope_tab.grp;
  float2* s_rope_base = rope_tab.base;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int num_qo_heads = num_kv_heads * GROUP;
  const typename VARIANT::params_t vp = *vparams;
  // element strides in the pool
  const long long head_stride = HND ? (long long)page_size * D : D;
  const long long tok_stride = HND ? D : (long long)num_kv_heads * D;
  const long long kv_stride = (long long)page_size * num_kv_heads * D;          // K -> V of one page
  const long long page_stride = 2 * kv_stride;

  // ---------------------------------------------------------------- producer: issue one chunk's copies
  // Each warp copies exactly the 16 K and V rows it computes on, so a chunk needs no CTA barrier: a warp waits
  // for its own copies (cp.async.wait_group + __syncwarp) and runs ahead of or behind the others until the
  // item's end. The producer's cursor (p_item, p_pos) and the next chunk's page ids are loaded one chunk ahead
  // (lane r < 16 holds row r's page id in p_page, shared by shuffles), so the copies never wait on the page table.
  int p_item = item_begin, p_pos = 0, p_page = -1, p_ord = 0;     // p_ord: the item's ordinal in this CTA
  bool p_first = true;                                              // the producer's next chunk starts an item
  decode_item_t p_it;
  const int w_row0 = warp * cfg::WARP_TOKENS;
  auto prefetch = [&](bool new_item) {
    if (p_item >= item_end) return;
    if (new_item) {
      p_it = items[p_item];
      p_pos = p_it.pos_start;
    }
    if (lane < cfg::WARP_TOKENS) {
      const int pos = p_pos + w_row0 + lane;
      // power-of-two pages: a shift instead of an integer division
      const int page_idx = page_shift >= 0 ? pos >> page_shift : pos / page_size;
      p_page = pos < p_it.pos_end ? kv_indices[p_it.page_begin + page_idx] : -1;
    }
  };
  // Copy geometry, fixed per lane: 16-byte column cp_ch of the warp's rows cp_r0 + RPI * k (k < CH / 2). The
  // source lane of row cp_r0 + RPI * k is an immediate with the lane's low bits kept (shfl_rows), and, RPI being a
  // power of two with cp_r0 < RPI, the row's swizzle (row & 7) is cp_r0 ^ ((RPI * k) & 7): a copy's shared-memory
  // offset is a per-lane constant XOR a compile-time one. Nothing per row stays in registers across the loop.
  constexpr int RPI = 32 / CH;                   // rows per copy instruction (CH = 8, 16, 32 -> 4, 2, 1)
  const int cp_ch = lane / RPI, cp_r0 = lane % RPI;
  const unsigned cp_row0 = unsigned((w_row0 + cp_r0) * CH * 16), cp_x = unsigned((cp_ch ^ cp_r0) * 16);
  const char* pool_b = reinterpret_cast<const char*>(pool);
  const int kv_stride_b = int(kv_stride * 2);   // < 2^31 bytes: checked on the host
  auto issue = [&](int stage) {
    __syncwarp();                                // the warp is done reading this stage's rows (previous use)
    if (p_item < item_end) {
      // lane r < 16: the address of row r's K (V is kv_stride_b further), from the page id loaded a chunk ago
      const char* row_src = pool_b;
      if (p_page >= 0) {
        const int pos = p_pos + w_row0 + lane;
        const int slot = page_shift >= 0 ? pos & (page_size - 1) : pos % page_size;
        row_src = pool_b + 2 * ((long long)p_it.kv_head * head_stride + (long long)p_page * page_stride +
                                (long long)slot * tok_stride);
      }
      const int lim = p_it.pos_end - (p_pos + w_row0) - cp_r0;   // row cp_r0 + RPI * k holds a key iff RPI * k < lim
      const unsigned sk = mma::smem_addr(s_kv + stage * cfg::STAGE_ELEMS) + cp_row0;
      const unsigned sv = sk + BN * D * 2;
#pragma unroll
      for (int k = 0; k < CH / 2; ++k) {         // 16 rows x CH chunks over 32 lanes
        const char* src = reinterpret_cast<const char*>(
            mma::shfl_rows<RPI - 1>(reinterpret_cast<unsigned long long>(row_src), RPI * k)) + cp_ch * 16;
        const bool valid = RPI * k < lim;
        const unsigned dst = RPI * k * CH * 16 + (cp_x ^ (((RPI * k) & 7) * 16));
        mma::cp_async16(sk + dst, src, valid);
        mma::cp_async16(sv + dst, src + kv_stride_b, valid);
      }
      if (ROPE == 0 && p_first) {                // the item's Q rows, in the same group as its first keys
        const T* qg = q + ((long long)p_it.q_token * num_qo_heads + (long long)p_it.kv_head * GROUP) * D;
        const unsigned sq = mma::smem_addr(s_q + (p_ord % cfg::Q_BUFS) * (cfg::SMEM_Q / 2));
        for (int i = tid; i < GROUP * CH; i += NT)    // this warp's share (i = tid mod NT)
          mma::cp_async16(sq + mma::swizzle<CH>(i / CH, i % CH) * 16, qg + (i / CH) * D + (i % CH) * 8, true);
      }
      p_first = false;
      // advance: next chunk of this item, or the first chunk of the next item (an empty item has one chunk)
      bool next_item = false;
      if (p_pos + BN < p_it.pos_end) {
        p_pos += BN;
      } else {
        ++p_item;
        ++p_ord;
        next_item = p_first = true;
      }
      prefetch(next_item);
    }
    mma::cp_async_commit();
  };

  if (GROUP < 16) {                             // Q rows >= GROUP stay zero in every buffer (nothing writes them)
    for (int i = tid; i < cfg::Q_BUFS * (16 - GROUP) * CH; i += NT) {
      const int b = i / ((16 - GROUP) * CH), r = GROUP + (i / CH) % (16 - GROUP), ch = i % CH;
      *reinterpret_cast<uint4*>(s_q + b * (cfg::SMEM_Q / 2) + mma::swizzle<CH>(r, ch) * 8) = make_uint4(0, 0, 0, 0);
    }
  }
  if (ROPE != 0)                                 // read after the first item's barrier
    detail::rope_tables_init<ROPE>(s_rope_freq, s_rope_grp, rotary_dim, rope_log2_theta, rope_inv_scale, tid, NT);
  memcpy(&p_it, rec + 1, sizeof(decode_item_t));   // prefetch(true) of the first item, from the CTA's record
  p_pos = p_it.pos_start;
  if (item_begin >= item_end) return;
  prefetch(false);
#pragma unroll 1
  for (int s = 0; s < ST - 1; ++s) issue(s);

  // ---------------------------------------------------------------- consumer state
  // ldmatrix row addresses of this lane (mma::kstep_addr): K rows (B operand of Q K^T: keys (lane & 7) + 8 *
  // (lane >> 4), chunk (lane >> 3) & 1), Q rows (A operand: row lane & 15, chunk lane >> 4), V rows (B operand of
  // P V, transposed: keys (lane & 7) + 8 * ((lane >> 3) & 1), chunk lane >> 4), relative to their tile
  const int w_tok = warp * cfg::WARP_TOKENS;
  const unsigned k_off = mma::swizzle<CH>(w_tok + (lane & 7) + (lane >> 4) * 8, (lane >> 3) & 1) * 16;
  const unsigned v_off = mma::swizzle<CH>(w_tok + (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4) * 16;
  const unsigned q_off = mma::swizzle<CH>(lane & 15, lane >> 4) * 16;
  unsigned q_lane = 0;
  int c_ord = 0;
  float o[1][DTILES][4];
  softmax_state_t<1, SOFTMAX, cfg::ROW_HALVES> state;   // rows g (and g + 8): log2-domain reference max, sum
  int c_item = item_begin, c_pos = 0;
  decode_item_t it;
  bool new_item = true;

  for (int chunk = 0;; ++chunk) {
    mma::cp_async_wait<ST - 2>();
    __syncwarp();                                // this warp's rows of the chunk have landed
    INFERNB_TRACE(if (chunk == 0) tr_clk[1] = clock64();)
    issue((chunk + ST - 1) % ST);
    const T* s_k = s_kv + (chunk % ST) * cfg::STAGE_ELEMS;
    const T* s_v = s_k + BN * D;

    if (new_item) {                              // ---- load the item's Q tile (+ RoPE), reset the state
      it = c_item == item_begin ? cta->first : items[c_item];   // (the first: the record's lines, just loaded)
      // (the previous item's epilogue ended with a barrier: s_q is free)
      c_pos = it.pos_start;
      const T* qg = q + ((long long)it.q_token * num_qo_heads + (long long)it.kv_head * GROUP) * D;
      q_lane = mma::smem_addr(s_q + (c_ord++ % cfg::Q_BUFS) * (cfg::SMEM_Q / 2)) + q_off;
      if (ROPE == 0) {
        // the producer's copies of this Q tile landed with the chunk (each thread waited for its own share; the
        // barrier below publishes them)
      } else {
        // the item's raw Q rows into the tile, 16-byte vectors, every load issued before any is used (one global
        // round trip); then each pair of each row rotated in place at position kv_len - 1 (frequencies from the
        // CTA's table, written before the first item)
        constexpr int QV = GROUP * CH, QV_PER = (QV + NT - 1) / NT;
        uint4 qv[QV_PER];
#pragma unroll
        for (int k = 0; k < QV_PER; ++k) {
          const int i = tid + k * NT;
          if (QV % NT == 0 || i < QV) qv[k] = __ldg(reinterpret_cast<const uint4*>(qg + (i / CH) * D + (i % CH) * 8));
        }
#pragma unroll
        for (int k = 0; k < QV_PER; ++k) {
          const int i = tid + k * NT;
          if (QV % NT == 0 || i < QV) *reinterpret_cast<uint4*>(s_q + mma::swizzle<CH>(i / CH, i % CH) * 8) = qv[k];
        }
        __syncthreads();
        const float qpos = float(it.kv_len - 1);
        detail::rope_rotate_tile<ROPE, CH>(s_q, GROUP, [=](int) { return qpos; }, rotary_dim, s_rope_freq, tid, NT);
      }
#pragma unroll
      for (int j = 0; j < DTILES; ++j) o[0][j][0] = o[0][j][1] = o[0][j][2] = o[0][j][3] = 0.f;
      state.init();
      __syncthreads();
      new_item = false;
    }

    // ---------------------------------------------------------------- compute this warp's 16 keys
    const int kpos0 = c_pos + warp * cfg::WARP_TOKENS;
    if (kpos0 < it.pos_end) {
      T* s_kw = const_cast<T*>(s_k);
      if (ROPE != 0) {                           // rotate this warp's K rows in place
        detail::rope_rotate_rows<T, ROPE, CH>(s_kw, warp * cfg::WARP_TOKENS, kpos0, it.pos_end - kpos0, rotary_dim,
                                               s_rope_freq, s_rope_grp, s_rope_base + warp * (D / 2),
                                               rope_log2_theta, rope_inv_scale, lane);
        __syncwarp();
      }

      // S = Q K^T: two n-tiles of 8 keys, even and odd k-steps in separate accumulators (two chains of
      // dependent mma per n-tile instead of one twice as long)
      float s[1][2][4] = {{{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}}};
      float s_odd[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      const unsigned k_lane = mma::smem_addr(s_k) + k_off;
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) {
        unsigned b[4];
        mma::ldmatrix_x4(b, mma::kstep_addr(k_lane, kk));
        unsigned a[4];
        mma::ldmatrix_x4(a, mma::kstep_addr(q_lane, kk));
        if (kk % 2 == 0) {
          mma::mma16816<T>(s[0][0], a, b[0], b[1]);
          mma::mma16816<T>(s[0][1], a, b[2], b[3]);
        } else {
          mma::mma16816<T>(s_odd[0], a, b[0], b[1]);
          mma::mma16816<T>(s_odd[1], a, b[2], b[3]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) s[0][nt][i] += s_odd[nt][i];
      }

      // logits -> hooks -> probabilities (log2 domain; masked: -inf, or 0 for sigmoid attention)
      const int h0 = it.kv_head * GROUP;
      const int qpos = it.kv_len - 1;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int i = 0; i < 2 * cfg::ROW_HALVES; ++i) {   // rows g + 8 are padding when GROUP <= 8 (their S = 0)
          const int row = g + (i >> 1) * 8;
          const int pos = kpos0 + nt * 8 + 2 * t + (i & 1);
          float x = s[0][nt][i] * sm_scale;
          bool ok = row < GROUP && pos < it.pos_end;
          if (ok) {
            x = VARIANT::score_mod(vp, x, it.b, h0 + row, qpos, pos);
            ok = VARIANT::mask_mod(vp, it.b, h0 + row, qpos, pos);
          }
          s[0][nt][i] = SOFTMAX ? (ok ? x * LOG2E : -INFERNB_INF) : (ok ? vx::sigmoid(x) : 0.f);
        }
      }
      state.update(s, o, 1.f);                   // (softmax_state.cuh; padding rows' probabilities 0)

      // O += P V
      unsigned pa[4] = {mma::pack2<T>(s[0][0][0], s[0][0][1]), mma::pack2<T>(s[0][0][2], s[0][0][3]),
                        mma::pack2<T>(s[0][1][0], s[0][1][1]), mma::pack2<T>(s[0][1][2], s[0][1][3])};
      const unsigned v_lane = mma::smem_addr(s_v) + v_off;
#pragma unroll
      for (int jj = 0; jj < D / 16; ++jj) {
        unsigned b[4];
        mma::ldmatrix_x4_trans(b, mma::kstep_addr(v_lane, jj));
        mma::mma16816<T>(o[0][2 * jj], pa, b[0], b[1]);
        mma::mma16816<T>(o[0][2 * jj + 1], pa, b[2], b[3]);
      }
    }

    // ---------------------------------------------------------------- end of the item: merge warps, write
    if (c_pos + BN >= it.pos_end) {
      INFERNB_TRACE(if (c_item + 1 == item_end) { tr_clk[2] = clock64(); if (lane == 0) tr_warp[warp] = tr_clk[2]; }
                    if (c_item == item_begin) tr_clk[8] = clock64();)
      // each warp's part of its rows: (m, l) over the keys it computed (softmax_state.cuh, "Merging partial states")
      float l[2];
      state.row_sums(l);
      if (t == 0) {
        s_ml[warp * 16 + g] = make_float2(state.m[0], l[0]);
        s_ml[warp * 16 + g + 8] = make_float2(state.m[1], l[1]);
      }
      __syncthreads();                           // every warp is done with this chunk's K/V, s_ml is complete
      INFERNB_TRACE(if (c_item + 1 == item_end) tr_clk[5] = clock64();)
      // Cross-warp merge without atomics: each warp writes its rows, scaled to the item's common max and sum, into
      // the K/V stage it just finished (no copy targets it before the next chunk), [warp][row][RED_STRIDE] fp32 (rows
      // padded by 8 floats where that fits: 4 rows' fragment stores in distinct banks); then the CTA sums the parts.
      float* s_red = reinterpret_cast<float*>(const_cast<T*>(s_k));
      constexpr int RED_STRIDE = cfg::RED_STRIDE;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = g + 8 * r;
        if (row < GROUP) {
          float sc = 1.f;
          if (SOFTMAX) {
            float M = -INFERNB_INF, L = 0.f;
#pragma unroll
            for (int w = 0; w < cfg::NUM_WARPS; ++w) M = fmaxf(M, s_ml[w * 16 + row].x);
#pragma unroll
            for (int w = 0; w < cfg::NUM_WARPS; ++w) L += part_weight(s_ml[w * 16 + row].x, s_ml[w * 16 + row].y, M);
            sc = (L > 0.f && l[r] > 0.f) ? fast_exp2(state.m[r] - M) / L : 0.f;
          }
          float* wrow = s_red + (warp * GROUP + row) * RED_STRIDE + 2 * t;
#pragma unroll
          for (int j = 0; j < DTILES; ++j)
            *reinterpret_cast<float2*>(wrow + 8 * j) = make_float2(o[0][j][2 * r] * sc, o[0][j][2 * r + 1] * sc);
        }
      }
      __syncthreads();
      INFERNB_TRACE(if (c_item + 1 == item_end) tr_clk[6] = clock64();)
      const long long out_row = (long long)it.q_token * num_qo_heads + (long long)it.kv_head * GROUP;
      for (int i = tid; i < GROUP * CH; i += NT) {
        const int r = i / CH, c8 = (i % CH) * 8;
        float acc[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] = 0.f;
#pragma unroll
        for (int w = 0; w < cfg::NUM_WARPS; ++w) {
          const float4* src = reinterpret_cast<const float4*>(s_red + (w * GROUP + r) * RED_STRIDE + c8);
          const float4 a = src[0], b = src[1];
          acc[0] += a.x; acc[1] += a.y; acc[2] += a.z; acc[3] += a.w;
          acc[4] += b.x; acc[5] += b.y; acc[6] += b.z; acc[7] += b.w;
        }
        const int ch = i % CH;
        if (it.slot < 0) {
          vec_t<T, 8> v;
#pragma unroll
          for (int e = 0; e < 8; ++e) v.elt[e] = from_float<T>(acc[e]);
          v.store(out + (out_row + r) * D + ch * 8);
        } else {
          float* dst = part_o + ((long long)it.slot * GROUP + r) * D + ch * 8;
          reinterpret_cast<float4*>(dst)[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
          reinterpret_cast<float4*>(dst)[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
        }
      }
      if (tid < GROUP) {
        float M = SOFTMAX ? -INFERNB_INF : 0.f, L = 0.f;
        if (SOFTMAX) {
          for (int w = 0; w < cfg::NUM_WARPS; ++w) M = fmaxf(M, s_ml[w * 16 + tid].x);
        }
        for (int w = 0; w < cfg::NUM_WARPS; ++w) {
          const float2 ml = s_ml[w * 16 + tid];
          L += SOFTMAX ? part_weight(ml.x, ml.y, M) : ml.y;
        }
        const float s_nat = SOFTMAX ? lse_of(M, L) : logf(L);
        if (it.slot < 0) lse[out_row + tid] = s_nat;
        else part_lse[(long long)it.slot * GROUP + tid] = s_nat;
      }
      if (it.slot >= 0) {                        // split unit: the last of its items to finish merges them
        int& s_last = s_flags[0];
        __threadfence();                         // this CTA's partial state is visible device-wide ...
        __syncthreads();
        if (tid == 0) s_last = atomicAdd(merge_count + it.merge_unit, 1) == it.slot_end - it.slot_begin - 1;
        __syncthreads();                         // ... before it is counted
        INFERNB_TRACE(if (c_item + 1 == item_end) tr_clk[7] = clock64();)
        if (s_last) {
          __threadfence();
          INFERNB_TRACE(tr_clk[3] = clock64();)
          merge_unit_slots<T, D, GROUP, NT>(part_o, part_lse, it.slot_begin, it.slot_end, out, lse, out_row, tid);
          INFERNB_TRACE(tr_clk[4] = clock64();)
          if (tid == 0) merge_count[it.merge_unit] = 0;   // ready for the next launch of the plan
        }
      }
      __syncthreads();                           // every warp is done reading s_red before copies refill it
      if (++c_item >= item_end) break;
      new_item = true;
    } else {
      c_pos += BN;
    }
  }
  mma::cp_async_wait<0>();
#ifdef INFERNB_DECODE_TRACE
  __syncthreads();
  if (tid == 0 && blockIdx.x < INFERNB_DECODE_TRACE) {
    unsigned long long gt1, *tr = infernb_decode_trace + blockIdx.x * 16;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(gt1));
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    const unsigned long long clk1 = clock64();
    tr[0] = tr_gt0;
    tr[1] = gt1;
    for (int i = 1; i < 9; ++i) tr[1 + i] = tr_clk[i] ? tr_clk[i] - tr_clk[0] : 0;
    tr[10] = clk1 - tr_clk[0];
    tr[11] = smid | (unsigned long long)(item_end - item_begin) << 32;
    for (int w = 0; w < 4; ++w) tr[12 + w] = tr_warp[w] - tr_clk[0];
  }
#endif
}

}  // namespace infernb
