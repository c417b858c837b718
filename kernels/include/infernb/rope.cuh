// infernb: Llama-style RoPE inside kernels: frequencies, accurate sin/cos of large angles without local memory,
// and the in-place rotation of a warp's 16 K rows in a swizzled shared-memory tile (used by decode.cuh).
// Conventions as infernb.reference.rope: pair p has frequency theta^(-2p / rotary_dim) / scale; ROPE = 1 pairs
// (p, p + rotary_dim / 2) (Llama, "half rotated"), ROPE = 2 pairs (2p, 2p + 1) (GPT-J, interleaved).
#pragma once
#include <infernb/common.cuh>
#include <infernb/mma.cuh>

namespace infernb {

namespace detail {

// RoPE frequency of pair p: theta^(-2p / rotary_dim) / scale.
__device__ __forceinline__ float rope_freq(int p, int rotary_dim, float log2_theta, float inv_scale) {
  return exp2f(-2.f * float(p) / float(rotary_dim) * log2_theta) * inv_scale;
}
// sin and cos of the angle pos * f. The product is kept exactly (its rounding error recovered with an fma), then
// reduced by 2 pi in three parts (Cody-Waite) to [-pi, pi], where the fast intrinsics are accurate to ~1e-6:
// no slow-path argument reduction (and no local memory) for any position.
__device__ __forceinline__ void rope_sincos(float pos, float f, float* sn, float* cs) {
  const float a = pos * f;
  const float e = fmaf(pos, f, -a);                     // a + e == pos * f exactly
  const float k = rintf(a * 0.15915494309189535f);      // turns
  float r = fmaf(-k, 6.28125f, a);                      // 2 pi = 6.28125 + 1.93500518798828125e-3 + ...
  r = fmaf(-k, 1.93500518798828125e-3f, r);
  r = fmaf(-k, 3.0199159795074593e-7f, r);
  __sincosf(r + e, sn, cs);
}

// The pair (a, b) = (*xa, *xb) rotated by the angle of (cs, sn), rounded once to T, into *ya, *yb (the same places
// when rotating in place; both read before either is written).
template <typename T>
__device__ __forceinline__ void rotate_pair(const T* xa, const T* xb, T* ya, T* yb, float cs, float sn) {
  const float a = to_float(*xa), b = to_float(*xb);
  *ya = from_float<T>(a * cs - b * sn);
  *yb = from_float<T>(b * cs + a * sn);
}

// Element indices of RoPE pair p (ROPE 1: (p, p + rd/2), ROPE 2: (2p, 2p + 1)).
template <int ROPE>
__device__ __forceinline__ void rope_pair(int p, int rotary_dim, int& da, int& db) {
  if (ROPE == 2) { da = 2 * p; db = 2 * p + 1; }
  else { da = p; db = p + rotary_dim / 2; }
}

// Shared-memory tables of the K rotation (built once per CTA by rope_tables_init for the runtime rotary_dim).
//   freq[p] = (cos f_p, sin f_p, f_p, 0), p < rotary_dim / 2        (one token's angle step, and the frequency)
//   grp[j * (rotary_dim / 2) + p] = (cos, sin) of (j * rope_rows(rotary_dim)) * f_p     (a lane group's first row)
//   base: per warp, rotary_dim / 2 float2 (the angles of the chunk's first row, rope_rotate_rows fills it)
template <int ROPE>
struct rope_layout_t {
  // a lane's accesses are vectors of EPC pairs' first elements: 8 bytes half-rotated (the second elements are
  // another vector), 16 bytes interleaved; so a lane keeps EPC = 4 angles live (no register spills beside the
  // decode kernel's accumulators), and a row's vectors still cover all 32 banks once
  static constexpr int EPC = 4;                           // pairs per lane and row
  static constexpr int VEC = ROPE == 2 ? 8 : 4;           // elements per vector
  static constexpr int GRP_ENTRIES = 32 * EPC;            // lane groups x pairs, for every fast-path rotary_dim
  __device__ static int chunks(int rotary_dim) { return rotary_dim / (2 * EPC); }
  // fast path: a lane owns one vector of pairs in a group of rows (rotary_dim / 2 pairs in vectors of EPC that
  // tile 32 lanes); otherwise a lane per pair, element-wise
  __device__ static bool fast(int rotary_dim) {
    const int nc = chunks(rotary_dim);
    return nc > 0 && rotary_dim % (2 * EPC) == 0 && 32 % nc == 0;
  }
  __device__ static int rows(int rotary_dim) { const int nc = chunks(rotary_dim); return nc >= 2 ? nc / 2 : 1; }
};

// The three tables' places in a kernel's RoPE shared-memory region (`region` 16-byte aligned), for HEAD_DIM and
// NUM_WARPS warps: freq [HEAD_DIM / 2] float4 | grp [GRP_ENTRIES] float2 | base [NUM_WARPS][HEAD_DIM / 2] float2.
template <int ROPE, int HEAD_DIM, int NUM_WARPS>
struct rope_smem_t {
  static constexpr int FREQ_BYTES = ROPE ? HEAD_DIM / 2 * 16 : 0;
  static constexpr int GRP_BYTES = ROPE ? rope_layout_t<ROPE>::GRP_ENTRIES * 8 : 0;
  static constexpr int BASE_BYTES = ROPE ? NUM_WARPS * HEAD_DIM / 2 * 8 : 0;
  static constexpr int BYTES = FREQ_BYTES + GRP_BYTES + BASE_BYTES;
  float4* freq;
  float2* grp;
  float2* base;
  __device__ __forceinline__ explicit rope_smem_t(unsigned char* region)
      : freq(reinterpret_cast<float4*>(region)), grp(reinterpret_cast<float2*>(region + FREQ_BYTES)),
        base(reinterpret_cast<float2*>(region + FREQ_BYTES + GRP_BYTES)) {}
};

// Rotate rows [0, rows) of a swizzled tile of CH 16-byte chunks per row in place, row r at position pos_of(r): the
// block's threads share the (row, pair) work; frequencies from the CTA's table (a query tile, in decode and prefill).
template <int ROPE, int CH, typename T, typename POS>
__device__ __forceinline__ void rope_rotate_tile(T* s, int rows, POS pos_of, int rotary_dim, const float4* freq, int tid,
                                                 int nthreads) {
  const int np = rotary_dim / 2;
  for (int i = tid; i < rows * np; i += nthreads) {
    const int r = i / np, p = i % np;
    int da, db;
    rope_pair<ROPE>(p, rotary_dim, da, db);
    float sn, cs;
    rope_sincos(pos_of(r), freq[p].z, &sn, &cs);
    T* pa = s + mma::swizzle_elem<CH>(r, da);
    T* pb = s + mma::swizzle_elem<CH>(r, db);
    rotate_pair(pa, pb, pa, pb, cs, sn);
  }
}

template <int ROPE>
__device__ __forceinline__ void rope_tables_init(float4* freq, float2* grp, int rotary_dim, float log2_theta,
                                                 float inv_scale, int tid, int nthreads) {
  using L = rope_layout_t<ROPE>;
  const int np = rotary_dim / 2;
  for (int p = tid; p < np; p += nthreads) {
    const float f = rope_freq(p, rotary_dim, log2_theta, inv_scale);
    float sn, cs;
    rope_sincos(1.f, f, &sn, &cs);
    freq[p] = make_float4(cs, sn, f, 0.f);
  }
  if (!L::fast(rotary_dim)) return;
  const int rows = L::rows(rotary_dim);
  for (int i = tid; i < L::GRP_ENTRIES; i += nthreads) {     // (32 / chunks) groups x np pairs
    const int j = i / np, p = i % np;
    float sn, cs;
    rope_sincos(float(j * rows), rope_freq(p, rotary_dim, log2_theta, inv_scale), &sn, &cs);
    grp[i] = make_float2(cs, sn);
  }
}

// Rotate rows [row0, row0 + 16) of a swizzled K tile (positions kpos0 + j; rows j >= valid stay as they are).
// Fast path: the warp first computes the angles of position kpos0 for every pair (two accurate sin/cos per lane
// for rotary_dim 128) into `base`; a lane then owns one vector of 4 pairs' first elements (and,
// half-rotated, the matching vector of the second elements) in a group of consecutive rows, starts from base x its
// group's offset (one complex multiply) and moves to the next row by one complex multiply with the step from the
// table, so each access is one vector load or store (8 bytes half-rotated, 16 bytes interleaved). Otherwise, a
// lane per pair and element-wise accesses.
template <typename T, int ROPE, int CH>
__device__ __forceinline__ void rope_rotate_rows(T* s_k, int row0, int kpos0, int valid, int rotary_dim,
                                                 const float4* freq, const float2* grp, float2* base,
                                                 float log2_theta, float inv_scale, int lane) {
  using L = rope_layout_t<ROPE>;
  constexpr int EPC = L::EPC;
  const int np = rotary_dim / 2;
  if (L::fast(rotary_dim)) {
    const int nc = L::chunks(rotary_dim);
    for (int p = lane; p < np; p += 32) {
      float sn, cs;
      rope_sincos(float(kpos0), freq[p].z, &sn, &cs);
      base[p] = make_float2(cs, sn);
    }
    __syncwarp();
    const int c = lane % nc, j = lane / nc;
    const int rows = L::rows(rotary_dim);
    const int r0 = j * rows;
    if (r0 >= 16) return;
    float cs[EPC], sn[EPC], cf[EPC], sf[EPC];
#pragma unroll
    for (int e = 0; e < EPC; ++e) {
      const int p = c * EPC + e;
      const float2 b = base[p], o = grp[j * np + p];
      const float4 st = freq[p];
      cs[e] = b.x * o.x - b.y * o.y;
      sn[e] = b.y * o.x + b.x * o.y;
      cf[e] = st.x;
      sf[e] = st.y;
    }
    constexpr int V = L::VEC;
    // element offset of vector v of row `row` in the swizzled tile (16-byte chunk v * V / 8, at (v * V) % 8)
    auto at = [&](int row, int v) { return mma::swizzle<CH>(row, v * V / 8) * 8 + (v * V) % 8; };
    for (int i = 0; i < rows; ++i) {
      const int r = r0 + i;
      if (r < valid) {
        T* pa = s_k + at(row0 + r, c);
        vec_t<T, V> a;
        a.load(pa);
        if (ROPE == 2) {                                 // pairs (2e, 2e + 1) inside the vector
#pragma unroll
          for (int e = 0; e < EPC; ++e) {
            const float x = to_float(a.elt[2 * e]), y = to_float(a.elt[2 * e + 1]);
            a.elt[2 * e] = from_float<T>(x * cs[e] - y * sn[e]);
            a.elt[2 * e + 1] = from_float<T>(y * cs[e] + x * sn[e]);
          }
        } else {                                         // pairs (p, p + rotary_dim / 2): vectors c and c + nc
          T* pb = s_k + at(row0 + r, c + nc);
          vec_t<T, V> b;
          b.load(pb);
#pragma unroll
          for (int e = 0; e < EPC; ++e) {
            const float x = to_float(a.elt[e]), y = to_float(b.elt[e]);
            a.elt[e] = from_float<T>(x * cs[e] - y * sn[e]);
            b.elt[e] = from_float<T>(y * cs[e] + x * sn[e]);
          }
          b.store(pb);
        }
        a.store(pa);
      }
      if (i + 1 < rows) {
#pragma unroll
        for (int e = 0; e < EPC; ++e) {                 // next token: angle + f
          const float c2 = cs[e] * cf[e] - sn[e] * sf[e];
          sn[e] = sn[e] * cf[e] + cs[e] * sf[e];
          cs[e] = c2;
        }
      }
    }
    return;
  }
  for (int p = lane; p < np; p += 32) {
    const float4 st = freq[p];
    float sn, cs;
    rope_sincos(float(kpos0), st.z, &sn, &cs);
    int da, db;
    rope_pair<ROPE>(p, rotary_dim, da, db);
    for (int j = 0; j < 16; ++j) {
      if (j < valid) {
        T* pa = s_k + mma::swizzle_elem<CH>(row0 + j, da);
        T* pb = s_k + mma::swizzle_elem<CH>(row0 + j, db);
        rotate_pair(pa, pb, pa, pb, cs, sn);
      }
      const float c2 = cs * st.x - sn * st.y;
      sn = sn * st.x + cs * st.y;
      cs = c2;
    }
  }
}

}  // namespace detail

}  // namespace infernb

namespace infernb {

// The rotation pass (a kernel part of prefill's RoPE, infernb.ops.prefill "pass"): dst [tokens, heads, HEAD_DIM]
// (ragged, contiguous) = src rotated at the tokens' positions, in fp32 and rounded once, the same numbers the in-tile
// rotation forms (rope_sincos of position x rope_freq: here directly, there by recurrences). A long prompt's keys are
// read by every query tile of their request (64 tiles of 128 rows at 8192 tokens): rotating them once here replaces
// a rotation per tile and stage. src rows: token j's head 0 at src + src_rows[j] (a paged pool; heads head_stride
// apart) or, with src_rows null, ragged (j * heads + h) * HEAD_DIM. pos null: copy (V gathered from pages).
// One warp per (token, head) row: lanes over the rotary pairs, then the rest of the row in 16-byte vectors.
template <typename T, int ROPE, int HEAD_DIM>
__global__ void __launch_bounds__(256) rope_pass_kernel(const T* __restrict__ src,
                                                          const long long* __restrict__ src_rows,
                                                          long long head_stride, T* __restrict__ dst,
                                                          const int* __restrict__ pos, int tokens, int heads,
                                                          int rotary_dim, float log2_theta, float inv_scale) {
  const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= (long long)tokens * heads) return;
  const int lane = threadIdx.x % 32;
  const int j = int(row / heads), h = int(row % heads);
  const T* x = src + (src_rows ? src_rows[j] + h * head_stride : row * HEAD_DIM);
  T* y = dst + row * HEAD_DIM;
  int done = 0;
  if (pos != nullptr && ROPE != 0) {
    const float p = float(pos[j]);
    for (int i = lane; i < rotary_dim / 2; i += 32) {
      int da, db;
      detail::rope_pair<ROPE>(i, rotary_dim, da, db);
      float sn, cs;
      detail::rope_sincos(p, detail::rope_freq(i, rotary_dim, log2_theta, inv_scale), &sn, &cs);
      detail::rotate_pair(x + da, x + db, y + da, y + db, cs, sn);
    }
    done = rotary_dim;
  }
  constexpr int V = vec16_size<T>();
  if (done % V == 0) {
    for (int i = done + lane * V; i < HEAD_DIM; i += 32 * V) {
      vec_t<T, V> t;
      t.load(x + i);
      t.store(y + i);
    }
  } else {
    for (int i = done + lane; i < HEAD_DIM; i += 32) y[i] = x[i];
  }
}

}  // namespace infernb
