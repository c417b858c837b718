// infernb: the online-softmax state of rows held in mma.m16n8k16 accumulator fragments (a kernel part).
//
// A warp holds M_TILES tiles of 16 query rows; lane (g = lane / 4, t = lane % 4) owns rows g and g + 8 of each tile
// (index r = 2 m + half) and, for each 8-column n-tile of logits or output, the columns 2t, 2t + 1 (mma.cuh).
// Logits arrive in the log2 domain (already scaled by log2(e)); -inf marks a masked logit.
//
//   state.init()                          m = -inf, l = 0 (softmax) / 0, 0 (sigmoid)
//   state.update(s, o, scale)             logits scale * s (raw scores and the log2-domain scale, or logits already
//                                         scaled and 1): the running max m per row (reduced over the row's 4 lanes)
//                                         moves only when the chunk's max exceeds it by more than RESCALE_SLACK; then
//                                         o and l are rescaled by exp2(m_old - m_new) (skipped when no row of the
//                                         warp moved). s becomes exp2(scale * s - m) (one FFMA and one ex2 each),
//                                         l += their sum (this lane's part)
//   state.update_deferred(s, scale, a)    update() leaving o alone: a[r] is the factor row r's O takes, applied by
//                                         state.rescale(o, a) once the tensor core is done writing O (Hopper)
//   state.sum_kstep<T>(mt, a)             MMA_SUMS only: adds one k-step's probabilities of tile mt to l, from the A
//                                         fragment of O += P V (P rounded to T): one mma with a B of ones
//   state.row_sums(l)                     l reduced over the row's 4 lanes (the row's (m, l): a partial state)
//   state.finish(scale, lse)              row_sums, then per row the output scale (1 / l, or 0 for a row that saw
//                                         no key) and the natural-log LSE
//
// Merging partial states of one row (parts over disjoint keys, log2 domain, each part's O relative to 2^m): with M
// the largest m, part i weighs part_weight(m_i, l_i, M) = l_i 2^(m_i - M), L is the sum of the weights, the merged O
// is sum_i 2^(m_i - M) O_i / L and the natural-log LSE lse_of(M, L). Decode merges its warps' parts so
// (decode.cuh); finish() is the one-part case. (merge_states.cuh merges parts already normalized, by their
// natural-log LSEs.)
//
// MMA_SUMS: the row sums l come from the tensor core instead of 2 FADD per logit pair: the caller passes each k-step's
// P (the A fragment it multiplies V with, already rounded to T) to sum_kstep, an m16n8k16 mma with every B element 1,
// whose 16 x 8 result holds in every column the rows' sums over the k-step's 16 keys. Its accumulator (lsum, 4
// registers a tile, rescaled with O) gives every lane its rows' whole sums: row_sums needs no 4-lane reduction. l is
// then the sum of the probabilities as rounded for P V, the weights O is formed with (they sum to 1 exactly).
// Per 32-key step of two 16-row tiles: 4 mma instead of 32 FADD.
//
// HALVES = 1: only rows g of each tile are in use (decode with <= 8 query heads per KV head); rows g + 8 are padding,
// their probabilities 0 and their state untouched.
//
// Lazy rescaling: m is a reference point, not necessarily the row's maximum; O / l and the LSE m + log2(l) are exact
// for any m, and keeping m while the chunk's max stays within RESCALE_SLACK of it bounds the probabilities by
// 2^RESCALE_SLACK = 256 (finite in fp16 and bf16, rounded with the same relative error as values <= 1). Long rows
// then rescale O only in their first chunks instead of whenever the max creeps up.
// A row that sees no key keeps m = -inf: its probabilities are exp2(-inf - 0) = 0, its output 0, its LSE -inf.
// Sigmoid attention (SOFTMAX = false) has no max and no rescale: the output is the plain sum and lse = log(sum).
#pragma once
#include <infernb/common.cuh>
#include <infernb/mma.cuh>

namespace infernb {

// 2^x by the SFU (ex2.approx.ftz: 2 ulp, exp2(-inf) = 0), without exp2f's denormal-range fix-up.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The natural-log LSE of a row from its log2-domain max M and sum L (-inf for a row that saw no key).
__device__ __forceinline__ float lse_of(float M, float L) { return L > 0.f ? (M + log2f(L)) * LN2 : -INFERNB_INF; }
// The weight of a part (m, l) in a merge of parts whose largest m is M (0 for an empty part).
__device__ __forceinline__ float part_weight(float m, float l, float M) { return l > 0.f ? l * fast_exp2(m - M) : 0.f; }

template <int M_TILES, bool SOFTMAX, int HALVES = 2, bool MMA_SUMS = false>
struct softmax_state_t {
  static_assert(HALVES == 1 || HALVES == 2, "rows g, or g and g + 8, of each tile");
  static_assert(!MMA_SUMS || HALVES == 2, "MMA_SUMS: both halves of each tile");
  static constexpr int ROWS = 2 * M_TILES;      // rows of this lane: (m, g) and (m, g + 8)
  static constexpr float RESCALE_SLACK = 8.f;   // log2 units: probabilities stay <= 256 (see above)
  float m[ROWS], l[ROWS];
  float lsum[M_TILES][4];                       // MMA_SUMS: the row sums' accumulators (c0 = c1: row g, c2 = c3: g + 8)

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) { m[r] = SOFTMAX ? -INFERNB_INF : 0.f; l[r] = 0.f; }
    if (MMA_SUMS)
#pragma unroll
      for (int mt = 0; mt < M_TILES; ++mt) lsum[mt][0] = lsum[mt][1] = lsum[mt][2] = lsum[mt][3] = 0.f;
  }

  // The step's row maxima mx (logits: scale * s; reduced over the row's 4 lanes; -inf stays -inf) of the rows in
  // use; whether one of this lane's rows moves its reference point (m = -inf: any finite max moves it).
  template <int NT>
  __device__ __forceinline__ bool step_max(const float (&s)[M_TILES][NT][4], float scale, float (&mx)[ROWS]) const {
    bool moved = false;
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
#pragma unroll
      for (int h = 0; h < HALVES; ++h) {
        const int r = 2 * mt + h;
        float x = s[mt][0][2 * h];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) x = fmaxf(x, fmaxf(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
        mx[r] = x * scale;
        moved |= mx[r] > m[r] + RESCALE_SLACK;
      }
    }
    return moved;
  }

  // The rows whose step maximum mx exceeds their reference point by more than RESCALE_SLACK (and `any`: some row of
  // the warp moved) take it as their new one; alpha[r]: the factor their O and l take (1 for the others); l scaled.
  __device__ __forceinline__ void move_refs(const float (&mx)[ROWS], bool any, float (&alpha)[ROWS]) {
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
      for (int h = 0; h < HALVES; ++h) {
        const int r = 2 * mt + h;
        const bool mv = any && mx[r] > m[r] + RESCALE_SLACK;
        alpha[r] = mv ? fast_exp2(m[r] - mx[r]) : 1.f;
        m[r] = mv ? mx[r] : m[r];
        l[r] *= alpha[r];
      }
  }

  // s becomes exp2(scale * s - m) per row (a row with no key so far: probabilities 0; HALVES = 1: rows g + 8 zero);
  // without MMA_SUMS l += their sum (this lane's part).
  template <int NT>
  __device__ __forceinline__ void probabilities(float (&s)[M_TILES][NT][4], float scale) {
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        if (HALVES == 1) s[mt][nt][2] = s[mt][nt][3] = 0.f;   // rows g + 8: padding
#pragma unroll
      for (int h = 0; h < HALVES; ++h) {
        const int r = 2 * mt + h;
        const float base = m[r] == -INFERNB_INF ? 0.f : m[r];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          s[mt][nt][2 * h] = fast_exp2(fmaf(s[mt][nt][2 * h], scale, -base));
          s[mt][nt][2 * h + 1] = fast_exp2(fmaf(s[mt][nt][2 * h + 1], scale, -base));
          if (!MMA_SUMS) l[r] += s[mt][nt][2 * h] + s[mt][nt][2 * h + 1];
        }
      }
    }
  }

  // s: [M_TILES][NT][4] scores (logits = scale * s, log2 domain; scale > 0); o: [M_TILES][DT][4] accumulators.
  template <int NT, int DT>
  __device__ __forceinline__ void update(float (&s)[M_TILES][NT][4], float (&o)[M_TILES][DT][4], float scale) {
    if (!SOFTMAX) {
#pragma unroll
      for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
        for (int h = 0; h < HALVES; ++h)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
            if (!MMA_SUMS) l[2 * mt + h] += s[mt][nt][2 * h] + s[mt][nt][2 * h + 1];
#pragma unroll
      for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          if (HALVES == 1) s[mt][nt][2] = s[mt][nt][3] = 0.f;   // rows g + 8: padding
      return;
    }
    // the step's row maxima; whether some row of the warp moves its reference point (rare after a row's first steps)
    float mx[ROWS];
    const bool moved = step_max(s, scale, mx);
    // the rescale, l's and the output rows', only when some row of the warp moved: the common step pays for the
    // maxima and the vote alone
    if (__any_sync(0xffffffffu, moved)) {
      float alpha[ROWS];
      move_refs(mx, true, alpha);
      if (MMA_SUMS)
#pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt) {
          lsum[mt][0] *= alpha[2 * mt]; lsum[mt][1] *= alpha[2 * mt];
          lsum[mt][2] *= alpha[2 * mt + 1]; lsum[mt][3] *= alpha[2 * mt + 1];
        }
      rescale(o, alpha);
    }
    probabilities(s, scale);
  }

  // update() without touching o, for a caller whose O is still being written by the tensor core (a Hopper
  // consumer overlapping O += P V with the next block's softmax): m, l and s as update() leaves them; alpha[r] is
  // the factor row r's O must be multiplied by (1 where no row moved), applied with rescale() once O is readable.
  // Returns whether some row of the warp moved (when false, alpha is all ones and rescale() can be skipped).
  template <int NT>
  __device__ __forceinline__ bool update_deferred(float (&s)[M_TILES][NT][4], float scale, float (&alpha)[ROWS]) {
    static_assert(SOFTMAX && HALVES == 2 && !MMA_SUMS, "update_deferred: softmax rows g and g + 8, sums by FADD");
    float mx[ROWS];
    const bool any = __any_sync(0xffffffffu, step_max(s, scale, mx));
    move_refs(mx, any, alpha);
    probabilities(s, scale);
    return any;
  }
  // o's rows times alpha (update_deferred's factors; update's own rescale)
  template <int DT>
  __device__ __forceinline__ static void rescale(float (&o)[M_TILES][DT][4], const float (&alpha)[ROWS]) {
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
      for (int j = 0; j < DT; ++j) {
        o[mt][j][0] *= alpha[2 * mt]; o[mt][j][1] *= alpha[2 * mt];
        if (HALVES == 2) { o[mt][j][2] *= alpha[2 * mt + 1]; o[mt][j][3] *= alpha[2 * mt + 1]; }
      }
  }

  // MMA_SUMS: l += the row sums of one k-step's P of tile mt (a: its A fragment, pairs of T)
  template <typename T>
  __device__ __forceinline__ void sum_kstep(int mt, const unsigned (&a)[4]) {
    static_assert(MMA_SUMS, "sum_kstep: the state sums its rows by mma only with MMA_SUMS");
    const unsigned ones = mma::pack2<T>(1.f, 1.f);
    mma::mma16816<T>(lsum[mt], a, ones, ones);
  }

  // l of each row, summed over the row's 4 lanes (every lane of the row gets it).
  __device__ __forceinline__ void row_sums(float (&sum)[ROWS]) const {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (MMA_SUMS) { sum[r] = lsum[r / 2][2 * (r % 2)]; continue; }   // (every lane holds its rows' sums)
      float x = l[r];
      x += __shfl_xor_sync(0xffffffffu, x, 1);
      x += __shfl_xor_sync(0xffffffffu, x, 2);
      sum[r] = x;
    }
  }

  // scale[r]: what the row's output is multiplied by; lse[r]: natural log.
  __device__ __forceinline__ void finish(float (&scale)[ROWS], float (&lse)[ROWS]) const {
    float sum[ROWS];
    row_sums(sum);
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const float x = sum[r];
      if (SOFTMAX) {
        scale[r] = x > 0.f ? __fdividef(1.f, x) : 0.f;
        lse[r] = lse_of(m[r], x);
      } else {
        scale[r] = 1.f;
        lse[r] = logf(x);
      }
    }
  }
};

}  // namespace infernb
