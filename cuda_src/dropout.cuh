// Dropout policies: which (query i, key j) pairs of head (batch, head) a call keeps. cupyflash/_dropout.py is the
// same function on the host (references, return_attn_probs) and says why it is shaped so:
//   word = Philox4x32-10(counter = (i / 16 * 8 + i % 8, j / 16 * 8 + j % 8, batch * nheads + head, offset),
//                        key = seed)[(i / 8 % 2) * 2 + j / 8 % 2],   kept iff word < dropout_threshold.
// One Philox call serves the pairs {i, i + 8} x {j, j + 8}: the four elements one thread of an m16n8 accumulator
// holds at one offset in two neighbouring n8 tiles, in S (rows are queries) and in S^T (rows are keys) alike, so
// each word is generated once per kernel. The kernels zero the dropped probabilities and multiply kept ones by
// dropout_scale (1 / the keep probability the threshold gives) where the product needs it.
#pragma once
#include "params.cuh"
#include "philox.cuh"

namespace cf {

// Which elements of a [ROW_TILES][COL_TILES][4] accumulator fragment are kept: bit nt * 4 + e of bits[mt].
template <int ROW_TILES, int COL_TILES>
struct KeptBits {
    static_assert(COL_TILES * 4 <= 64, "one 64-bit word per row tile");
    static constexpr bool ALL = false;
    unsigned long long bits[ROW_TILES];
    __device__ __forceinline__ bool at(int mt, int nt, int e) const { return bits[mt] >> (nt * 4 + e) & 1; }
};

struct AllKept {
    static constexpr bool ALL = true;
    __device__ __forceinline__ static constexpr bool at(int, int, int) { return true; }
};

struct NoDropout {
    static constexpr bool ON = false;
    __device__ __forceinline__ NoDropout(const AttnParams&, int, int) {}
    __device__ __forceinline__ static constexpr float scale() { return 1.f; }
    template <bool ROWS_ARE_KEYS, int ROW_TILES, int COL_TILES>
    __device__ __forceinline__ AllKept kept(int, int, int) const { return {}; }
};

struct Dropout {
    static constexpr bool ON = true;
    uint2 key;
    unsigned stream, offset, threshold;
    float scale_;

    __device__ __forceinline__ Dropout(const AttnParams& p, int batch, int head)
        : key(make_uint2(static_cast<unsigned>(p.dropout_seed), static_cast<unsigned>(p.dropout_seed >> 32))),
          stream(static_cast<unsigned>(batch) * p.nheads + head), offset(static_cast<unsigned>(p.dropout_offset)),
          threshold(p.dropout_threshold), scale_(p.dropout_scale) {}

    __device__ __forceinline__ float scale() const { return scale_; }

    // The kept elements of a fragment whose first row and column are row0 and col0 (multiples of 16; rows are
    // queries, or keys with ROWS_ARE_KEYS). Element (mt, nt, e) is row row0 + 16 mt + lane / 4 + 8 (e / 2), column
    // col0 + 8 nt + 2 (lane % 4) + e % 2: for each row tile, column pair of n8 tiles and e % 2, one Philox call.
    template <bool ROWS_ARE_KEYS, int ROW_TILES, int COL_TILES>
    __device__ __forceinline__ KeptBits<ROW_TILES, COL_TILES> kept(int row0, int col0, int lane) const {
        static_assert(COL_TILES % 2 == 0, "columns in pairs of n8 tiles");
        KeptBits<ROW_TILES, COL_TILES> out;
        #pragma unroll
        for (int mt = 0; mt < ROW_TILES; ++mt) {
            out.bits[mt] = 0;
            const unsigned row_group = (row0 / 16 + mt) * 8 + lane / 4;
            #pragma unroll
            for (int np = 0; np < COL_TILES / 2; ++np)
                #pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const unsigned col_group = (col0 / 16 + np) * 8 + 2 * (lane % 4) + c;
                    const uint4 w = Philox4x32::generate(
                        ROWS_ARE_KEYS ? make_uint4(col_group, row_group, stream, offset)
                                      : make_uint4(row_group, col_group, stream, offset),
                        key);
                    // word (query bit) * 2 + key bit; here the row bit is e / 2 and the column bit nt % 2
                    const unsigned words[4] = {w.x, w.y, w.z, w.w};
                    #pragma unroll
                    for (int rb = 0; rb < 2; ++rb)
                        #pragma unroll
                        for (int cb = 0; cb < 2; ++cb) {
                            const unsigned word = words[ROWS_ARE_KEYS ? cb * 2 + rb : rb * 2 + cb];
                            const int bit = (2 * np + cb) * 4 + 2 * rb + c;
                            out.bits[mt] |= static_cast<unsigned long long>(word < threshold) << bit;
                        }
                }
        }
        return out;
    }
};

// Zero the dropped elements of a fragment of probabilities (the forward: the scale is applied with 1 / l_i).
// Kernels generate the kept bits before the products that fill the fragment: a few registers carried through them
// rather than the generator's working set on top of a full score fragment (which spilled the largest tiles).
template <typename Kept, int ROW_TILES, int COL_TILES>
__device__ __forceinline__ void drop_fragment(const Kept& kept, float (&p)[ROW_TILES][COL_TILES][4]) {
    if constexpr (!Kept::ALL) {
        #pragma unroll
        for (int mt = 0; mt < ROW_TILES; ++mt)
            #pragma unroll
            for (int nt = 0; nt < COL_TILES; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (!kept.at(mt, nt, e)) p[mt][nt][e] = 0.f;
    }
}

}  // namespace cf
