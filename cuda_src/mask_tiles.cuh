// Which tiles of a block's range a kernel visits. Without a tile summary, every one (AllTiles: the kernels compile
// as before). With a boolean mask, its tile summary (built by flash_mask_tiles_kernel, mask_tiles.cu) drops the
// tiles whose pairs are all hidden (no loads, no math) and marks those whose pairs are all visible, which skip
// reading the mask.
//
// Summary layout: for each (batch, head, row tile) of the kernel's tiling, a row of uint2 words; bit i of word w
// describes column tile 32 w + i: .x some pair of it is visible, .y every pair is. Rows are the tiles a block owns
// (query tiles for the forward and dQ kernels, key tiles for dK/dV: BY_KEY), columns the tiles it walks. Strides
// are in words, 0 along the mask's broadcast dims.
//
// A walk yields entries, 2 * tile + partial (partial: the mask cuts the tile, so it must be read), -1 at the
// walk's end. The loads' walk computes the next entry once a step's copies and products are issued, so its latency
// overlaps them; the math finds each step's entry stashed with its mask tile (bias.cuh).
#pragma once
#include "params.cuh"

namespace cf {

struct AllTiles {
    static constexpr bool SKIPS = false;
    __device__ __forceinline__ AllTiles(const AttnParams&, bool, int, int, int) {}
    __device__ __forceinline__ int last_entry(int tile, int first) const { return tile >= first ? 2 * tile + 1 : -1; }
    __device__ __forceinline__ int first_entry(int tile, int end) const { return tile < end ? 2 * tile + 1 : -1; }
    __device__ __forceinline__ int count(int first, int end) const { return end - first; }
};

struct SummarizedTiles {
    static constexpr bool SKIPS = true;
    const uint2* words;

    __device__ __forceinline__ SummarizedTiles(const AttnParams& p, bool by_key, int batch, int head, int row_tile) {
        const Strides& s = by_key ? p.mask_tiles_k_str : p.mask_tiles_q_str;
        words = (by_key ? p.mask_tiles_k : p.mask_tiles_q) + batch * s.batch + head * s.head + row_tile * s.seq;
    }

    // The entry of the highest tile in [first, tile] holding a visible pair, or -1.
    __device__ __forceinline__ int last_entry(int tile, int first) const {
        while (tile >= first) {
            const uint2 w = __ldg(&words[tile / 32]);
            const u32 bits = w.x & (0xffffffffu >> (31 - tile % 32));
            if (bits) {
                const int bit = 31 - __clz(bits), found = tile / 32 * 32 + bit;
                return found < first ? -1 : 2 * found + !(w.y >> bit & 1);
            }
            tile = tile / 32 * 32 - 1;
        }
        return -1;
    }
    // The entry of the lowest tile in [tile, end) holding a visible pair, or -1.
    __device__ __forceinline__ int first_entry(int tile, int end) const {
        while (tile < end) {
            const uint2 w = __ldg(&words[tile / 32]);
            const u32 bits = w.x & (0xffffffffu << tile % 32);
            if (bits) {
                const int bit = __ffs(bits) - 1, found = tile / 32 * 32 + bit;
                return found >= end ? -1 : 2 * found + !(w.y >> bit & 1);
            }
            tile = tile / 32 * 32 + 32;
        }
        return -1;
    }
    // How many tiles of [first, end) hold a visible pair.
    __device__ __forceinline__ int count(int first, int end) const {
        int n = 0;
        for (int w = first / 32; w * 32 < end; ++w) {
            u32 bits = __ldg(&words[w].x);
            if (w == first / 32) bits &= 0xffffffffu << first % 32;
            if (end - w * 32 < 32) bits &= (1u << (end - w * 32)) - 1;
            n += __popc(bits);
        }
        return n;
    }
};

}  // namespace cf
