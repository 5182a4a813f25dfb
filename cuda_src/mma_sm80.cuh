// Warp-level tensor-core and async-copy primitives for sm_80 and later, as inline PTX so that NVRTC
// needs no CUDA headers. Elements travel as raw 16-bit patterns; the element type is a tag (f16 / bf16)
// that only selects the PTX instruction.
#pragma once

namespace cf {

using u16 = unsigned short;
using u32 = unsigned int;
using i64 = long long;

struct f16 {};
struct bf16 {};

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

// ---- async global -> shared copies (16 bytes; src_bytes = 0 zero-fills, so padding rows/columns read as 0)
// Shared-memory operands are 32-bit shared-window addresses (smem_addr): one register each, where a generic
// pointer would hold two.
__device__ __forceinline__ void cp_async_16(u32 dst_smem, const void* src_gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst_smem), "l"(src_gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }

// ---- ldmatrix: four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// ---- D += A(16x16, row) * B(16x8, col), fp32 accumulate
template <typename Elem> struct Mma;
template <> struct Mma<f16> {
    static __device__ __forceinline__ void run(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    // Two floats -> one register of two 16-bit values; `lo` lands in the low half (lower column).
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        u32 r;
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
    static __device__ __forceinline__ float2 unpack(u32 v) {
        float2 f;
        asm("{ .reg .b16 l, h; mov.b32 {l, h}, %2; cvt.f32.f16 %0, l; cvt.f32.f16 %1, h; }\n"
            : "=f"(f.x), "=f"(f.y) : "r"(v));
        return f;
    }
};
template <> struct Mma<bf16> {
    static __device__ __forceinline__ void run(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        u32 r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
    static __device__ __forceinline__ float2 unpack(u32 v) {  // bf16 is the top half of an fp32
        return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
    }
};

// An m16n8 fp32 accumulator fragment scaled by `scale` into a row-major fp32 array whose element (0, 0) is at dst
// (rows row_stride apart): f(address, x, y) for each lane's pairs of adjacent columns in its two rows, skipping rows
// >= rows_valid and columns >= cols_valid (even).
template <typename F>
__device__ __forceinline__ void for_each_fragment_pair(float* dst, i64 row_stride, const float (&frag)[4], int row0,
                                                       int col0, int rows_valid, int cols_valid, float scale,
                                                       int lane, F f) {
    const int col = col0 + 2 * (lane % 4);
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + lane / 4 + 8 * r;
        if (row >= rows_valid || col >= cols_valid) continue;
        f(dst + row * row_stride + col, frag[2 * r] * scale, frag[2 * r + 1] * scale);
    }
}

// Adds the fragment with atomics, unordered. Hopper adds each pair with one vector reduction, older GPUs one at a
// time. (Swapping halves between lanes for 4-float reductions measured no faster on the H100.)
__device__ __forceinline__ void atomic_add_fragment(float* dst, i64 row_stride, const float (&frag)[4], int row0,
                                                    int col0, int rows_valid, int cols_valid, float scale,
                                                    int lane) {
    for_each_fragment_pair(dst, row_stride, frag, row0, col0, rows_valid, cols_valid, scale, lane,
                           [](float* at, float x, float y) {
#if __CUDA_ARCH__ >= 900
        asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" :: "l"(at), "f"(x), "f"(y) : "memory");
#else
        atomicAdd(at, x);
        atomicAdd(at + 1, y);
#endif
    });
}

// Stores the fragment (8-byte stores: dst and row_stride even).
__device__ __forceinline__ void store_fragment(float* dst, i64 row_stride, const float (&frag)[4], int row0, int col0,
                                               int rows_valid, int cols_valid, float scale, int lane) {
    for_each_fragment_pair(dst, row_stride, frag, row0, col0, rows_valid, cols_valid, scale, lane,
                           [](float* at, float x, float y) { *reinterpret_cast<float2*>(at) = make_float2(x, y); });
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Reductions over the four lanes (lane % 4) that share one row of an mma accumulator fragment.
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace cf
