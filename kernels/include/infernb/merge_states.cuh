// infernb: merge partial attention states by their log-sum-exp (the split-KV merge): the merge_state(s) kernels,
// and merge_unit_slots, the same merge run by a decode CTA over a split unit's partial slots (decode.cuh).
//
// A row (token, head) computed over disjoint key parts k = 0..K-1 has partial outputs v_k (normalized
// within the part) and LSEs s_k (natural log). The merged result is
//   m = max_k s_k,  w_k = exp(s_k - m),  v = sum_k w_k v_k / sum_k w_k,  s = m + log(sum_k w_k).
// A part with s_k = -inf has weight 0; if all are -inf the row is v = 0, s = -inf (never NaN).
// A NaN or +inf LSE is invalid input: the row becomes NaN (v and s), never a silent "empty" row.
//
// Thread mapping: THREADS_PER_ROW = HEAD_DIM / VEC threads cooperate on one row, each owning VEC
// consecutive elements (one 16-byte load per state); a CTA of NUM_THREADS covers NUM_THREADS /
// THREADS_PER_ROW rows. Accumulation in fp32.
#pragma once
#include <infernb/common.cuh>

namespace infernb {

template <typename T, int HEAD_DIM, int NUM_THREADS>
struct merge_cfg_t {
  static constexpr int VEC = vec16_size<T>();
  static constexpr int THREADS_PER_ROW = HEAD_DIM / VEC;
  static constexpr int ROWS_PER_CTA = NUM_THREADS / THREADS_PER_ROW;
  static_assert(HEAD_DIM % VEC == 0, "HEAD_DIM must be a multiple of the 16-byte vector width");
  static_assert(NUM_THREADS % THREADS_PER_ROW == 0, "rows must tile the CTA");
};

// This thread's row of the elementwise merge kernels (THREADS_PER_ROW threads a row, ROWS_PER_CTA rows a CTA) and
// its lane within the row; the row is >= num_rows past the end.
template <typename cfg>
__device__ __forceinline__ long long merge_thread_row(int& lane) {
  lane = threadIdx.x % cfg::THREADS_PER_ROW;
  return (long long)blockIdx.x * cfg::ROWS_PER_CTA + threadIdx.x / cfg::THREADS_PER_ROW;
}

// Write v = acc / denom (or 0) and s = m + log(denom) (or -inf) for one row.
__device__ __forceinline__ bool invalid_lse(float s) { return s != s || s == INFERNB_INF; }

template <typename T, int VEC>
__device__ __forceinline__ void merge_write(const float (&acc)[VEC], float m, float denom, bool invalid,
                                            T* v_out_row, float* s_out, int lane) {
  vec_t<T, VEC> o;
  const bool empty = !(denom > 0.f);
  const float nan = __int_as_float(0x7fffffff);
  // denom is in [1, num_states] for a non-empty row (the largest weight is exp(0) = 1), so the fast
  // division is exact to 2 ulp and avoids the IEEE slow-path call (and its register spills).
  const float inv = invalid ? nan : (empty ? 0.f : __fdividef(1.f, denom));
#pragma unroll
  for (int i = 0; i < VEC; ++i) o.elt[i] = from_float<T>(acc[i] * inv);
  o.store(v_out_row + lane * VEC);
  if (lane == 0) *s_out = invalid ? nan : (empty ? -INFERNB_INF : m + logf(denom));
}

// v:     [seq_len, num_states, num_heads, HEAD_DIM] T       s:     [seq_len, num_states, num_heads] fp32
// v_out: [seq_len, num_heads, HEAD_DIM] T                   s_out: [seq_len, num_heads] fp32
template <typename T, int HEAD_DIM, int NUM_THREADS>
__global__ void __launch_bounds__(NUM_THREADS)
merge_states_kernel(const T* __restrict__ v, const float* __restrict__ s, T* __restrict__ v_out,
                    float* __restrict__ s_out, int seq_len, int num_states, int num_heads) {
  using cfg = merge_cfg_t<T, HEAD_DIM, NUM_THREADS>;
  constexpr int VEC = cfg::VEC;
  int lane;
  const long long row = merge_thread_row<cfg>(lane);
  if (row >= (long long)seq_len * num_heads) return;
  const long long n = row / num_heads, h = row % num_heads;
  const float* s_row = s + n * num_states * num_heads + h;           // stride num_heads between states
  const T* v_row = v + (n * num_states * num_heads + h) * HEAD_DIM + lane * VEC;
  const long long v_stride = (long long)num_heads * HEAD_DIM;

  // fmaxf ignores NaN, so start from state 0: m is NaN only if every state is NaN. A NaN among finite
  // states poisons denom through its weight; +inf shows as m == +inf. Both end as `invalid` below.
  float m = num_states > 0 ? s_row[0] : -INFERNB_INF;
  for (int k = 1; k < num_states; ++k) m = fmaxf(m, s_row[(long long)k * num_heads]);
  float acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  float denom = 0.f;
  if (m != -INFERNB_INF && !invalid_lse(m)) {
    const T* vp = v_row;
    const float* sp = s_row;
    int k = num_states;
    // Four states in flight per iteration: independent 16-byte loads before the first use.
    for (; k >= 4; k -= 4, vp += 4 * v_stride, sp += 4 * num_heads) {
      vec_t<T, VEC> x[4];
      float w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        x[j].load_stream(vp + j * v_stride);
        w[j] = __expf(sp[j * num_heads] - m);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        denom += w[j];
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] += w[j] * to_float(x[j].elt[i]);
      }
    }
    for (; k > 0; --k, vp += v_stride, sp += num_heads) {
      vec_t<T, VEC> x;
      x.load_stream(vp);
      const float w = __expf(*sp - m);
      denom += w;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] += w * to_float(x.elt[i]);
    }
  }
  merge_write<T, VEC>(acc, m, denom, invalid_lse(m) || denom != denom, v_out + row * HEAD_DIM, s_out + row, lane);
}

// Gathered form (cascade attention: a request's own keys and its shared prefix levels). Row (n, h) merges state 0,
// (v0[n, h], s0[n, h]), with the states (v1[j, h], s1[j, h]) for j = idx[n, 0..depth-1] that are >= 0 (-1: none).
// v0, v_out: [seq_len, num_heads, HEAD_DIM] T; s0, s_out: [seq_len, num_heads] fp32; v1: [rows1, num_heads, HEAD_DIM]
// T; s1: [rows1, num_heads] fp32; idx: [seq_len, depth] int32. Same conventions as merge_states (-inf, NaN, +inf).
template <typename T, int HEAD_DIM, int NUM_THREADS>
__global__ void __launch_bounds__(NUM_THREADS)
merge_gather_kernel(const T* __restrict__ v0, const float* __restrict__ s0, const T* __restrict__ v1,
                    const float* __restrict__ s1, const int* __restrict__ idx, T* __restrict__ v_out,
                    float* __restrict__ s_out, int seq_len, int depth, int num_heads) {
  using cfg = merge_cfg_t<T, HEAD_DIM, NUM_THREADS>;
  constexpr int VEC = cfg::VEC;
  int lane;
  const long long row = merge_thread_row<cfg>(lane);
  if (row >= (long long)seq_len * num_heads) return;
  const long long n = row / num_heads, h = row % num_heads;
  const int* ix = idx + n * depth;
  // state 0 first (fmaxf ignores NaN: m is NaN only if every state is; see merge_states_kernel)
  float m = s0[row];
  bool bad = invalid_lse(m);
  for (int k = 0; k < depth; ++k) {
    const int j = ix[k];
    if (j >= 0) {
      const float sj = s1[(long long)j * num_heads + h];
      bad |= invalid_lse(sj);
      m = fmaxf(m, sj);
    }
  }
  float acc[VEC], denom = 0.f;
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  if (m != -INFERNB_INF && !bad) {
    vec_t<T, VEC> x;
    x.load_stream(v0 + row * HEAD_DIM + lane * VEC);
    float w = __expf(s0[row] - m);
    denom = w;
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = w * to_float(x.elt[i]);
    for (int k = 0; k < depth; ++k) {
      const int j = ix[k];
      if (j < 0) continue;
      const long long r1 = (long long)j * num_heads + h;
      x.load_stream(v1 + r1 * HEAD_DIM + lane * VEC);
      w = __expf(s1[r1] - m);
      denom += w;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] += w * to_float(x.elt[i]);
    }
  }
  merge_write<T, VEC>(acc, m, denom, bad || invalid_lse(m) || denom != denom, v_out + row * HEAD_DIM, s_out + row,
                      lane);
}

// Two-way form, separate tensors. v_a, v_b, v_out: [num_rows, HEAD_DIM] T; s_a, s_b, s_out: [num_rows] fp32
// (num_rows = seq_len * num_heads, contiguous).
template <typename T, int HEAD_DIM, int NUM_THREADS>
__global__ void __launch_bounds__(NUM_THREADS)
merge_state_kernel(const T* __restrict__ v_a, const float* __restrict__ s_a, const T* __restrict__ v_b,
                   const float* __restrict__ s_b, T* __restrict__ v_out, float* __restrict__ s_out,
                   long long num_rows) {
  using cfg = merge_cfg_t<T, HEAD_DIM, NUM_THREADS>;
  constexpr int VEC = cfg::VEC;
  int lane;
  const long long row = merge_thread_row<cfg>(lane);
  if (row >= num_rows) return;
  vec_t<T, VEC> xa, xb;
  xa.load_stream(v_a + row * HEAD_DIM + lane * VEC);
  xb.load_stream(v_b + row * HEAD_DIM + lane * VEC);
  const float sa = s_a[row], sb = s_b[row];
  const float m = fmaxf(sa, sb);
  const bool invalid = invalid_lse(sa) || invalid_lse(sb);
  float acc[VEC], denom = 0.f;
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  if (m != -INFERNB_INF && !invalid) {
    const float wa = __expf(sa - m), wb = __expf(sb - m);
    denom = wa + wb;
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = wa * to_float(xa.elt[i]) + wb * to_float(xb.elt[i]);
  }
  merge_write<T, VEC>(acc, m, denom, invalid, v_out + row * HEAD_DIM, s_out + row, lane);
}

// Merge partial states [s0, s1) of `rows` rows into out / lse row row_of(r) (the split-KV epilogue, run by the CTA
// that finished a unit's last item). part_o: [slots, ROW_STRIDE, HEAD_DIM] fp32, part_lse: [slots, ROW_STRIDE].
template <typename T, int HEAD_DIM, int ROW_STRIDE, int NUM_THREADS, typename ROW_OF>
__device__ __forceinline__ void merge_slots_rows(const float* part_o, const float* part_lse, int s0, int s1, int rows,
                                                 T* out, float* lse, ROW_OF row_of, int tid) {
  constexpr int TPR = HEAD_DIM / 4, RPP = NUM_THREADS / TPR;    // threads per row (one float4 each), rows per pass
  const int lane = tid % TPR;
  for (int r = tid / TPR; r < rows; r += RPP) {
    const float* sl = part_lse + r;
    const float* so = part_o + (long long)r * HEAD_DIM + lane * 4;
    // one pass, NB states in flight (they sit in L2, just written): the running max moves at most once per
    // batch, rescaling what was summed before (the online softmax, over states)
    float m = -INFERNB_INF, denom = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
    bool bad = false;                            // a NaN or +inf LSE: the row is invalid (NaN), as in merge_states
    constexpr int NB = 8;                      // 4: no faster; 16: spills (benchmarks/NOTES.md)
    for (int k = s0; k < s1; k += NB) {
      const int n = s1 - k < NB ? s1 - k : NB;
      float4 x[NB];
      float sv[NB];
      float mb = -INFERNB_INF;
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        if (j < n) {
          sv[j] = __ldcg(sl + (long long)(k + j) * ROW_STRIDE);
          x[j] = __ldcg(reinterpret_cast<const float4*>(so + (long long)(k + j) * ROW_STRIDE * HEAD_DIM));
        } else {
          sv[j] = -INFERNB_INF;
          x[j] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
        bad |= invalid_lse(sv[j]);
        mb = fmaxf(mb, sv[j]);
      }
      if (mb > m) {
        const float sc = m == -INFERNB_INF ? 0.f : __expf(m - mb);
        denom *= sc;
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[e] *= sc;
        m = mb;
      }
      if (m != -INFERNB_INF) {
#pragma unroll
        for (int j = 0; j < NB; ++j) {
          const float w = __expf(sv[j] - m);
          denom += w;
          acc[0] += w * x[j].x; acc[1] += w * x[j].y; acc[2] += w * x[j].z; acc[3] += w * x[j].w;
        }
      }
    }
    if (bad) m = __int_as_float(0x7fffffff);
    const long long orow = row_of(r);
    merge_write<T, 4>(acc, m, denom, invalid_lse(m) || denom != denom, out + orow * HEAD_DIM, lse + orow, lane);
  }
}

// merge_slots_rows for a tall unit (the prefill kernel's 64- / 128-row tiles): the same merge, same arguments.
// It is one CTA's serial tail after its unit's last piece, so what counts is the loads in flight: each thread takes
// RB rows at once (rows r, r + RPP, ..., one float4 of each), finds their max LSE first (pass 1: the LSEs alone), then
// sums NB states of each row per batch with known weights (pass 2): RB x NB independent 16-byte loads in flight
// instead of one row's 8 (~60 us of tail on the cascade's 64- / 128-row units of 17-33 pieces; benchmarks/NOTES.md).
// (The decode kernel keeps merge_slots_rows: its units are GROUP rows, and these arrays would spill there.)
template <typename T, int HEAD_DIM, int ROW_STRIDE, int NUM_THREADS, typename ROW_OF>
__device__ __forceinline__ void merge_slots_rows_batched(const float* part_o, const float* part_lse, int s0, int s1, int rows,
                                                 T* out, float* lse, ROW_OF row_of, int tid) {
  constexpr int TPR = HEAD_DIM / 4, RPP = NUM_THREADS / TPR;    // threads per row (one float4 each), rows per pass
  constexpr int RB = ROW_STRIDE >= 4 * RPP ? 4 : (ROW_STRIDE + RPP - 1) / RPP;   // rows a thread holds at once
  constexpr int NB = 4;                                         // states a row loads per batch
  const int lane = tid % TPR;
  for (int r0 = tid / TPR; r0 < rows; r0 += RPP * RB) {
    // pass 1: each row's max LSE; a NaN or +inf LSE makes the row invalid (NaN), as in merge_states
    float m[RB];
    bool bad[RB];
#pragma unroll
    for (int j = 0; j < RB; ++j) {
      m[j] = -INFERNB_INF;
      bad[j] = false;
    }
#pragma unroll 4
    for (int k = s0; k < s1; ++k) {
#pragma unroll
      for (int j = 0; j < RB; ++j) {
        const int r = r0 + j * RPP;
        if (r < rows) {
          const float sv = __ldcg(part_lse + (long long)k * ROW_STRIDE + r);
          bad[j] |= invalid_lse(sv);
          m[j] = fmaxf(m[j], sv);
        }
      }
    }
    // pass 2: the weighted sum, RB x NB loads in flight per batch
    float acc[RB][4], denom[RB];
#pragma unroll
    for (int j = 0; j < RB; ++j) {
      denom[j] = 0.f;
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;
    }
    for (int k = s0; k < s1; k += NB) {
      float4 x[RB][NB];
      float sv[RB][NB];
#pragma unroll
      for (int j = 0; j < RB; ++j) {
        const int r = r0 + j * RPP;
#pragma unroll
        for (int i = 0; i < NB; ++i) {
          if (r < rows && k + i < s1) {
            sv[j][i] = __ldcg(part_lse + (long long)(k + i) * ROW_STRIDE + r);
            x[j][i] = __ldcg(reinterpret_cast<const float4*>(part_o + ((long long)(k + i) * ROW_STRIDE + r) * HEAD_DIM +
                                                             lane * 4));
          } else {
            sv[j][i] = -INFERNB_INF;
            x[j][i] = make_float4(0.f, 0.f, 0.f, 0.f);
          }
        }
      }
#pragma unroll
      for (int j = 0; j < RB; ++j) {
        if (m[j] == -INFERNB_INF) continue;                    // every state empty: the row stays 0 / -inf
#pragma unroll
        for (int i = 0; i < NB; ++i) {
          const float w = __expf(sv[j][i] - m[j]);
          denom[j] += w;
          acc[j][0] += w * x[j][i].x; acc[j][1] += w * x[j][i].y; acc[j][2] += w * x[j][i].z; acc[j][3] += w * x[j][i].w;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < RB; ++j) {
      const int r = r0 + j * RPP;
      if (r < rows) {
        const float mj = bad[j] ? __int_as_float(0x7fffffff) : m[j];
        const long long orow = row_of(r);
        merge_write<T, 4>(acc[j], mj, denom[j], invalid_lse(mj) || denom[j] != denom[j], out + orow * HEAD_DIM,
                          lse + orow, lane);
      }
    }
  }
}

// The decode form: GROUP rows (one token's query heads of a KV head) into out / lse rows out_row + r.
// part_o: [slots, GROUP, HEAD_DIM] fp32, part_lse: [slots, GROUP].
template <typename T, int HEAD_DIM, int GROUP, int NUM_THREADS>
__device__ __forceinline__ void merge_unit_slots(const float* part_o, const float* part_lse, int s0, int s1,
                                                 T* out, float* lse, long long out_row, int tid) {
  merge_slots_rows<T, HEAD_DIM, GROUP, NUM_THREADS>(part_o, part_lse, s0, s1, GROUP, out, lse,
                                                    [out_row](int r) { return out_row + r; }, tid);
}

}  // namespace infernb
