// infernb: a small Hopper (sm_90a) vocabulary in inline PTX -- the parts a warp-specialized wgmma + TMA kernel is
// made of, without CUTLASS / CuTe (NVRTC compiles them in well under a second):
//   - mbarrier:  init, arrive, arrive with an expected transaction count, wait on a phase's parity
//   - TMA:       2-D tile loads (cp.async.bulk.tensor) described by a host-built CUtensorMap (tensor_map_t, passed
//                as a __grid_constant__ kernel parameter), completing on an mbarrier
//   - wgmma:     shared-memory matrix descriptors of 128-byte-swizzled K-major / MN-major tiles, m64n{64,128,256}k16
//                bf16 / f16 -> fp32 (A from shared memory or registers), fence / commit / wait
//   - setmaxnreg: registers moved from a producer warpgroup to the consumers
// Everything here is sm_90a-only: a unit that includes it compiles for other archs only if it never calls these
// (hopper_available() says which).
//
// Shared-memory tiles of the wgmma operands (K-major, the layout TMA writes with CU_TENSOR_MAP_SWIZZLE_128B): rows
// of 64 bf16 (128 bytes), the 16-byte chunks of row r XOR-swizzled by r % 8, 8-row atoms of 1024 bytes; a tile's
// base is 1024-byte aligned. Its descriptor: start address / 16 in bits [0, 14), leading-dimension byte offset / 16
// in [16, 30) (unused for swizzled K-major operands: 1), stride-dimension byte offset / 16 in [32, 46) (1024: from
// one 8-row atom to the next), swizzle mode in [62, 64) (1 = 128 bytes). K-step k (16 elements, 32 bytes) of such
// a tile is the descriptor of base + 32 k: the hardware applies the swizzle to the whole address.
#pragma once
#include <infernb/common.cuh>
#include <infernb/mma.cuh>

namespace infernb {
namespace sm90 {

constexpr bool hopper_available() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return true;
#else
  return false;
#endif
}

// A CUtensorMap: 128 opaque bytes from cuTensorMapEncodeTiled on the host (infernb.ops.gemm.tensor_map_2d).
struct __align__(64) tensor_map_t { unsigned long long v[16]; };

using mma::smem_addr;   // a shared-memory pointer as the 32-bit address PTX takes (mma.cuh)

// ------------------------------------------------------------------------------------------------ mbarrier
__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// the barriers' initialization visible to the async proxy (TMA) before any use (then a __syncthreads)
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// arrive and expect `bytes` more of asynchronous transactions (TMA loads completing on this barrier) in the phase
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
// true once the phase of parity `parity` has completed (the barrier's phases alternate 0, 1, 0, ...)
__device__ __forceinline__ bool mbar_try_wait(unsigned long long* bar, unsigned parity) {
  unsigned done;
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "  selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
  return done != 0;
}
// arrive on `bar` once every cp.async this thread has issued so far has landed (asynchronously: the thread goes on);
// .noinc: the arrival is one of the count the barrier was initialized with
__device__ __forceinline__ void cp_async_mbar_arrive_noinc(unsigned long long* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// ------------------------------------------------------------------------------------------------ TMA
// Load the box at (c0, c1) (c0 the innermost coordinate, in elements) of the tensor `map` describes into shared
// memory at `dst` (1024-byte aligned for 128-byte swizzle); the bytes complete on `bar` (mbar_arrive_expect_tx).
__device__ __forceinline__ void tma_load_2d(void* dst, const tensor_map_t* map, unsigned long long* bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_addr(dst)),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(smem_addr(bar))
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_descriptor(const tensor_map_t* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(map)) : "memory");
}

// ------------------------------------------------------------------------------------------------ wgmma
// The descriptor of a 128-byte-swizzled tile at shared address `addr`: 8-row atoms of 1024 bytes (stride-dimension
// offset), swizzle mode 1 (128 bytes), leading-dimension offset `lbo` bytes. A K-major tile (see the top of this
// file) leaves lbo at 16 (unused). An MN-major tile (a B operand whose N elements are contiguous: V in P V, rows of
// keys holding 64 of the N columns each; used with imm-trans-b = 1) has its next 64 columns lbo bytes further (a
// whole 64-column slab of the tile); its k-step k (16 keys) is the descriptor of base + 2048 k.
__device__ __forceinline__ unsigned long long desc_sw128(unsigned addr, unsigned lbo = 16) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16) |
         ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// wait until at most N committed wgmma groups of this warpgroup are in flight
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// keep the compiler from moving accesses to accumulator registers across a fence / wait
template <int R>
__device__ __forceinline__ void fence_operands(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (+)= A B^T for a 64 x 256 x 16 step of one warpgroup: A (64 x 16) and B (256 x 16) K-major bf16 in shared memory
// (descriptors), d 64 x 256 fp32 in registers: thread t of the warpgroup (warp w = t / 32, lane l) holds rows
// 16 w + l / 4 (+ 8) and columns 8 j + 2 (l % 4) (+ 1): d[4 j + 0, 1] row 16 w + l / 4, d[4 j + 2, 3] 8 rows lower.
// accumulate = false: d = A B^T (the accumulators' old values are ignored).
__device__ __forceinline__ void wgmma_m64n256k16_bf16(float (&d)[128], unsigned long long desc_a,
                                                      unsigned long long desc_b, bool accumulate) {
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %130, 0;\n"
      "  wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "%128, %129, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]),
        "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
        "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]),
        "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]),
        "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));
}

// generic-proxy writes to shared memory (st.shared, cp.async) visible to the async proxy (wgmma operands, TMA)
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// a named barrier of `count` threads (whole warps); id 0 is __syncthreads'
__device__ __forceinline__ void named_barrier_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// arrive on a named barrier without waiting (the producer side of a barrier another group syncs on)
__device__ __forceinline__ void named_barrier_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// The wgmma forms the kernels use, m64nNk16 for N = 64, 80, 128, each with A from shared memory (_ss: d (+)= A B^T, A
// and B K-major, descriptors) and from registers (_rs: d += A B, A a warp's 16 x 16 slice as an mma.m16n8k16 A
// fragment -- the rows' P --, B MN-major: desc_sw128 with the slab stride as lbo, V with its head dim contiguous).
// d holds N / 2 fp32 a thread in m64n256k16's layout (thread t: rows 16 w + l / 4 (+ 8), columns 8 j + 2 (l % 4)
// (+ 1), d[4 j + 0, 1] and d[4 j + 2, 3]): a warp's 16 rows as N / 8 mma.m16n8 accumulator tiles. T:
// __nv_bfloat16 or half.
#define INFERNB_WGMMA_DECLARE(N, R)                                                                                    \
  template <typename T>                                                                                                \
  __device__ __forceinline__ void wgmma_m64n##N##k16_ss(float (&d)[R], unsigned long long desc_a,                      \
                                                        unsigned long long desc_b, bool accumulate);                   \
  template <typename T>                                                                                                \
  __device__ __forceinline__ void wgmma_m64n##N##k16_rs(float (&d)[R], const unsigned (&a)[4], unsigned long long desc_b);
INFERNB_WGMMA_DECLARE(64, 32)
INFERNB_WGMMA_DECLARE(80, 40)
INFERNB_WGMMA_DECLARE(128, 64)
#undef INFERNB_WGMMA_DECLARE
// the accumulators' asm operand lists (each the previous one and more) and their placeholders %0 .. %(R - 1)
#define INFERNB_WGMMA_D32                                                                                              \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                      \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),                \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),              \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define INFERNB_WGMMA_D40                                                                                              \
  INFERNB_WGMMA_D32,                                                                                                   \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])
#define INFERNB_WGMMA_D64                                                                                              \
  INFERNB_WGMMA_D40,                                                                                                   \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),              \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),              \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define INFERNB_WGMMA_R32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define INFERNB_WGMMA_R40 INFERNB_WGMMA_R32 ", %32, %33, %34, %35, %36, %37, %38, %39"
#define INFERNB_WGMMA_R64 INFERNB_WGMMA_R40 ", %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, "           \
  "%52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
// both forms of an m64nNk16 wgmma for one element type (TY its PTX name, CTY its C type): R = N / 2 accumulators
// (REGS their placeholders in braces, OPS their operand list), I0 .. I5 the placeholders after them (R .. R + 5)
#define INFERNB_WGMMA_FORMS(N, R, REGS, OPS, I0, I1, I2, I3, I4, I5, TY, CTY)                                          \
  template <>                                                                                                          \
  __device__ __forceinline__ void wgmma_m64n##N##k16_ss<CTY>(float (&d)[R], unsigned long long desc_a,                 \
                                                             unsigned long long desc_b, bool accumulate) {             \
    asm volatile(                                                                                                      \
        "{\n"                                                                                                          \
        "  .reg .pred p;\n"                                                                                            \
        "  setp.ne.b32 p, %" #I2 ", 0;\n"                                                                              \
        "  wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " "                                              \
        REGS ", "                                                                                                      \
        "%" #I0 ", %" #I1 ", p, 1, 1, 0, 0;\n"                                                                         \
        "}\n"                                                                                                          \
        : OPS                                                                                                          \
        : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));                                                             \
  }                                                                                                                    \
  template <>                                                                                                          \
  __device__ __forceinline__ void wgmma_m64n##N##k16_rs<CTY>(float (&d)[R], const unsigned (&a)[4],                    \
                                                             unsigned long long desc_b) {                              \
    asm volatile(                                                                                                      \
        "{\n"                                                                                                          \
        "  .reg .pred p;\n"                                                                                            \
        "  setp.ne.b32 p, %" #I5 ", 0;\n"                                                                              \
        "  wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " "                                              \
        REGS ", "                                                                                                      \
        "{%" #I0 ", %" #I1 ", %" #I2 ", %" #I3 "}, %" #I4 ", p, 1, 1, 1;\n"                                            \
        "}\n"                                                                                                          \
        : OPS                                                                                                          \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));                                            \
  }
#define INFERNB_WGMMA_BRACED(R) "{" INFERNB_WGMMA_R##R "}"
// both element types of one N: R accumulators, I0 .. I5 the placeholders after them
#define INFERNB_WGMMA_TYPES(N, R, I0, I1, I2, I3, I4, I5)                                                              \
  INFERNB_WGMMA_FORMS(N, R, INFERNB_WGMMA_BRACED(R), INFERNB_WGMMA_D##R, I0, I1, I2, I3, I4, I5, "bf16",              \
                      __nv_bfloat16)                                                                                   \
  INFERNB_WGMMA_FORMS(N, R, INFERNB_WGMMA_BRACED(R), INFERNB_WGMMA_D##R, I0, I1, I2, I3, I4, I5, "f16", half)
INFERNB_WGMMA_TYPES(64, 32, 32, 33, 34, 35, 36, 37)
INFERNB_WGMMA_TYPES(80, 40, 40, 41, 42, 43, 44, 45)
INFERNB_WGMMA_TYPES(128, 64, 64, 65, 66, 67, 68, 69)
#undef INFERNB_WGMMA_TYPES
#undef INFERNB_WGMMA_BRACED
#undef INFERNB_WGMMA_FORMS
#undef INFERNB_WGMMA_D32
#undef INFERNB_WGMMA_D40
#undef INFERNB_WGMMA_D64
#undef INFERNB_WGMMA_R32
#undef INFERNB_WGMMA_R40
#undef INFERNB_WGMMA_R64

// m64nNk16 for N = 64, 80 (S = Q K^T only) or 128 (the kernels' block sizes): the forms above chosen at compile time
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], unsigned long long desc_a, unsigned long long desc_b,
                                         bool accumulate) {
  static_assert(N == 64 || N == 80 || N == 128, "wgmma_ss: N is 64, 80 or 128");
  if constexpr (N == 64) wgmma_m64n64k16_ss<T>(d, desc_a, desc_b, accumulate);
  else if constexpr (N == 80) wgmma_m64n80k16_ss<T>(d, desc_a, desc_b, accumulate);
  else wgmma_m64n128k16_ss<T>(d, desc_a, desc_b, accumulate);
}
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const unsigned (&a)[4], unsigned long long desc_b) {
  static_assert(N == 64 || N == 128, "wgmma_rs: N is 64 or 128");
  if constexpr (N == 64) wgmma_m64n64k16_rs<T>(d, a, desc_b);
  else wgmma_m64n128k16_rs<T>(d, a, desc_b);
}

// ------------------------------------------------------------------------------------------------ registers
// Move this warpgroup's register budget (per thread) down / up; the kernel launches with the budget its launch
// bounds give, and the warpgroups of a CTA together must stay within the SM's 64 K registers.
template <int R>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}

}  // namespace sm90
}  // namespace infernb
