// infernb: the KV block iterator (a kernel part). It walks one work item's key runs -- a block-sparse row: the
// plan's visible key segments of the item's query tile (causal, window and block-structure cuts), cut to the item's
// range -- in chunks of at most BLOCK_N keys, each chunk inside one run, and issues a chunk's K and V rows as 16-byte
// cp.async copies into a swizzled shared-memory stage. Keys live in a ragged K/V tensor or in a paged cache's pool,
// reached through the request's page table.
//
//   kv_block_iter_t<...> it;
//   it.begin(runs, run_begin, run_end)        the cursor at the first run's first key
//   it.prefetch_pages(...)                    paged: the page id of every key row of the chunk at the cursor, copied
//                                             (cp.async, 4 bytes a row) into the stage's page slots with the current
//                                             group: in shared memory, not in registers, until the chunk's copies
//                                             are issued one chunk later (hence two stages when paged)
//   it.store(slot, tid) / it.load(slot)      the cursor parked in shared memory between two issues (see there)
//   it.issue(...)                             writes the stage's chunk record (first key, key count | FLAG << 16, or
//                                             count -1 past the last run), issues the chunk's copies, advances the
//                                             cursor, prefetches the next chunk's page ids; commits the group
//
// Copy geometry: thread `tid` copies 16-byte column tid % CH of rows tid / CH + ROWS_PER_PASS * i (i < KV_PASSES), K
// into the stage's first BLOCK_N x HEAD_DIM tile and V into the second, rows swizzled (mma::swizzle). A full ragged
// chunk (all BLOCK_N keys valid) takes one address and a constant step per pass; other chunks check each row and
// zero-fill the rows past the run's end.
#pragma once
#include <infernb/common.cuh>
#include <infernb/mma.cuh>

namespace infernb {

// A key run [pos_start, pos_end) of a request (infernb.ops.prefill.PREFILL_RUN).
struct prefill_run_t { int pos_start, pos_end; };

// Where one KV head's key rows of a request live, in elements: token t's K row at kbase + t * tok_stride (ragged), or
// at kbase + page * page_stride + (t % page_size) * tok_stride with page = the request's page table entry t / page_size
// (paged; page_shift = log2(page_size) for power-of-two pages, else -1); its V row v_delta elements further.
struct kv_geometry_t {
  int tok_stride, page_size, page_shift, page_stride;
  long long v_delta;
};

template <typename T, int HEAD_DIM, int BLOCK_N, int STAGES, int NUM_THREADS, bool PAGED>
struct kv_block_iter_t {
  static constexpr int CH = HEAD_DIM / 8;                      // 16-byte chunks per row
  static constexpr int ROWS_PER_PASS = NUM_THREADS / CH;
  static constexpr int KV_PASSES = BLOCK_N / ROWS_PER_PASS;
  static constexpr int KV_TILE_ELEMS = BLOCK_N * HEAD_DIM;     // a stage: K tile, then V tile
  static_assert(BLOCK_N % ROWS_PER_PASS == 0, "copy tiling");
  static_assert(!PAGED || (STAGES == 2 && BLOCK_N <= NUM_THREADS),
                "paged: page ids travel one chunk ahead (2 stages), a thread per key row loads its page id");

  int run, pos, end;                                           // the cursor: run, next chunk's first key, run end

  __device__ __forceinline__ void begin(const prefill_run_t* runs, int run_begin, int run_end) {
    run = run_begin; pos = 0; end = 0;
    if (run < run_end) { const prefill_run_t r = runs[run]; pos = r.pos_start; end = r.pos_end; }
  }

  // The cursor between two issues can wait in shared memory instead of three registers live across the caller's
  // main loop: store() (thread 0 writes it) after an issue, load() (every thread) before the next one, on the far side
  // of a barrier. A slot per stage (the cursor for the issue of stage s in slot s) keeps the write of the next slot
  // clear of this issue's reads.
  __device__ __forceinline__ void load(const int4* slot) { const int4 c = *slot; run = c.x; pos = c.y; end = c.z; }
  __device__ __forceinline__ void store(int4* slot, int tid) const {
    if (tid == 0) *slot = make_int4(run, pos, end, 0);
  }

  // paged: page ids of the chunk at the cursor into stage `stage`'s slots (s_pages_addr: [stages][BLOCK_N] int32)
  __device__ __forceinline__ void prefetch_pages(int stage, const int* page_ids, int run_end, unsigned s_pages_addr,
                                                 const kv_geometry_t& geo, int tid) const {
    if (!PAGED || run >= run_end) return;
    if (tid < BLOCK_N) {
      const int p = pos + tid;
      const int pidx = geo.page_shift >= 0 ? p >> geo.page_shift : p / geo.page_size;
      mma::cp_async4(s_pages_addr + (stage * BLOCK_N + tid) * 4, p < end ? page_ids + pidx : page_ids, p < end);
    }
  }

  // Issue the chunk at the cursor into stage `stage` (s_stage: its K tile, the V tile follows) and advance.
  // s_chunk[stage] = (first key, key count | flag(run) << 16), count -1 when no run is left; flag(run): FLAG's
  // per-run bit (e.g. the run is full under the variant's block structure), read only when USE_FLAG.
  // cp_ch0, cp_r00: this thread's copy column and first row (tid % CH, tid / CH), read again from the thread index
  // here when ROWS_PER_PASS is not a multiple of the swizzle period, 8 rows (head dim 256: the passes' destinations
  // are then not one address plus immediates, and hoisted they would stay live across the caller's main loop);
  // k: any valid address (the source of zero-filled copies); s_pages: paged, the slots prefetch_pages filled.
  template <bool USE_FLAG, typename FLAG>
  __device__ __forceinline__ void issue(int stage, T* s_stage, int2* s_chunk, const T* kbase, const int* page_ids,
                                        int run_end, const prefill_run_t* runs, const kv_geometry_t& geo,
                                        const T* k, const int* s_pages, unsigned s_pages_addr, int cp_ch0,
                                        int cp_r00, int tid, FLAG flag) {
    if (tid == 0)
      s_chunk[stage] = make_int2(pos, run < run_end ? min(end - pos, BLOCK_N) | (USE_FLAG ? flag(run) << 16 : 0) : -1);
    if (run < run_end) {
      const int cp_ch = ROWS_PER_PASS % 8 != 0 ? tid_here() % CH : cp_ch0;
      const int cp_r0 = ROWS_PER_PASS % 8 != 0 ? tid_here() / CH : cp_r00;
      const unsigned sk = mma::smem_addr(s_stage);
      const unsigned sv = sk + KV_TILE_ELEMS * 2;
      if (!PAGED && pos + BLOCK_N <= end) {
        // a full ragged chunk: one address, then a constant step per pass; no checks
        const T* ks = kbase + (long long)(pos + cp_r0) * geo.tok_stride + cp_ch * 8;
        const long long vs = geo.v_delta;
        const int step = ROWS_PER_PASS * geo.tok_stride;
#pragma unroll
        for (int i = 0; i < KV_PASSES; ++i) {
          const unsigned dst = mma::swizzle<CH>(cp_r0 + ROWS_PER_PASS * i, cp_ch) * 16;
          mma::cp_async16(sk + dst, ks + (long long)i * step, true);
          mma::cp_async16(sv + dst, ks + vs + (long long)i * step, true);
        }
      } else {
#pragma unroll
        for (int i = 0; i < KV_PASSES; ++i) {
          const int row = cp_r0 + ROWS_PER_PASS * i;
          const int p = pos + row;
          bool valid = p < end;
          long long off = 0;
          if (PAGED) {
            const int page = s_pages[stage * BLOCK_N + row];
            const int slot = geo.page_shift >= 0 ? p & (geo.page_size - 1) : p % geo.page_size;
            off = (long long)page * geo.page_stride + slot * geo.tok_stride;
          } else {
            off = (long long)p * geo.tok_stride;
          }
          off = valid ? off + cp_ch * 8 : 0;
          const unsigned dst = mma::swizzle<CH>(row, cp_ch) * 16;
          mma::cp_async16(sk + dst, valid ? kbase + off : k, valid);
          mma::cp_async16(sv + dst, valid ? kbase + geo.v_delta + off : k, valid);
        }
      }
      // advance the cursor to the next chunk and load its page ids (in flight while this chunk is computed)
      pos += BLOCK_N;
      if (pos >= end && ++run < run_end) { const prefill_run_t r = runs[run]; pos = r.pos_start; end = r.pos_end; }
      prefetch_pages((stage + 1) % STAGES, page_ids, run_end, s_pages_addr, geo, tid);
    }
    mma::cp_async_commit();
  }
};

}  // namespace infernb
