// Split-KV: when batch x heads x query tiles cannot fill the GPU (decoding, a few queries against long sequences),
// the key tiles of each query tile are spread over num_splits blocks. Each writes its rows' output, normalised by
// its own row sums, and its lse to fp32 partials; split_combine.cu merges them:
//   lse = log(sum_s exp(lse_s)),  O = sum_s exp(lse_s - lse) O_s.
// The forward kernel takes the policy: OneSplit (every kernel but decode-shaped calls; compiled as before) or
// KeySplits. Split s of a query tile takes the s-th run of its key tiles counted from the last (the kernels
// visit key tiles last-first), so split 0 holds the diagonal under a causal mask.
#pragma once
#include "params.cuh"

namespace cf {

struct OneSplit {
    static constexpr bool ON = false;
    __device__ __forceinline__ OneSplit(const AttnParams&, int) {}
    __device__ __forceinline__ int query_tile(int block_tile) const { return block_tile; }
    __device__ __forceinline__ int query_tiles(int block_tiles) const { return block_tiles; }
    __device__ __forceinline__ int2 keys(int2 key_tiles) const { return key_tiles; }
};

struct KeySplits {
    static constexpr bool ON = true;
    int split, count;
    // The grid's query-tile axis holds query tile * num_splits + split.
    __device__ __forceinline__ KeySplits(const AttnParams& p, int block_tile)
        : split(block_tile % p.num_splits), count(p.num_splits) {}
    __device__ __forceinline__ int query_tile(int block_tile) const { return block_tile / count; }
    __device__ __forceinline__ int query_tiles(int block_tiles) const { return block_tiles / count; }
    // This split's part of [first, end): runs of ceil(n / count) tiles from the end; empty past the first tile.
    __device__ __forceinline__ int2 keys(int2 key_tiles) const {
        const int run = (key_tiles.y - key_tiles.x + count - 1) / count;
        const int end = max(key_tiles.x, key_tiles.y - split * run);
        return make_int2(max(key_tiles.x, end - run), end);
    }

    // Where row `row` of (batch, head) keeps its partial output and lse.
    __device__ __forceinline__ i64 row_index(const AttnParams& p, int batch, int head, int row) const {
        return ((static_cast<i64>(split) * p.batch + batch) * p.nheads + head) * p.seqlen_q + row;
    }
};

// Writes a warp's rows of the output accumulator, each row multiplied by row_scale[mt][r] (1 / l_i of this split's
// keys times the dropout scale), and their lse, to the fp32 partials. Rows past seqlen_q and columns past
// head_dim are not written; a row that saw no key of this split writes zeros and lse -inf.
template <int M_TILES, int D_TILES, typename Softmax>
__device__ __forceinline__ void write_split_partials(const AttnParams& p, const KeySplits& split, int batch, int head,
                                                     int row0, const float (&acc)[M_TILES][D_TILES][4],
                                                     const float (&row_scale)[M_TILES][2], const Softmax& softmax,
                                                     int lane) {
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + 16 * mt + lane / 4 + 8 * r;
            if (row >= p.seqlen_q) continue;
            const i64 at = split.row_index(p, batch, head, row);
            if (lane % 4 == 0) p.lse_partial[at] = softmax.lse(mt, r, p.scale_log2);
            float* o = p.o_partial + at * p.head_dim;
            #pragma unroll
            for (int dt = 0; dt < D_TILES; ++dt) {
                const int col = 8 * dt + 2 * (lane % 4);
                if (col < p.head_dim)
                    *reinterpret_cast<float2*>(o + col) = make_float2(acc[mt][dt][2 * r] * row_scale[mt][r],
                                                                      acc[mt][dt][2 * r + 1] * row_scale[mt][r]);
            }
        }
}

}  // namespace cf
