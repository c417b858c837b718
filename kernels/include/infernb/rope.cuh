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

// Element indices of RoPE pair p (ROPE 1: (p, p + rd/2), ROPE 2: (2p, 2p + 1)).
template <int ROPE>
__device__ __forceinline__ void rope_pair(int p, int rotary_dim, int& da, int& db) {
  if (ROPE == 2) { da = 2 * p; db = 2 * p + 1; }
  else { da = p; db = p + rotary_dim / 2; }
}

// Rotate rows [row0, row0 + 16) of a swizzled K tile (positions kpos0 + j; rows j >= valid stay as they are).
// Fast path (rotary_dim / pairs-per-chunk divides 32): a lane owns one 16-byte chunk of the pairs' first elements
// (and, half-rotated, the matching chunk of the second elements) and walks consecutive rows, so each access is
// one 16-byte load or store and each angle moves to the next token by one complex multiply. Otherwise, a lane
// per pair and element-wise accesses.
template <typename T, int ROPE, int CH>
__device__ __forceinline__ void rope_rotate_rows(T* s_k, int row0, int kpos0, int valid, int rotary_dim,
                                                 float log2_theta, float inv_scale, int lane) {
  constexpr int EPC = ROPE == 2 ? 4 : 8;                 // pairs whose first element lies in one 16-byte chunk
  const int nc = rotary_dim / (2 * EPC);                 // such chunks (half: first half of rotary_dim)
  if (nc > 0 && rotary_dim % (2 * EPC) == 0 && 32 % nc == 0) {
    const int c = lane % nc, grp = lane / nc;
    const int rows = nc >= 2 ? nc / 2 : 1;               // 16 rows * nc chunks over 32 lanes
    const int r0 = grp * rows;
    if (r0 >= 16) return;
    float cs[EPC], sn[EPC], cf[EPC], sf[EPC];
#pragma unroll
    for (int e = 0; e < EPC; ++e) {
      const float f = rope_freq(c * EPC + e, rotary_dim, log2_theta, inv_scale);
      rope_sincos(float(kpos0 + r0), f, &sn[e], &cs[e]);
      rope_sincos(1.f, f, &sf[e], &cf[e]);
    }
    for (int i = 0; i < rows; ++i) {
      const int r = r0 + i;
      if (r < valid) {
        T* pa = s_k + mma::swizzle<CH>(row0 + r, c) * 8;
        vec_t<T, 8> a;
        a.load(pa);
        if (ROPE == 2) {                                 // pairs (2e, 2e + 1) inside the chunk
#pragma unroll
          for (int e = 0; e < EPC; ++e) {
            const float x = to_float(a.elt[2 * e]), y = to_float(a.elt[2 * e + 1]);
            a.elt[2 * e] = from_float<T>(x * cs[e] - y * sn[e]);
            a.elt[2 * e + 1] = from_float<T>(y * cs[e] + x * sn[e]);
          }
        } else {                                         // pairs (p, p + rotary_dim / 2): chunk c and chunk c + nc
          T* pb = s_k + mma::swizzle<CH>(row0 + r, c + nc) * 8;
          vec_t<T, 8> b;
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
#pragma unroll
      for (int e = 0; e < EPC; ++e) {                   // next token: angle + f
        const float c2 = cs[e] * cf[e] - sn[e] * sf[e];
        sn[e] = sn[e] * cf[e] + cs[e] * sf[e];
        cs[e] = c2;
      }
    }
    return;
  }
  const int np = rotary_dim / 2;
  for (int p = lane; p < np; p += 32) {
    const float f = rope_freq(p, rotary_dim, log2_theta, inv_scale);
    float sn, cs, sf, cf;
    rope_sincos(float(kpos0), f, &sn, &cs);
    rope_sincos(1.f, f, &sf, &cf);
    int da, db;
    rope_pair<ROPE>(p, rotary_dim, da, db);
    for (int j = 0; j < 16; ++j) {
      if (j < valid) {
        T* pa = s_k + mma::swizzle_elem<CH>(row0 + j, da);
        T* pb = s_k + mma::swizzle_elem<CH>(row0 + j, db);
        const float a = to_float(*pa), b = to_float(*pb);
        *pa = from_float<T>(a * cs - b * sn);
        *pb = from_float<T>(b * cs + a * sn);
      }
      const float c2 = cs * cf - sn * sf;
      sn = sn * cf + cs * sf;
      cs = c2;
    }
  }
}

}  // namespace detail

}  // namespace infernb
