// infernb: pieces shared by every kernel family.
//   - element types: float, half, __nv_bfloat16 with to_float / from_float
//   - vec_t<T, N>: N elements moved as one 16-byte (or smaller) load/store
//   - math constants
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace infernb {

constexpr float LOG2E = 1.4426950408889634f;   // log2(e)
constexpr float LN2 = 0.6931471805599453f;     // ln(2)
#define INFERNB_INF __int_as_float(0x7f800000)   // +inf (NVRTC has no <cmath> INFINITY)

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ half from_float<half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Raw storage of BYTES bytes with the widest natural alignment (16 B -> one LDG.128).
template <int BYTES> struct raw_vec;
template <> struct raw_vec<16> { using type = uint4; };
template <> struct raw_vec<8> { using type = uint2; };
template <> struct raw_vec<4> { using type = unsigned int; };

// N elements of T, loaded and stored as one vector access. N * sizeof(T) must be 4, 8 or 16 bytes.
template <typename T, int N>
struct vec_t {
  static constexpr int BYTES = N * int(sizeof(T));
  using raw_t = typename raw_vec<BYTES>::type;
  union { raw_t raw; T elt[N]; };

  __device__ __forceinline__ void load(const T* ptr) { raw = *reinterpret_cast<const raw_t*>(ptr); }
  __device__ __forceinline__ void store(T* ptr) const { *reinterpret_cast<raw_t*>(ptr) = raw; }
  // Read-only, not kept in L1 (streamed once).
  __device__ __forceinline__ void load_stream(const T* ptr) { raw = __ldg(reinterpret_cast<const raw_t*>(ptr)); }
};

// Records that cross from the planner to a kernel (work items, CTA records): an X-macro lists the fields (all int32),
// the struct is declared from it with INFERNB_RECORD_FIELD and its field names joined into a string with
// INFERNB_RECORD_NAME ("b,kv_head,...,"), which each generated unit compares with the NumPy dtype's names (str_eq):
// equal names in equal order mean equal offsets. (NVRTC has no offsetof.)
#define INFERNB_RECORD_FIELD(n) int n;
#define INFERNB_RECORD_NAME(n) #n ","
constexpr bool str_eq(const char* a, const char* b) { return *a == *b && (*a == 0 || str_eq(a + 1, b + 1)); }

// threadIdx.x read at the point of use: what is derived from it cannot be hoisted out of an enclosing loop (an
// epilogue's addresses computed once before a kernel's item loop stay live, or spilled, across its main loop).
__device__ __forceinline__ int tid_here() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
}

// A compile-time bool as a value (a generic lambda's argument instantiates one body per case: bool_c<true>{}).
template <bool B> struct bool_c { static constexpr bool value = B; };

// Elements per 16-byte vector.
template <typename T> constexpr int vec16_size() { return 16 / int(sizeof(T)); }

}  // namespace infernb
