// infernb: prefill / append attention on tensor cores (mma.sync m16n8k16, sm_80+), ragged or paged KV.
//
// A work item (infernb.ops.prefill builds them from a Plan) is one query tile of one request and one KV head: TILE_Q
// packed rows (row R of a request = token R / GROUP, query head kv_head * GROUP + R % GROUP, so the GQA group shares
// every K/V byte) against a list of key runs [pos_start, pos_end) (the tile's visible keys, cut by the plan:
// causal, sliding window and block masks shorten or split them). A CTA runs the items the planner gave it.
//
// 4 warps; warp w owns rows [16 M w, 16 M (w + 1)) of the tile (M = M_TILES 16-row mma tiles), so no warp ever
// needs another's logits. K/V arrive in stages of BLOCK_N keys (one barrier each); a stage is computed in steps of
// SUB_N keys (the logits of a step are what the registers hold: at M = 2, d = 128, 64 keys on the plain path), each
// step:
//   S = Q K^T (Q and K from shared memory by ldmatrix)  ->  logits: scale, variant score_mod, masks  ->
//   online softmax (softmax_state.cuh)  ->  O += P V (P from registers, V by ldmatrix.trans).
// Rows per warp decide the shared-memory traffic: a K or V fragment loaded by ldmatrix feeds M mma tiles, so at
// M = 2 a step reads 0.375 ldmatrix per mma against 0.56 at M = 1 (benchmarks/NOTES.md).
// K/V chunks stream through STAGES shared-memory buffers with cp.async (STAGES - 1 in flight), straight from the
// ragged tensors or the page pool; the page ids of the next chunk are loaded a chunk ahead. The epilogue writes the
// normalized O (through shared memory, 16-byte stores) and the natural-log LSE, or, for an item of a split unit, its
// partial state; the CTA that finishes a split unit's last item merges the unit (merge_states.cuh) in the launch.
//
// Masks: a chunk entirely inside the causal / window bounds of every row of the tile, with all its keys valid, skips
// the per-element mask (only score_mod runs); a variant mask_mod (MASK_MOD) is evaluated on every visible logit,
// except in full steps of runs that the plan's block structure (the variant's own) marks full (run_full).
#pragma once
#include <infernb/common.cuh>
#include <infernb/epilogue.cuh>
#include <infernb/kv_iter.cuh>
#include <infernb/merge_states.cuh>

// The split merge of a tall unit: -DINFERNB_PREFILL_MERGE_BATCHED builds merge_slots_rows_batched (4 rows x 4 states in
// flight per thread; not yet GPU-run, benchmarks/NOTES.md), the default merge_slots_rows (one row's 8 states).
#ifdef INFERNB_PREFILL_MERGE_BATCHED
#define INFERNB_PREFILL_MERGE merge_slots_rows_batched
#else
#define INFERNB_PREFILL_MERGE merge_slots_rows
#endif
#include <infernb/mma.cuh>
#include <infernb/rope.cuh>
#include <infernb/softmax_state.cuh>
#include <infernb/variant.cuh>

namespace infernb {

// Work item (infernb.ops.prefill.PREFILL_ITEM is the same record as a NumPy dtype; the generated unit checks the
// offsets). Request b's query rows start at q token q_start (its qo_indptr); its keys at kv_start (ragged: the
// token offset of its K/V in k / v; paged: its first entry in the page table's indices). The tile holds `rows`
// packed rows starting at packed row row0 of the request. Key runs [run_begin, run_end) of the run array.
// slot = -1: the item is its unit's only one and writes the output; otherwise partial state `slot`, the unit's
// partial states being [slot_begin, slot_end), merged by the last of its items to finish (merge_count[merge_unit]).
#define INFERNB_PREFILL_ITEM_FIELDS(X)                                                                             \
  X(b) X(kv_head) X(q_start) X(row0) X(rows) X(qo_len) X(kv_len) X(kv_start) X(run_begin) X(run_end) X(slot)       \
  X(merge_unit) X(slot_begin) X(slot_end) X(pad0) X(pad1)
struct prefill_item_t { INFERNB_PREFILL_ITEM_FIELDS(INFERNB_RECORD_FIELD) };
// checked against infernb.ops.prefill.PREFILL_ITEM (common.cuh, "Records")
constexpr const char PREFILL_ITEM_NAMES[] = INFERNB_PREFILL_ITEM_FIELDS(INFERNB_RECORD_NAME);

namespace detail {
// The GQA packing, written once: packed row R of a request (row0 + r of an item's tile) is the request's token
// R / group and query head kv_head * group + R % group, so the group's rows share every K/V byte. (token, head).
__device__ __forceinline__ int2 packed_row(int R, int group, int kv_head) {
  return make_int2(R / group, kv_head * group + R % group);
}
// Its row among [q_tokens, num_qo_heads] (q, out: times HEAD_DIM elements; lse) for a request starting at q_start.
__device__ __forceinline__ long long packed_row_index(int q_start, int R, int group, int kv_head, int num_qo_heads) {
  const int2 th = packed_row(R, group, kv_head);
  return (long long)(q_start + th.x) * num_qo_heads + th.y;
}

// Where the epilogue puts tile row r of an item (epilogue.cuh's ROWS). The item is read from shared memory at each
// use (as the kernel does).
template <int D>
struct prefill_rows_t {
  const prefill_item_t& e;
  int group, num_qo_heads;
  __device__ __forceinline__ bool valid(int r) const { return r < e.rows; }
  template <typename T>
  __device__ __forceinline__ T* out_row(T* out, int r) const { return out + lse_index(r) * D; }
  __device__ __forceinline__ long long lse_index(int r) const {
    return packed_row_index(e.q_start, e.row0 + r, group, e.kv_head, num_qo_heads);
  }
};
}  // namespace detail

// KV_MODE: 0 ragged k / v [tokens, num_kv_heads, HEAD_DIM]; 1 paged NHD; 2 paged HND (decode.cuh's pool layouts).
template <typename T, int HEAD_DIM, int M_TILES, int BLOCK_N, int STAGES_, int ROPE = 0>
struct prefill_cfg_t {
  static constexpr int NUM_WARPS = 4;
  static constexpr int NUM_THREADS = 32 * NUM_WARPS;
  static constexpr int WARP_ROWS = 16 * M_TILES;
  static constexpr int TILE_Q = WARP_ROWS * NUM_WARPS;
  static constexpr int CHUNKS = HEAD_DIM / 8;                   // 16-byte chunks per row
  static constexpr int STAGES = STAGES_;
  static constexpr int KV_TILE_ELEMS = BLOCK_N * HEAD_DIM;
  static constexpr int STAGE_ELEMS = 2 * KV_TILE_ELEMS;        // K then V
  // the Q tile's copies: each thread copies rows tid / CHUNKS + ROWS_PER_PASS * k, chunk tid % CHUNKS (the K/V
  // stages' copies are the KV block iterator's, kv_iter.cuh, with the same geometry)
  static constexpr int ROWS_PER_PASS = NUM_THREADS / CHUNKS;
  static constexpr int Q_PASSES = TILE_Q / ROWS_PER_PASS;
  // shared memory, bytes: K/V stages | Q tile (also the O tile of the epilogue) | lane table | flags | rows | RoPE
  // tables | page ids
  static constexpr int SMEM_KV = STAGES * STAGE_ELEMS * 2;
  static constexpr int SMEM_Q = TILE_Q * HEAD_DIM * 2;
  static constexpr int SMEM_LANES = NUM_THREADS * 3 * 16;      // each thread's ldmatrix offsets of Q, K, V (x4 each)
  static constexpr int SMEM_FLAGS = 192;                       // the merge flag, the item record, the cursor slots
  static constexpr int SMEM_ROWS = TILE_Q * 8;                  // each row's (position, query head)
  using rope_smem = detail::rope_smem_t<ROPE, HEAD_DIM, NUM_WARPS>;   // the RoPE tables (rope.cuh)
  static constexpr int SMEM_ROPE = rope_smem::BYTES;
  static constexpr int SMEM_PAGES = STAGES * BLOCK_N * 4;        // paged: each stage's page id per key row
  static constexpr int SMEM_BYTES = SMEM_KV + SMEM_Q + SMEM_LANES + SMEM_FLAGS + SMEM_ROWS + SMEM_ROPE + SMEM_PAGES;
  static_assert(sizeof(T) == 2, "prefill runs on fp16 / bf16 (tensor-core operands)");
  static_assert(HEAD_DIM % 64 == 0, "HEAD_DIM must be a multiple of 64 (swizzled rows of >= 128 bytes)");
  static_assert(BLOCK_N % 16 == 0 && TILE_Q % ROWS_PER_PASS == 0, "copy tiling");
  static_assert(STAGES >= 2, "the pipeline needs at least two stages");
  static_assert(SMEM_BYTES <= 227 * 1024, "shared memory budget of one SM");
};

// q:       [q_tokens, num_kv_heads * GROUP, HEAD_DIM] T (contiguous)
// k, v:    ragged (KV_MODE 0): [kv_tokens, num_kv_heads, HEAD_DIM] T; paged: k = the page pool
//          NHD [num_pages, 2, page_size, num_kv_heads, HEAD_DIM] / HND [num_pages, 2, num_kv_heads, page_size, HEAD_DIM],
//          v unused
// kv_indices: paged: the page table's page ids
// items [num_items] prefill_item_t ordered by CTA; cta_ptr [gridDim.x + 1]: CTA c runs items [cta_ptr[c], cta_ptr[c+1])
// runs [num_runs] prefill_run_t
// out:     [q_tokens, num_qo_heads, HEAD_DIM] T; lse: [q_tokens, num_qo_heads] fp32 (natural log)
// part_o:  [slots, TILE_Q, HEAD_DIM] fp32; part_lse: [slots, TILE_Q] fp32 (partial states of split units)
// merge_count: [split units] int32, zero before the launch and left zero after it
// run_full: [num_runs] int32, 1 where the variant's block structure shows every pair of the run visible (the
//          variant's own, Plan.seg_full): with MASK_MOD its full steps skip mask_mod there (read only with MASK_MOD)
// window_left: -1 off; page_shift: log2(page_size) for power-of-two pages, else -1
template <typename T, int HEAD_DIM, int M_TILES, int BLOCK_N, int SUB_N, int STAGES, int KV_MODE, bool CAUSAL,
          typename VARIANT, bool SCORE_MOD, bool MASK_MOD, int ROPE, int MIN_CTAS>
__global__ void __launch_bounds__(prefill_cfg_t<T, HEAD_DIM, M_TILES, BLOCK_N, STAGES, ROPE>::NUM_THREADS, MIN_CTAS)
prefill_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
               const int* __restrict__ kv_indices, const prefill_item_t* __restrict__ items,
               const int* __restrict__ cta_ptr, const prefill_run_t* __restrict__ runs,
               const typename VARIANT::params_t* __restrict__ vparams, T* __restrict__ out, float* __restrict__ lse,
               float* __restrict__ part_o, float* __restrict__ part_lse, int* __restrict__ merge_count,
               float sm_scale, int num_kv_heads, int group, int window_left, int page_size, int page_shift,
               int rotary_dim, float rope_log2_theta, float rope_inv_scale, const int* __restrict__ run_full) {
  using cfg = prefill_cfg_t<T, HEAD_DIM, M_TILES, BLOCK_N, STAGES, ROPE>;
  constexpr int D = HEAD_DIM, CH = cfg::CHUNKS, BN = BLOCK_N, NT = cfg::NUM_THREADS, ST = STAGES, M = M_TILES;
  constexpr int KSTEPS = D / 16;                 // k-steps of Q K^T
  // keys per compute step (a stage holds BN / SN steps); sm_80's ptxas spills a 64-key step's logits beside 128
  // registers of O (the 128-row tile at head dim 128), so a step there is at most 32 keys
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  constexpr int SN = M_TILES * HEAD_DIM / 2 >= 128 && SUB_N > 32 ? 32 : SUB_N;
#else
  constexpr int SN = SUB_N;
#endif
  constexpr int NTILES = SN / 8;                 // 8-key n-tiles of S
  static_assert(SN % 16 == 0 && BN % SN == 0, "a stage holds whole compute steps of 16-key multiples");
  static_assert(ROPE == 0 || BN <= 16 * cfg::NUM_WARPS, "RoPE: each warp rotates 16 K rows of a stage");
  constexpr int DTILES = D / 8;                  // 8-column n-tiles of O
  constexpr bool SOFTMAX = VARIANT::USE_SOFTMAX;
  constexpr bool PAGED = KV_MODE != 0, HND = KV_MODE == 2;
  static_assert(ST <= 4, "s_chunk: 4 stages in the flags");

  const int item_begin = cta_ptr[blockIdx.x], item_end = cta_ptr[blockIdx.x + 1];
  if (item_begin >= item_end) return;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  if (mma::smem_addr(smem_raw) % 1024 != 0) __trap();   // the XOR addressing of ldmatrix relies on it
  T* s_kv = reinterpret_cast<T*>(smem_raw);
  T* s_q = reinterpret_cast<T*>(smem_raw + cfg::SMEM_KV);
  const unsigned s_lanes_addr = mma::smem_addr(smem_raw + cfg::SMEM_KV + cfg::SMEM_Q);   // the lane table
  int* s_flags = reinterpret_cast<int*>(smem_raw + cfg::SMEM_KV + cfg::SMEM_Q + cfg::SMEM_LANES);
  prefill_item_t* s_item = reinterpret_cast<prefill_item_t*>(s_flags + 16);
  // s_flags (16 ints before the item record): [0] the merge flag, [1] the CTA's item end, [2, 3] the tile's first and
  // last query position, [4, 8) the producer's bases (s_bases), [8, 8 + 2 ST) each stage's chunk (s_chunk); after
  // the record, [32, 32 + 4 ST) the producer's cursor slots
  struct producer_bases_t { const T* kbase; const int* page_ids; };
  producer_bases_t* s_bases = reinterpret_cast<producer_bases_t*>(s_flags + 4);
  int2* s_chunk = reinterpret_cast<int2*>(s_flags + 8);
  int4* s_cursor = reinterpret_cast<int4*>(s_flags + 32);   // [32, 32 + 4 ST): the producer's cursor, a slot per stage
  static_assert(sizeof(prefill_item_t) == 16 * 4 && (32 + 4 * ST) * 4 <= cfg::SMEM_FLAGS,
                "the flags area: 16 ints, the item record (16 ints), the cursor slots");
  int2* s_rows = reinterpret_cast<int2*>(smem_raw + cfg::SMEM_KV + cfg::SMEM_Q + cfg::SMEM_LANES + cfg::SMEM_FLAGS);
  // (the RoPE tables' places spelled out, not through cfg::rope_smem as in decode: that form compiles to other
  // machine code here, and this is the code the GPU tests ran)
  unsigned char* s_rope = smem_raw + cfg::SMEM_KV + cfg::SMEM_Q + cfg::SMEM_LANES + cfg::SMEM_FLAGS + cfg::SMEM_ROWS;
  float4* s_rope_freq = reinterpret_cast<float4*>(s_rope);
  float2* s_rope_grp = reinterpret_cast<float2*>(s_rope + cfg::rope_smem::FREQ_BYTES);
  float2* s_rope_base = reinterpret_cast<float2*>(s_rope + cfg::rope_smem::FREQ_BYTES + cfg::rope_smem::GRP_BYTES);
  const int* s_pages = reinterpret_cast<const int*>(s_rope + cfg::SMEM_ROPE);
  const unsigned s_pages_addr = mma::smem_addr(s_pages);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int num_qo_heads = num_kv_heads * group;
  if (tid == 0) s_flags[1] = item_end;            // (read after the first item's barriers)
  const typename VARIANT::params_t vp = *vparams;
  // element strides of a key row (a page's K and V blocks hold < 2^31 elements: checked on the host)
  const int head_stride = !PAGED ? D : (HND ? page_size * D : D);
  const int tok_stride = HND ? D : num_kv_heads * D;
  const int page_stride = 2 * page_size * num_kv_heads * D;     // paged: one page (K and V)
  const int v_off = page_size * num_kv_heads * D;               // paged: K -> V of a page
  const long long v_delta = PAGED ? (long long)v_off : (long long)(v - k);   // a K row's V row, elements further
  const kv_geometry_t geo{tok_stride, page_size, page_shift, page_stride, v_delta};
  using kv_iter = kv_block_iter_t<T, D, BN, ST, NT, PAGED>;
  if (ROPE != 0)
    detail::rope_tables_init<ROPE>(s_rope_freq, s_rope_grp, rotary_dim, rope_log2_theta, rope_inv_scale, tid, NT);


  // copy geometry: this thread's 16-byte chunk cp_ch of rows cp_r0 + ROWS_PER_PASS * i (kv_block_iter_t::issue)
  const int cp_ch0 = tid % CH, cp_r00 = tid / CH;

  // ldmatrix lane offsets (mma.cuh): Q (A of S = Q K^T): rows lane & 15, chunk lane >> 4; K (B, non-transposed):
  // keys (lane & 7) + 8 (lane >> 4), chunk (lane >> 3) & 1; V (B of O = P V, transposed): keys (lane & 7) +
  // 8 ((lane >> 3) & 1), chunk lane >> 4. Rows 16 further are 16 CH 16 bytes further (the swizzle repeats every 8).
  // Each thread's four k-step offsets of each operand (mma::kstep_lanes; Q's absolute, K's and V's inside a stage's
  // tile) are computed once into the lane table, thread-major (3 x 16 bytes a thread), and read back at each step
  // (lds128_here): the step does not recompute them from the thread index (~35 integer instructions a step,
  // benchmarks/NOTES.md). Q and V use their four; K uses the first alone, XOR'd per k-step (mma::kstep_addr: one
  // register instead of four, what lets the 64-key step fit in 255 registers).
  const unsigned s_q_addr = mma::smem_addr(s_q);
  {
    const mma::kstep_lanes ql(s_q_addr + mma::swizzle<CH>(warp * cfg::WARP_ROWS + (lane & 15), lane >> 4) * 16);
    const mma::kstep_lanes kl(mma::swizzle<CH>((lane & 7) + (lane >> 4) * 8, (lane >> 3) & 1) * 16);
    const mma::kstep_lanes vl(mma::swizzle<CH>((lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4) * 16);
    uint4* t = reinterpret_cast<uint4*>(smem_raw + cfg::SMEM_KV + cfg::SMEM_Q) + 3 * tid;
    t[0] = make_uint4(ql.x[0], ql.x[1], ql.x[2], ql.x[3]);
    t[1] = make_uint4(kl.x[0], kl.x[1], kl.x[2], kl.x[3]);
    t[2] = make_uint4(vl.x[0], vl.x[1], vl.x[2], vl.x[3]);
  }   // (each thread reads only its own entry: no barrier)
  // this thread's entry: the table's base + 48 tid (the thread index read here: not a live register across the loop)
  auto lane_entry = [&]() { return s_lanes_addr + 48u * unsigned(tid_here()); };
  constexpr unsigned ROW16 = 16 * CH * 16;       // bytes of 16 rows

#pragma unroll 1
  for (int it_idx = item_begin;; ++it_idx) {
    // the record in registers for the prologue, and in shared memory for the epilogue (fewer live registers in
    // the main loop; published by the first chunk's barrier, rewritten only after the item's last barrier)
    const prefill_item_t it = items[it_idx];
    if (tid < 16) reinterpret_cast<int*>(s_item)[tid] = reinterpret_cast<const int*>(items + it_idx)[tid];
    // K rows of the item's KV head: ragged k + (kv_start + pos) * tok_stride, paged through the page table. The
    // prologue's copies take these from registers; the main loop's from shared memory (s_bases, published by the
    // first chunk's barrier): not live registers across the loop. V rows: the same offset from v_delta.
    const T* kbase0 = k + (long long)it.kv_head * head_stride + (PAGED ? 0 : (long long)it.kv_start * tok_stride);
    const int* page_ids0 = kv_indices + it.kv_start;
    if (tid == 0) { s_bases->kbase = kbase0; s_bases->page_ids = page_ids0; }
    const int qpos0 = it.kv_len - it.qo_len;       // position of the request's first query
    // ------------------------------------------------------------ producer: the KV block iterator (kv_iter.cuh)
    // over the item's runs; its cursor is in registers in the prologue and parked in shared memory between the main
    // loop's issues (s_cursor: not three registers live across the loop)
    kv_iter p;
    p.begin(runs, it.run_begin, it.run_end);
    auto prefetch_pages = [&](int stage, const int* page_ids, int run_end) {
      p.prefetch_pages(stage, page_ids, run_end, s_pages_addr, geo, tid);
    };
    auto issue = [&](int stage, const T* kbase, const int* page_ids, int run_end) {
      // (the chunk record's flag, bit 16: its run is full under the variant's block structure; MASK_MOD only)
      p.template issue<MASK_MOD>(stage, s_kv + stage * cfg::STAGE_ELEMS, s_chunk, kbase, page_ids, run_end, runs, geo,
                                 k, s_pages, s_pages_addr, cp_ch0, cp_r00, tid, [&](int r) { return run_full[r]; });
    };

    // ------------------------------------------------------------ the Q tile (rows >= it.rows zero-filled)
    if (PAGED) {                                   // the first chunk's page ids, before its copies are issued
      prefetch_pages(0, page_ids0, it.run_end);
      mma::cp_async_commit();
    }
    {
      // (the copy geometry read again: Q_PASSES destination addresses hoisted out of the item loop would stay live
      // across the main loop)
      const int qt = tid_here(), q_ch = qt % CH, q_r0 = qt / CH;
#pragma unroll
      for (int i = 0; i < cfg::Q_PASSES; ++i) {
        const int r = q_r0 + cfg::ROWS_PER_PASS * i;
        const bool valid = r < it.rows;
        const T* src = valid ? q + detail::packed_row_index(it.q_start, it.row0 + r, group, it.kv_head, num_qo_heads) * D +
                                   q_ch * 8 : q;
        mma::cp_async16(mma::smem_addr(s_q) + mma::swizzle<CH>(r, q_ch) * 16, src, valid);
      }
    }
    if (PAGED) {                                   // the first chunk's page ids landed (the Q copies stay in flight)
      mma::cp_async_wait<0>();
      __syncthreads();
    }
#pragma unroll 1
    for (int s = 0; s < ST - 1; ++s) issue(s, kbase0, page_ids0, it.run_end);   // with the Q tile's group
    p.store(s_cursor + (ST - 1), tid);             // (published by the first chunk's barrier)

    // ------------------------------------------------------------ every row's position and query head (shared
    // memory: read only by masked chunks and hooks, so the main loop keeps no registers for them)
    // A padding row (past the tile's end) takes the last real row's place: hooks may then be called on it like on
    // any row (its logits are finite, its output never written), so the logit loop needs no per-row predicate.
    for (int r = tid; r < cfg::TILE_Q; r += NT) {
      const int2 th = detail::packed_row(it.row0 + (r < it.rows ? r : it.rows - 1), group, it.kv_head);
      s_rows[r] = make_int2(qpos0 + th.x, th.y);
    }
    // the tile's first and last query positions: chunks inside [.., first] (causal) and [last - window, ..] are full
    // (kept in shared memory, read once per step: not two live registers across the main loop)
    if (tid == 0)
      *reinterpret_cast<int2*>(s_flags + 2) =
          make_int2(qpos0 + it.row0 / group, qpos0 + (it.row0 + it.rows - 1) / group);

    if (ROPE != 0) {                               // rotate the Q tile in place once it has landed
      mma::cp_async_wait<0>();
      __syncthreads();
      const int row0 = it.row0;
      detail::rope_rotate_tile<ROPE, CH>(s_q, it.rows, [=](int r) { return float(qpos0 + (row0 + r) / group); },
                                         rotary_dim, s_rope_freq, tid, NT);
    }

    float o[M][DTILES][4];
#pragma unroll
    for (int mt = 0; mt < M; ++mt)
#pragma unroll
      for (int j = 0; j < DTILES; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
    softmax_state_t<M, SOFTMAX, 2, true> state;     // (row sums by mma: sum_kstep in O += P V)
    state.init();
    const float scale_log2 = sm_scale * LOG2E;

    // ------------------------------------------------------------ the consumer: one chunk per iteration
    // (the chunk's first position and key count come from the producer through s_chunk: no consumer cursor in
    // registers)
#pragma unroll 1
    for (int chunk = 0;; ++chunk) {
      mma::cp_async_wait<ST - 2>();
      __syncthreads();                             // the chunk (and the Q tile) landed; the oldest stage is free
      const int2 cur = s_chunk[chunk % ST];
      if (cur.y < 0) break;                        // the producer had no chunk left for this stage
      const int c_pos = cur.x, n_stage = MASK_MOD ? cur.y & 0xffff : cur.y;
      const bool mask_full = MASK_MOD && (cur.y >> 16) != 0;   // mask_mod is true on every pair of the chunk
      {
        const int stage = (chunk + ST - 1) % ST;
        p.load(s_cursor + stage);
        issue(stage, s_bases->kbase, s_bases->page_ids, s_item->run_end);
        p.store(s_cursor + (stage + 1) % ST, tid);
      }
      T* s_k = s_kv + (chunk % ST) * cfg::STAGE_ELEMS;

      if (ROPE != 0) {                             // warps rotate 16 K rows each in place, then all of them are read
        if (warp * 16 < BN)
          detail::rope_rotate_rows<T, ROPE, CH>(s_k, warp * 16, c_pos + warp * 16, n_stage - warp * 16,
                                               rotary_dim, s_rope_freq, s_rope_grp, s_rope_base + warp * (D / 2),
                                               rope_log2_theta, rope_inv_scale, lane);
        __syncthreads();
      }

      // the stage's keys in steps of SN: S = Q K^T, logits, softmax, O += P V
#pragma unroll 1
      for (int step = 0; step < BN / SN; ++step) {
        const int k0 = c_pos + step * SN;          // position of the step's first key
        const int n_valid = n_stage - step * SN < SN ? n_stage - step * SN : SN;
        if (n_valid <= 0) break;                   // (the same for every thread: a run shorter than the stage)

        // S = Q K^T (the first k-step starts from a zero accumulator, no register clears)
        const unsigned lanes_at = lane_entry();
        const mma::kstep_lanes q_lanes(mma::lds128_here(lanes_at));
        float s[M][NTILES][4];
        const unsigned k_lane = mma::smem_addr(s_k) + step * (SN / 16) * ROW16 + mma::lds128_here(lanes_at + 16).x;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
          unsigned a[M][4];
#pragma unroll
          for (int mt = 0; mt < M; ++mt) mma::ldmatrix_x4(a[mt], q_lanes(mt * ROW16, kk));
#pragma unroll
          for (int nj = 0; nj < NTILES / 2; ++nj) {
            unsigned b[4];
            mma::ldmatrix_x4(b, mma::kstep_addr(k_lane, kk) + nj * ROW16);
#pragma unroll
            for (int mt = 0; mt < M; ++mt) {
              if (kk == 0) {
                mma::mma16816_zero<T>(s[mt][2 * nj], a[mt], b[0], b[1]);
                mma::mma16816_zero<T>(s[mt][2 * nj + 1], a[mt], b[2], b[3]);
              } else {
                mma::mma16816<T>(s[mt][2 * nj], a[mt], b[0], b[1]);
                mma::mma16816<T>(s[mt][2 * nj + 1], a[mt], b[2], b[3]);
              }
            }
          }
        }

        // logits -> hooks -> masks. The softmax takes logits as scale * x: without a score_mod x is the raw score
        // and scale the log2-domain sm_scale (one FFMA per logit there); with one, x is score_mod's output and scale
        // log2(e). A full step (all its keys valid and inside every row's causal / window bounds) skips the
        // per-element masks; without hooks it touches no logit here (its padding rows, zero Q rows, stay finite and
        // are never written). Hooks are called on every logit of the step, branch-free, with in-range arguments
        // (padding rows are the last real row, see s_rows; a key past the run is the run's last key) and their
        // result is dropped where the pair is masked: masked = -inf, or 0 for sigmoid attention.
        const int2 tile_pos = *reinterpret_cast<const int2*>(s_flags + 2);   // the tile's first, last position
        const bool full = n_valid == SN && (!CAUSAL || k0 + SN - 1 <= tile_pos.x) &&
                          (window_left < 0 || k0 >= tile_pos.y - window_left);
        const bool raw = !SCORE_MOD && scale_log2 > 0.f;   // (a non-positive custom sm_scale: logits formed here)
        const float soft_scale = !SOFTMAX ? 1.f : SCORE_MOD ? LOG2E : raw ? scale_log2 : 1.f;
        // one body per case (FULL: no per-element masks, the hooks see the keys as they are; MM: mask_mod evaluated)
        auto logits = [&](auto full_c, auto mm_c) {
          constexpr bool FULL = decltype(full_c)::value, MM = MASK_MOD && decltype(mm_c)::value;
          const int last = k0 + n_valid - 1;       // the step's last valid key
#pragma unroll
          for (int mt = 0; mt < M; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int2 rw = s_rows[warp * cfg::WARP_ROWS + mt * 16 + g + 8 * h];   // (position, query head)
              // the row's visible keys of the step: [lo, hi] (bitwise tests below: no branches)
              const int hi = CAUSAL ? min(last, rw.x) : last;
              const int lo = window_left >= 0 ? rw.x - window_left : -0x7fffffff - 1;
#pragma unroll
              for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                  const int i = 2 * h + c;
                  const int pos = k0 + nt * 8 + 2 * t + c;
                  const int hpos = FULL ? pos : min(pos, last);   // the key the hooks see
                  float x = s[mt][nt][i];
                  if (SCORE_MOD) x = VARIANT::score_mod(vp, x * sm_scale, it.b, rw.y, rw.x, hpos);
                  else if (!SOFTMAX) x *= sm_scale;
                  else if (!raw) x *= scale_log2;
                  bool ok = FULL || ((pos <= hi) & (pos >= lo));
                  if (MM) ok = VARIANT::mask_mod(vp, it.b, rw.y, rw.x, hpos) & ok;
                  if (!SOFTMAX) x = vx::sigmoid(x);
                  s[mt][nt][i] = ok ? x : (SOFTMAX ? -INFERNB_INF : 0.f);
                }
              }
            }
          }
        };
        // (a masked step evaluates mask_mod even in a full run: such steps are a row's few diagonal / window edges)
        if (!full) logits(bool_c<false>{}, bool_c<true>{});
        else if (MASK_MOD && !mask_full) logits(bool_c<true>{}, bool_c<true>{});
        else if (!(SOFTMAX && raw)) logits(bool_c<true>{}, bool_c<false>{});
        state.update(s, o, soft_scale);

        // O += P V (P rounded to T as the A fragments of the k-steps first: S is dead before V is read)
        unsigned pa[SN / 16][M][4];
#pragma unroll
        for (int kk = 0; kk < SN / 16; ++kk) {
#pragma unroll
          for (int mt = 0; mt < M; ++mt) {
            pa[kk][mt][0] = mma::pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
            pa[kk][mt][1] = mma::pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
            pa[kk][mt][2] = mma::pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
            pa[kk][mt][3] = mma::pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
          }
        }
        const unsigned v_base = mma::smem_addr(s_k + cfg::KV_TILE_ELEMS) + step * (SN / 16) * ROW16;
        const mma::kstep_lanes v_lanes(mma::lds128_here(lane_entry() + 32));   // (not lanes_at: one register less)
#pragma unroll
        for (int kk = 0; kk < SN / 16; ++kk) {
#pragma unroll
          for (int jj = 0; jj < D / 16; ++jj) {
            unsigned b[4];
            mma::ldmatrix_x4_trans(b, v_lanes(v_base + kk * ROW16, jj));
#pragma unroll
            for (int mt = 0; mt < M; ++mt) {
              mma::mma16816<T>(o[mt][2 * jj], pa[kk][mt], b[0], b[1]);
              mma::mma16816<T>(o[mt][2 * jj + 1], pa[kk][mt], b[2], b[3]);
            }
          }
#pragma unroll
          for (int mt = 0; mt < M; ++mt) state.template sum_kstep<T>(mt, pa[kk][mt]);
        }
      }
    }
    mma::cp_async_wait<0>();                       // (empty groups of the producer's overrun)

    // ------------------------------------------------------------ epilogue
    const prefill_item_t& e = *s_item;               // (read back: see the item's start)
    {
    // this thread's place, read again here (tid_here): computed once before the item loop, the epilogue's addresses
    // would stay live across the main loop
    const int tid = tid_here(), warp = tid / 32, lane = tid % 32;
    float scale[2 * M], lse_r[2 * M];
    state.finish(scale, lse_r);
    if (e.slot < 0) {
      store_o_lse<T, D, M, cfg::WARP_ROWS>(o, scale, lse_r, s_q, detail::prefill_rows_t<D>{e, group, num_qo_heads}, out,
                                           lse, warp, lane);
    } else {
      // a split unit's part: fp32 partial output and LSE in slot `slot`
      store_partial<D, M, cfg::WARP_ROWS, cfg::TILE_Q>(o, scale, lse_r, part_o, part_lse, e.slot, warp, lane);
      int& s_last = s_flags[0];
      __threadfence();                             // this CTA's partial state is visible device-wide ...
      __syncthreads();
      if (tid == 0) s_last = atomicAdd(merge_count + e.merge_unit, 1) == e.slot_end - e.slot_begin - 1;
      __syncthreads();                             // ... before it is counted
      if (s_last) {
        __threadfence();
        const int q_start = e.q_start, row0 = e.row0, kv_head = e.kv_head;
        INFERNB_PREFILL_MERGE<T, D, cfg::TILE_Q, NT>(
            part_o + (long long)e.slot_begin * cfg::TILE_Q * D, part_lse + (long long)e.slot_begin * cfg::TILE_Q, 0,
            e.slot_end - e.slot_begin, e.rows, out, lse,
            [=](int r) { return detail::packed_row_index(q_start, row0 + r, group, kv_head, num_qo_heads); }, tid);
        if (tid == 0) merge_count[e.merge_unit] = 0;   // ready for the next launch of the plan
      }
    }
    }
    __syncthreads();                               // the next item's copies overwrite the Q tile and the stages
    if (it_idx + 1 >= s_flags[1]) break;           // (the CTA's item end, from shared memory: not a live register)
  }
}

}  // namespace infernb
