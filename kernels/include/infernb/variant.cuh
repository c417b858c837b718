// infernb: the attention-variant hook interface, and helpers generated variant code uses.
//
// A variant is a struct (generated from Python by infernb.variants, or written by hand) with:
//
//   static constexpr bool USE_SOFTMAX;        // false: sigmoid attention, out = sum_j sigmoid(s_ij) v_j
//   struct params_t { ... };                  // runtime parameters and captured tensors (pointer + strides),
//                                             // passed to kernels by pointer; changing them never recompiles
//   __device__ static float score_mod(const params_t& p, float score, int b, int h, int q_idx, int kv_idx);
//   __device__ static bool  mask_mod (const params_t& p, int b, int h, int q_idx, int kv_idx);
//
// Conventions (the same as infernb.reference): `score` is sm_scale * q.k in fp32; `b` the request, `h` the
// query head; `q_idx` the query's *position* in its request (kv_len - qo_len + i, the append convention) and
// `kv_idx` the key's position. mask_mod returning false removes the key for that query. Kernels call
// mask_mod only on partial blocks of a block-sparse structure (full blocks skip it), and score_mod on every
// visible logit, before the softmax (or sigmoid).
//
// Generated code computes integers in 64 bits and floats in fp32, with torch's semantics for the operations
// where C++ differs (floor division and remainder of negatives and of floats, integer powers with negative
// exponents, NaN in min/max/clamp). The helpers are plain C++ so the same struct also compiles on the host
// (infernb.variants.host_probe, the CPU twin of the GPU probe).
#pragma once
#ifdef __CUDACC_RTC__
#include <infernb/common.cuh>
#endif

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
// The host twin (infernb.variants.host_probe, g++): CUDA math functions the generated code may call that the C
// library lacks.
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
#endif

namespace infernb {
namespace vx {

typedef long long i64;

__device__ __forceinline__ float bits_to_float(unsigned u) { union { unsigned u; float f; } c; c.u = u; return c.f; }
__device__ __forceinline__ unsigned float_to_bits(float f) { union { unsigned u; float f; } c; c.f = f; return c.u; }
__device__ __forceinline__ float nanf_() { return bits_to_float(0x7fc00000u); }

// integers: Python/torch floor division and remainder
__device__ __forceinline__ i64 floordiv(i64 a, i64 b) { i64 q = a / b; return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q; }
__device__ __forceinline__ i64 pymod(i64 a, i64 b) { i64 r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
// torch's integer pow: negative exponents give 0 except for bases 1 and -1
__device__ __forceinline__ i64 ipow(i64 a, i64 e) {
  if (e < 0) return a == 1 ? 1 : (a == -1 ? ((e & 1) ? -1 : 1) : 0);
  i64 r = 1;
  for (; e > 0; --e) r *= a;
  return r;
}
// floats: torch's div_floor_floating and remainder (fmod based, not floor(a / b))
__device__ __forceinline__ float floordivf(float a, float b) {
  if (b == 0.f) return a / b;
  const float mod = fmodf(a, b);
  float div = (a - mod) / b;
  if (mod != 0.f && ((b < 0.f) != (mod < 0.f))) div -= 1.f;
  if (div == 0.f) return copysignf(0.f, a / b);
  float fl = floorf(div);
  if (div - fl > 0.5f) fl += 1.f;
  return fl;
}
__device__ __forceinline__ float pymodf(float a, float b) {
  float m = fmodf(a, b);
  if (m != 0.f && ((b < 0.f) != (m < 0.f))) m += b;
  return m;
}
// NaN-propagating min / max (torch.minimum / maximum / clamp)
__device__ __forceinline__ float fminn(float a, float b) { return (a != a || b != b) ? nanf_() : fminf(a, b); }
__device__ __forceinline__ float fmaxn(float a, float b) { return (a != a || b != b) ? nanf_() : fmaxf(a, b); }
__device__ __forceinline__ i64 imin(i64 a, i64 b) { return a < b ? a : b; }
__device__ __forceinline__ i64 imax(i64 a, i64 b) { return a > b ? a : b; }
__device__ __forceinline__ float sgn(float x) { return (x != x) ? x : float((x > 0.f) - (x < 0.f)); }
__device__ __forceinline__ i64 sgn(i64 x) { return (x > 0) - (x < 0); }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
// infernb.variants.approx_tanh: the SFU's tanh (relative error <= 2^-10.987, sm_75+); tanhf elsewhere (the host twin)
__device__ __forceinline__ float tanh_approx(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return tanhf(x);
#endif
}
// x.to(torch.bfloat16).float(): round to nearest even at bf16 precision
__device__ __forceinline__ float round_bf16(float x) {
  if (x != x) return x;
  unsigned u = float_to_bits(x);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bits_to_float(u & 0xffff0000u);
}

}  // namespace vx
}  // namespace infernb
