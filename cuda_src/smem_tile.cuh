// A ROWS x HEAD_DIM tile of elements (16-bit, or float32) in shared memory, and the cooperative copies that fill it
// from global memory and drain it back.
#pragma once
#include "mma_sm80.cuh"

namespace cf {

// Rows are padded by one 16-byte chunk: HEAD_DIM/CHUNK + 1 chunks per row is odd (HEAD_DIM is a multiple of 16),
// so the 8 row addresses of an ldmatrix phase fall in 8 different 16-byte bank groups, for every head dim
// (an XOR swizzle would need a power-of-two number of chunks per row, which 96, 160, 224 are not).
template <int ROWS, int HEAD_DIM, typename T = u16>
struct SmemTile {
    static_assert(HEAD_DIM % 16 == 0, "head dim tile must be a multiple of 16");
    using Storage = T;
    static constexpr bool SWIZZLED = false;                // offsets linear in row and column
    static constexpr bool PAIRED = false;                  // columns stored in order (wgmma.cuh PairedSwizzledTile)
    static constexpr bool SPLIT = false;                   // one part (mma_tf32.cuh SplitTile)
    static constexpr int LO = 0;
    static constexpr int ROW_COUNT = ROWS;
    static constexpr int CHUNK = 16 / sizeof(T);           // elements per 16-byte chunk
    static constexpr int STRIDE = HEAD_DIM + CHUNK;        // elements per padded row
    static constexpr int ELEMS = ROWS * STRIDE;
    static constexpr int CHUNKS_PER_ROW = HEAD_DIM / CHUNK; // 16-byte chunks that hold data
    static __device__ __forceinline__ int offset(int row, int col) { return row * STRIDE + col; }
    static constexpr int BYTES = ELEMS * static_cast<int>(sizeof(T));
    // Byte offset, for 32-bit shared addresses.
    static __device__ __forceinline__ u32 byte_offset(int row, int col) {
        return static_cast<u32>(sizeof(T)) * (row * STRIDE + col);
    }
};

// Each thread owns one 16-byte column chunk and walks rows ROWS_PER_PASS apart, so a copy needs one running
// pointer per thread rather than one address per chunk (which would hold registers across the main loop). The
// copying threads are THREADS consecutive ones from FIRST.
template <typename Tile, int THREADS, int FIRST = 0>
struct TileCopy {
    static constexpr int ROWS_PER_PASS = THREADS / Tile::CHUNKS_PER_ROW;
    static constexpr int PASSES = (Tile::ROW_COUNT + ROWS_PER_PASS - 1) / ROWS_PER_PASS;
    static_assert(ROWS_PER_PASS >= 1, "a pass must cover at least one row");
    // Threads past ROWS_PER_PASS * CHUNKS_PER_ROW idle (only when the chunk count does not divide THREADS).
    // unsigned, as threadIdx.x: signed division and comparison cost the kernels registers (spills on sm_80)
    static __device__ __forceinline__ unsigned tid() { return threadIdx.x - FIRST; }
    static __device__ __forceinline__ bool active() { return tid() < ROWS_PER_PASS * Tile::CHUNKS_PER_ROW; }
    static __device__ __forceinline__ int row() { return tid() / Tile::CHUNKS_PER_ROW; }
    static __device__ __forceinline__ int col() { return tid() % Tile::CHUNKS_PER_ROW * Tile::CHUNK; }
    static __device__ __forceinline__ bool row_in_tile(int r) {
        return Tile::ROW_COUNT % ROWS_PER_PASS == 0 || r < Tile::ROW_COUNT;
    }
};

// gmem points at row 0 of this tile for one (batch, head); rows >= rows_valid and columns >= head_dim are
// zero-filled instead of read, so partial tiles never touch memory past the tensor and never hold garbage.
// UNROLL: passes unrolled (2 for a thread that only copies and has few registers: unrolled fully, the passes'
// addresses are computed ahead and held).
template <typename Tile, int THREADS, int UNROLL = TileCopy<Tile, THREADS>::PASSES>
__device__ __forceinline__ void load_tile_async(u32 smem, const typename Tile::Storage* gmem, i64 row_stride,
                                                int rows_valid, int head_dim) {
    using C = TileCopy<Tile, THREADS>;
    if (!C::active()) return;
    const int col = C::col();
    const bool col_ok = col < head_dim;
    int r = C::row();
    const typename Tile::Storage* src = gmem + r * row_stride + col;
    const i64 pass_stride = C::ROWS_PER_PASS * row_stride;
    #pragma unroll UNROLL
    for (int pass = 0; pass < C::PASSES; ++pass, r += C::ROWS_PER_PASS, src += pass_stride) {
        if (C::row_in_tile(r)) {
            const bool valid = col_ok && r < rows_valid;
            cp_async_16(smem + Tile::byte_offset(r, col), valid ? src : gmem, valid);
        }
    }
}

// Shared -> global with 16-byte stores; only rows < rows_valid and columns < head_dim are written.
template <typename Tile, int THREADS, int FIRST = 0>
__device__ __forceinline__ void store_tile(typename Tile::Storage* gmem, const typename Tile::Storage* smem,
                                           i64 row_stride, int rows_valid, int head_dim) {
    using C = TileCopy<Tile, THREADS, FIRST>;
    if (!C::active()) return;
    const int col = C::col();
    int r = C::row();
    typename Tile::Storage* dst = gmem + r * row_stride + col;
    const i64 pass_stride = C::ROWS_PER_PASS * row_stride;
    #pragma unroll
    for (int pass = 0; pass < C::PASSES; ++pass, r += C::ROWS_PER_PASS, dst += pass_stride)
        if (C::row_in_tile(r) && r < rows_valid && col < head_dim)
            *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(smem + Tile::offset(r, col));
}

// COUNT fp32 per-row values (lse, delta) starting at gmem into shared memory, 4 per 16-byte copy; entries at
// or past `valid` are zero-filled. COUNT must be a multiple of 4.
template <int COUNT, int THREADS>
__device__ __forceinline__ void load_row_values_async(u32 smem, const float* gmem, int valid) {
    static_assert(COUNT % 4 == 0 && COUNT / 4 <= THREADS, "one 16-byte chunk per thread");
    const int i = threadIdx.x * 4;
    if (i < COUNT) {
        // Rows are contiguous, so a chunk is all-valid, all-invalid, or straddles the end (then copied by parts).
        if (i + 4 <= valid) {
            cp_async_16(smem + 4 * i, gmem + i, true);
        } else {
            float* dst = reinterpret_cast<float*>(__cvta_shared_to_generic(smem + 4 * i));
            #pragma unroll
            for (int j = 0; j < 4; ++j) dst[j] = i + j < valid ? gmem[i + j] : 0.f;
        }
    }
}

// A cp.async pipeline's prologue, where every warp copies: the first STAGES - 1 steps' copies (load(t, entry)),
// one commit group a step, empty past n_steps, so that the loop's wait<STAGES - 2> counts alike. With SKIPS (a
// mask's walk, mask_tiles.cuh) `entry` moves on to the next step's entry (after(entry)) after each load.
template <int STAGES, bool SKIPS, typename Load, typename After>
__device__ __forceinline__ void fill_pipeline(int n_steps, int& entry, const Load& load, const After& after) {
    #pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) {
        if (t < n_steps) {
            load(t, entry);
            if constexpr (SKIPS) entry = after(entry);
        }
        cp_async_commit();
    }
}

}  // namespace cf
