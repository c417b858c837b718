// infernb: thin PTX wrappers for Ampere/Hopper warp-level tensor-core attention (sm_80+).
//   - cp.async 16-byte global -> shared copies (zero-fill when the source is out of range), groups, waits
//   - ldmatrix x4 (plain and transposed) from shared memory
//   - mma.sync m16n8k16 with fp32 accumulation, for half and bf16 operands
//   - an XOR swizzle for [rows][CHUNKS x 16 B] tiles so ldmatrix and cp.async are bank-conflict free
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), g = lane / 4, t = lane % 4:
//   A 16x16 (row): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8  (col): b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C 16x8  (f32): c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
#pragma once
#include <infernb/common.cuh>

namespace infernb {
namespace mma {

__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// 16 bytes from global `src` to shared `dst`; when !valid nothing is read and the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
// 4 bytes from global `src` to shared `dst` (through L1); zero-filled when !valid.
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, bool valid) {
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// every cp.async of this thread landed, committed in groups or not
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// d += a * b for one 16x8x16 tile.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<half>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d = a * b (a zero accumulator: the first k-step of a product, no register clears before it).
template <typename T>
__device__ __forceinline__ void mma16816_zero(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma16816_zero<__nv_bfloat16>(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                                             unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%10, %10, %10, %10};\n"
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f));
}
template <>
__device__ __forceinline__ void mma16816_zero<half>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%10, %10, %10, %10};\n"
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.f));
}

// Value of lane (laneid & KEEP) | SRC (KEEP: low lane bits kept, SRC a compile-time lane with those bits zero):
// shfl.sync.idx with segment mask KEEP, so the source lane is an immediate, not a register per SRC.
template <int KEEP>
__device__ __forceinline__ unsigned long long shfl_rows(unsigned long long v, int src) {
  unsigned lo = unsigned(v), hi = unsigned(v >> 32);
  asm volatile("shfl.sync.idx.b32 %0, %0, %2, %3, 0xffffffff;\n"
               "shfl.sync.idx.b32 %1, %1, %2, %3, 0xffffffff;\n"
               : "+r"(lo), "+r"(hi) : "r"(src), "n"((KEEP << 8) | 0x1f));
  return (unsigned long long)hi << 32 | lo;
}

// Two floats -> one 32-bit register of two T (lower half = x).
template <typename T> __device__ __forceinline__ unsigned pack2(float x, float y);
template <> __device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float x, float y) {
  __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
  return *reinterpret_cast<unsigned*>(&v);
}
template <> __device__ __forceinline__ unsigned pack2<half>(float x, float y) {
  half2 v = __floats2half2_rn(x, y);
  return *reinterpret_cast<unsigned*>(&v);
}

// Offset, in 16-byte chunks, of chunk `chunk` of row `row` in a tile of CHUNKS chunks per row (CHUNKS >= 8).
// The XOR with row % 8 puts the 8 rows an ldmatrix reads (same logical chunk) in 8 different bank groups.
template <int CHUNKS>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  static_assert(CHUNKS >= 8 && CHUNKS % 8 == 0, "swizzled rows need a multiple of 8 chunks (128 bytes)");
  return row * CHUNKS + (chunk ^ (row & 7));
}
// The ldmatrix address of 16-byte chunk 2 * kk + b (b = 0, 1) of row `row` in such a tile starting at `base`:
//   base + swizzle(row, 2 kk + b) * 16 == (base + swizzle(row, b) * 16) ^ (32 kk)
// when base is a multiple of the row pitch CHUNKS * 16: 2 kk + b == 2 kk ^ b, so the XOR with row % 8 splits
// into (b ^ row % 8) and 2 kk, and (2 kk ^ x) * 16 < CHUNKS * 16 leaves row * CHUNKS * 16 and base untouched.
// A lane computes the parenthesis once; each k-step's address is then one XOR with an immediate.
__device__ __forceinline__ unsigned kstep_addr(unsigned lane_base, int kk) { return lane_base ^ unsigned(32 * kk); }

// The same addresses with immediate offsets: for the lane's chunk x = b ^ row % 8 < 8, (x ^ 2 kk) == (x ^ 2 (kk % 4)) +
// 8 (kk / 4), so k-step kk is at (lane_base ^ 32 (kk % 4)) + 128 (kk / 4). A lane keeps the four XORs of an offset
// inside a tile (the tile's base a multiple of 128 bytes, so the XOR never reaches it); each k-step's address is then
// base + offset[kk % 4] + an immediate (16-row and k-step steps fold into the ldmatrix's offset field), and a tile
// whose base moves (pipeline stages) costs one add per k-step pattern instead of one XOR per ldmatrix.
struct kstep_lanes {
  unsigned x[4];
  __device__ __forceinline__ explicit kstep_lanes(unsigned lane_off) {
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = lane_off ^ (32u * i);
  }
  // the four offsets as loaded from a lane table (prefill.cuh's)
  __device__ __forceinline__ explicit kstep_lanes(uint4 v) { x[0] = v.x; x[1] = v.y; x[2] = v.z; x[3] = v.w; }
  // the address of k-step kk (a compile-time constant after unrolling) of the tile at `base`
  __device__ __forceinline__ unsigned operator()(unsigned base, int kk) const { return base + x[kk & 3] + 128u * (kk >> 2); }
};

// 16 bytes of shared memory at `addr` (a lane table's entry), read where it is written in the program: a volatile
// load is neither hoisted out of the loop that reads it nor merged with another read, so the four registers it fills
// are live only from here to their last use.
__device__ __forceinline__ uint4 lds128_here(unsigned addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

// Element offset of element `col` of row `row` in such a tile of 2-byte elements (8 per chunk).
template <int CHUNKS>
__device__ __forceinline__ int swizzle_elem(int row, int col) { return swizzle<CHUNKS>(row, col >> 3) * 8 + (col & 7); }

}  // namespace mma
}  // namespace infernb
