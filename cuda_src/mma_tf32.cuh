// Float32 elements on TF32 tensor cores (m16n8k8, sm_80 and later). A TF32 value keeps fp32's exponent and 10 of
// its 23 mantissa bits. Two element types differ only in how a fragment becomes an operand:
//   tf32:  each value rounded to TF32 once, one product: about 1e-3 relative error (precision="tf32");
//   f32x3: each value split into hi = tf32(x) and lo = tf32(x - hi), three products hi*hi + hi*lo + lo*hi (lo*lo
//          is below 2^-22): a third of the speed (precision="highest"). Each operand is then held to 2^-22 rather
//          than fp32's 2^-24, and the tensor cores add products into the fp32 accumulator less exactly than FFMA
//          (truncating): measured on the H100, a k8..k1024 product errs 2.4e-7..1.4e-6 of sum|a||b| where cuBLAS
//          fp32 errs 0.4..1.5e-7 (docs/performance.md); a separate accumulator for the small terms gains up to 3x
//          (run_split, for the products over the head dim; those over a sequence sum each tile fresh).
// Fragments of one k step (8 floats = 32 bytes of a row) load exactly as a 16-bit k16 step does (smem_tile.cuh);
// A is 4 registers (16x8) and a B pair 4 (two 8x8 n-tiles), as for the 16-bit products.
#pragma once
#include "mma_sm80.cuh"
#include "smem_tile.cuh"

namespace cf {

struct tf32 {};
struct f32x3 {};

__device__ __forceinline__ u32 to_tf32(float x) {
    u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

// To nearest, ties to even: what a bulk copy through a TFLOAT32 tensor map does (H100,
// docs/measurements/2026-11-30-tma-tf32-rounding-probe.py), for the staged inputs, which must match it bit for bit.
// Integer arithmetic, since cvt.rn.tf32.f32 is sm_90's only; a NaN passes as it is (the carry would reach the sign).
__device__ __forceinline__ u32 to_tf32_even(float x) {
    const u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return u;
    return (u + 0xfffu + ((u >> 13) & 1u)) & 0xffffe000u;
}

// Whether an element type's products take operands rounded before them (TF32: the tensor cores truncate), and the
// rounding of a tile that landed unrounded in shared memory: in place, 16-byte chunks over THREADS threads (padding
// chunks too: integer arithmetic, harmless on any bits). The caller orders it after the copies landed and before
// any read, with barriers.
template <typename Elem> inline constexpr bool ROUNDS_OPERANDS = false;
template <> inline constexpr bool ROUNDS_OPERANDS<tf32> = true;
// Whether products that read shared operands as they are (wgmma) take them split (SplitTile): f32x3's three passes.
template <typename Elem> inline constexpr bool SPLITS_OPERANDS = false;
template <> inline constexpr bool SPLITS_OPERANDS<f32x3> = true;

template <typename Tile, int THREADS>
__device__ __forceinline__ void round_tile_to_tf32(float* tile) {
    uint4* chunks = reinterpret_cast<uint4*>(tile);
    for (int i = threadIdx.x; i < Tile::BYTES / 16; i += THREADS) {
        uint4 c = chunks[i];
        c = make_uint4(to_tf32_even(__uint_as_float(c.x)), to_tf32_even(__uint_as_float(c.y)),
                       to_tf32_even(__uint_as_float(c.z)), to_tf32_even(__uint_as_float(c.w)));
        chunks[i] = c;
    }
}

// x = hi + lo as f32x3 splits it: hi = tf32(x), lo = tf32(x - hi) (hi's 13 low bits are 0, measured on the H100, so
// hi is exact as a float and x - hi is exact too).
__device__ __forceinline__ void split_tf32(float x, u32& hi, u32& lo) {
    hi = to_tf32(x);
    lo = to_tf32(x - __uint_as_float(hi));
}

// The same split for values stored split (SplitTile), in three instructions rather than nine: hi rounded to nearest,
// ties away, by an integer add to the magnitude's 13 low bits (cvt.rna's rounding without its guard for non-finite
// values), and lo = x - hi left for the tensor cores to truncate (|lo| <= 2^-12 |x|, so that errs by at most
// 2^-23 |x|). NaN and inf give a non-finite hi + lo (as they would any product), and so does |x| within 2^-12 of
// FLT_MAX.
__device__ __forceinline__ void split_tf32_stored(float x, u32& hi, u32& lo) {
    hi = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
    lo = __float_as_uint(x - __uint_as_float(hi));
}

// A tile stored in two parts, for f32x3 products that read their operands from shared memory as they are
// (warpgroup products, wgmma.cuh): hi = tf32(x) where the tile is, lo = x - hi LO bytes after it, laid out alike.
// The split is made once, where a value lands or is written (split_copied_tile, stage_accum_in_smem_with), by
// split_tf32_stored, rather than at each fragment load (Mma<f32x3>::operand). BYTES is both parts'.
template <typename Tile>
struct SplitTile : Tile {
    static constexpr bool SPLIT = true;
    static constexpr int LO = Tile::BYTES;
    static constexpr int BYTES = 2 * Tile::BYTES;
};

// One 16-byte chunk of a SplitTile's values, split where it is stored: hi at `at`, lo LO bytes after it.
template <typename Tile>
__device__ __forceinline__ void store_split_chunk(float* at, float4 x) {
    uint4 h, l;
    split_tf32_stored(x.x, h.x, l.x), split_tf32_stored(x.y, h.y, l.y);
    split_tf32_stored(x.z, h.z, l.z), split_tf32_stored(x.w, h.w, l.w);
    *reinterpret_cast<uint4*>(at) = h;
    *reinterpret_cast<uint4*>(at + Tile::LO / 4) = l;
}

// Splits a SplitTile whose hi part holds the values as load_tile_async<Tile, THREADS> landed them (fp32): hi in
// place, lo beside it, each thread the 16-byte chunks it copied itself, so that its own wait for its copies is all
// the ordering it needs before (the products that read the tile still wait for a barrier).
// UNROLL: passes unrolled (a producer's few registers: two).
template <typename Tile, int THREADS, int UNROLL = TileCopy<Tile, THREADS>::PASSES>
__device__ __forceinline__ void split_copied_tile(float* tile) {
    static_assert(Tile::SPLIT, "a tile with a lo part");
    using C = TileCopy<Tile, THREADS>;
    if (!C::active()) return;
    const int col = C::col();
    #pragma unroll UNROLL
    for (int pass = 0, r = C::row(); pass < C::PASSES; ++pass, r += C::ROWS_PER_PASS) {
        if (C::row_in_tile(r)) {
            // (the body of store_split_chunk, written out: called, it moved the forward's code at head dim 64 and
            // cost it 1%, twenty-eighth session)
            float* at = tile + Tile::offset(r, col);
            const float4 x = *reinterpret_cast<const float4*>(at);
            uint4 h, l;
            split_tf32_stored(x.x, h.x, l.x), split_tf32_stored(x.y, h.y, l.y);
            split_tf32_stored(x.z, h.z, l.z), split_tf32_stored(x.w, h.w, l.w);
            *reinterpret_cast<uint4*>(at) = h;
            *reinterpret_cast<uint4*>(at + Tile::LO / 4) = l;
        }
    }
}

// The 16-byte chunks of a SplitTile that a thread copies (TileCopy's share), held in its registers between a load
// from global memory and a split store into the tile: what load_tile_async and split_copied_tile do, without the
// copy's write into shared memory and the read back (a producer with registers to spare: the float32 forward at
// head dim 128, flash_fwd.cu). Rows >= rows_valid and columns >= head_dim are zeros, as load_tile_async fills them.
template <typename Tile, int THREADS>
struct HeldChunks {
    using C = TileCopy<Tile, THREADS>;
    float4 v[C::PASSES];

    __device__ __forceinline__ void load(const float* gmem, i64 row_stride, int rows_valid, int head_dim) {
        const int col = C::col(), r0 = C::row();
        const bool col_ok = C::active() && col < head_dim;
        #pragma unroll
        for (int pass = 0; pass < C::PASSES; ++pass) {
            const int r = r0 + pass * C::ROWS_PER_PASS;
            v[pass] = col_ok && C::row_in_tile(r) && r < rows_valid
                          ? __ldg(reinterpret_cast<const float4*>(gmem + r * row_stride + col))
                          : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    __device__ __forceinline__ void store_split(float* tile) const {
        static_assert(Tile::SPLIT, "a tile with a lo part");
        if (!C::active()) return;
        const int col = C::col(), r0 = C::row();
        #pragma unroll
        for (int pass = 0; pass < C::PASSES; ++pass)
            if (C::row_in_tile(r0 + pass * C::ROWS_PER_PASS))
                store_split_chunk<Tile>(tile + Tile::offset(r0 + pass * C::ROWS_PER_PASS, col), v[pass]);
    }
};

// D += A(16x8, row) * B(8x8, col), operands already TF32.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The parts the float32 elements share: storage and conversions (Mma16's counterpart).
struct Mma32 {
    using Storage = float;
    static constexpr int K_STEP = 8;
    static constexpr bool SUM_PER_TILE = false;
    // A computed operand (P, dS) as the products take it: f32x3 splits it as it loads, so it stays a float.
    static __device__ __forceinline__ float operand_value(float x) { return x; }
    static __device__ __forceinline__ void store_pair(Storage* at, float x, float y) {
        *reinterpret_cast<float2*>(at) = make_float2(x, y);
    }
    static __device__ __forceinline__ void load8(const Storage* at, float (&x)[8]) {
        const float4 lo = reinterpret_cast<const float4*>(at)[0], hi = reinterpret_cast<const float4*>(at)[1];
        x[0] = lo.x, x[1] = lo.y, x[2] = lo.z, x[3] = lo.w, x[4] = hi.x, x[5] = hi.y, x[6] = hi.z, x[7] = hi.w;
    }
    static __device__ __forceinline__ void store8(Storage* at, float4 lo, float4 hi) {
        reinterpret_cast<float4*>(at)[0] = lo;
        reinterpret_cast<float4*>(at)[1] = hi;
    }
};

// One TF32 pass. The tensor cores read a float's top 19 bits as they are (they truncate), so every operand reaches
// them rounded already, none at a fragment load: the inputs are staged rounded before the kernels (Q, K, V, dO:
// cupyflash/_launch.py Tf32Staging), and P and dS are rounded where they are computed (operand_value:
// accum_to_a_frags, stage_operands_in_smem). Rounding at each fragment load cost two instructions a value, some
// values loaded by every warp and for two products: four to five instructions a product in the backward kernels
// (sm_90 SASS, head dim 128), more than anything else they issue.
template <> struct Mma<tf32> : Mma32 {
    struct Operand { u32 r[4]; };
    static __device__ __forceinline__ float operand_value(float x) { return __uint_as_float(to_tf32(x)); }
    static __device__ __forceinline__ Operand operand(const u32 (&r)[4]) { return {{r[0], r[1], r[2], r[3]}}; }
    static __device__ __forceinline__ void run(float (&d)[4], const Operand& a, const Operand& b, int half) {
        mma_tf32(d, a.r, b.r[2 * half], b.r[2 * half + 1]);
    }
};

template <> struct Mma<f32x3> : Mma32 {
    // Products that the kernels sum over a whole sequence (P V over the keys, dS K, P^T dO and dS^T Q) are summed
    // one tile at a time in a fresh accumulator and added to the running one with FADD: the tensor cores' truncating
    // additions then span one tile's k (32-128) rather than thousands (warp_gemm.cuh accumulate). Measured on the
    // H100 (forward, head dims 64 and 128, seqlen 1k-4k): errors 4.2-5.9e-6 before, 0.4-1.2e-6 after, beside
    // naive float32 CuPy's 0.4-0.6e-6 (docs/performance.md, eleventh session). Where a second accumulator of the
    // whole width would spill, in two column slices (the dK/dV kernel's 16x128 tile at head dim 128: dK and dV 8-20x
    // plain float32's error summed in place, 1.5-3.9x in slices; twenty-fifth session); above head dim 192 in
    // narrower slices (warp_gemm.cuh column_chunk). The sums over the head dim, inside one tile, keep their small
    // terms apart instead (run_split).
    static constexpr bool SUM_PER_TILE = true;
    struct Operand { u32 hi[4], lo[4]; };
    static __device__ __forceinline__ Operand operand(const u32 (&r)[4]) {
        Operand o;
        #pragma unroll
        for (int i = 0; i < 4; ++i) split_tf32(__uint_as_float(r[i]), o.hi[i], o.lo[i]);
        return o;
    }
    // From a SplitTile's two parts, loaded alike: split already.
    static __device__ __forceinline__ Operand operand(const u32 (&hi)[4], const u32 (&lo)[4]) {
        return {{hi[0], hi[1], hi[2], hi[3]}, {lo[0], lo[1], lo[2], lo[3]}};
    }
    // The small terms first, so they are not lost against the large one.
    static __device__ __forceinline__ void run(float (&d)[4], const Operand& a, const Operand& b, int half) {
        mma_tf32(d, a.lo, b.hi[2 * half], b.hi[2 * half + 1]);
        mma_tf32(d, a.hi, b.lo[2 * half], b.lo[2 * half + 1]);
        mma_tf32(d, a.hi, b.hi[2 * half], b.hi[2 * half + 1]);
    }
    // run's passes one at a time (SMALL: lo hi + hi lo; else hi hi), for a caller that sums every k step's small
    // terms before any large one (warp_gemm.cuh gemm_smem_smem's score tiles too large for run_split).
    template <bool SMALL>
    static __device__ __forceinline__ void run_pass(float (&d)[4], const Operand& a, const Operand& b, int half) {
        if constexpr (SMALL) {
            mma_tf32(d, a.lo, b.hi[2 * half], b.hi[2 * half + 1]);
            mma_tf32(d, a.hi, b.lo[2 * half], b.lo[2 * half + 1]);
        } else {
            mma_tf32(d, a.hi, b.hi[2 * half], b.hi[2 * half + 1]);
        }
    }
    // The same with the small terms summed in an accumulator of their own, which the caller adds to d at the end:
    // d then takes one truncated addition a k step rather than three, and the small terms' truncations are 2^-11
    // of d's. For the products over the head dim (S = Q K^T, dP = dO V^T), whose sums no tile-level fresh sum
    // shortens and whose accumulators are narrow. (A fresh sum of each k step, added with FADD, spilled the dQ
    // kernel's picks: its temporaries live for three dependent products, many in flight.)
    static __device__ __forceinline__ void run_split(float (&d)[4], float (&small)[4], const Operand& a,
                                                     const Operand& b, int half) {
        mma_tf32(small, a.lo, b.hi[2 * half], b.hi[2 * half + 1]);
        mma_tf32(small, a.hi, b.lo[2 * half], b.lo[2 * half + 1]);
        mma_tf32(d, a.hi, b.hi[2 * half], b.hi[2 * half + 1]);
    }
};

}  // namespace cf
