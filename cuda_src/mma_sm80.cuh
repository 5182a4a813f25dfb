// Warp-level tensor-core and async-copy primitives for sm_80 and later, as inline PTX so that NVRTC
// needs no CUDA headers. Elements travel as raw bit patterns; the element type is a tag (f16, bf16; tf32 and f32x3
// in mma_tf32.cuh) whose Mma<Elem> selects the PTX instructions and conversions.
#pragma once

namespace cf {

using u16 = unsigned short;
using u32 = unsigned int;

// A if CONDITION, else B (std::conditional, which NVRTC's headers do not bring).
template <bool CONDITION, typename A, typename B> struct Pick { using type = A; };
template <typename A, typename B> struct Pick<false, A, B> { using type = B; };
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
// Orders this thread's view of shared memory written through the generic proxy (plain stores, cp.async) before
// its later reads through the async proxy (wgmma, TMA).
__device__ __forceinline__ void async_proxy_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }

// Shared-memory reads by 32-bit shared-window address (as the kernels hold their tiles).
__device__ __forceinline__ u32 lds_u32(u32 addr) {
    u32 v;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
    return v;
}
__device__ __forceinline__ u32 lds_u16(u32 addr) {
    unsigned short v;
    asm volatile("ld.shared.b16 %0, [%1];\n" : "=h"(v) : "r"(addr));
    return v;
}

// ---- ldmatrix: four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// ---- Element types. Mma<Elem> is everything the warp products need of one: its storage type in memory, the k of
// one product (one k step is 32 bytes of each operand row whatever the element), how fragment registers as loaded
// become operands, the product itself, and the conversions between fp32 values and storage. This header has the
// 16-bit ones; mma_tf32.cuh the float32 ones.
template <typename Elem> struct Mma;

// The parts the 16-bit elements share: registers are operands as loaded, and D += A(16x16, row) * B(16x8, col)
// with fp32 accumulation is one instruction (Mma<Elem>::run on raw registers).
template <typename Elem>
struct Mma16 {
    using Storage = u16;
    static constexpr int K_STEP = 16;
    static constexpr bool SUM_PER_TILE = false;  // see mma_tf32.cuh
    static constexpr bool IS_BF16 = false;        // which wgmma instruction (wgmma_ops.cuh)
    struct Operand { u32 r[4]; };
    static __device__ __forceinline__ Operand operand(const u32 (&r)[4]) { return {{r[0], r[1], r[2], r[3]}}; }
    // A computed operand (P, dS) before it is packed: 16-bit packing rounds it.
    static __device__ __forceinline__ float operand_value(float x) { return x; }
    // d += a b, b being n-tile `half` (0 or 1) of a B pair (load_b_pair_*)
    static __device__ __forceinline__ void run(float (&d)[4], const Operand& a, const Operand& b, int half) {
        Mma<Elem>::run(d, a.r, b.r[2 * half], b.r[2 * half + 1]);
    }
    static __device__ __forceinline__ void store_pair(Storage* at, float x, float y) {
        *reinterpret_cast<u32*>(at) = Mma<Elem>::pack(x, y);
    }
    // Eight consecutive elements at a 16-byte aligned address, as floats, and back.
    static __device__ __forceinline__ void load8(const Storage* at, float (&x)[8]) {
        const uint4 v = *reinterpret_cast<const uint4*>(at);
        const u32 w[4] = {v.x, v.y, v.z, v.w};
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = Mma<Elem>::unpack(w[i]);
            x[2 * i] = f.x, x[2 * i + 1] = f.y;
        }
    }
    static __device__ __forceinline__ void store8(Storage* at, float4 lo, float4 hi) {
        *reinterpret_cast<uint4*>(at) = make_uint4(Mma<Elem>::pack(lo.x, lo.y), Mma<Elem>::pack(lo.z, lo.w),
                                                   Mma<Elem>::pack(hi.x, hi.y), Mma<Elem>::pack(hi.z, hi.w));
    }
};

template <> struct Mma<f16> : Mma16<f16> {
    using Mma16<f16>::run;
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
template <> struct Mma<bf16> : Mma16<bf16> {
    static constexpr bool IS_BF16 = true;
    using Mma16<bf16>::run;
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

// A tensor's elements from a params pointer (params.cuh keeps them untyped: one struct serves every element type).
template <typename Elem>
__device__ __forceinline__ const typename Mma<Elem>::Storage* elems(const void* p) {
    return static_cast<const typename Mma<Elem>::Storage*>(p);
}
template <typename Elem>
__device__ __forceinline__ typename Mma<Elem>::Storage* elems(void* p) {
    return static_cast<typename Mma<Elem>::Storage*>(p);
}

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
