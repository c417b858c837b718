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
#pragma once
#include <infernb/common.cuh>

namespace infernb {
namespace vx {  // Python semantics for generated code

__device__ __forceinline__ int floordiv(int a, int b) { int q = a / b; return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q; }
__device__ __forceinline__ int pymod(int a, int b) { int r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
__device__ __forceinline__ float pymodf(float a, float b) { return a - floorf(a / b) * b; }
__device__ __forceinline__ int ipow(int a, int e) { int r = 1; for (; e > 0; --e) r *= a; return r; }
__device__ __forceinline__ float sgn(float x) { return float((x > 0.f) - (x < 0.f)); }
__device__ __forceinline__ int sgn(int x) { return (x > 0) - (x < 0); }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

}  // namespace vx
}  // namespace infernb
