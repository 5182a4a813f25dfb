// Mask policies: which (query, key) pairs a kernel computes. One policy serves the forward and dQ kernels (rows are
// queries, they walk key tiles) and the dK/dV kernel (rows are keys, it walks query tiles). Three questions:
//   - which tiles to visit at all (tiles wholly hidden are skipped, so time follows the visible pairs),
//   - whether a visited tile needs element masking (only tiles the mask boundary crosses do),
//   - whether one pair is hidden (and, for the wgmma forward, the band's edges as bounds on a query's keys).
// Padding keys past seqlen_k are always hidden; that is the kernels' business, not a policy's.
//
// Alignment (flash-attn's): with off = seqlen_k - seqlen_q, query i lines up with key i + off (the bottom-right
// corner of the score matrix). Causal is the band with right = 0 and an unbounded left side. The lengths are the
// batch entry's own (coords.cuh Seq), so packed variable-length entries align to their own corners.
#pragma once
#include "coords.cuh"
#include "params.cuh"
#include "warp_gemm.cuh"

namespace cf {

// [begin, end) of BLOCK-sized tiles that cover the index range [first, last] clipped to [0, count).
template <int BLOCK>
__device__ __forceinline__ int2 tiles_covering(int first, int last, int count) {
    first = max(first, 0);
    last = min(last, count - 1);
    if (last < first) return make_int2(0, 0);
    return make_int2(first / BLOCK, last / BLOCK + 1);
}

// Every pair visible: today's non-causal kernels, compiled exactly as before.
struct NoMask {
    static constexpr bool MASKS = false;
    __device__ __forceinline__ NoMask(const AttnParams&, const Seq&) {}
    template <int BLOCK_M, int BLOCK_N>
    __device__ __forceinline__ int2 key_tiles(int, int seqlen_k) const {
        return make_int2(0, (seqlen_k + BLOCK_N - 1) / BLOCK_N);
    }
    template <int BLOCK_M, int BLOCK_N>
    __device__ __forceinline__ int2 query_tiles(int, int seqlen_q) const {
        return make_int2(0, (seqlen_q + BLOCK_M - 1) / BLOCK_M);
    }
    template <int BLOCK_M, int BLOCK_N>
    __device__ __forceinline__ bool crosses_right_edge(int, int) const { return false; }
    template <int BLOCK_M, int BLOCK_N>
    __device__ __forceinline__ bool crosses_left_edge(int, int) const { return false; }
    __device__ __forceinline__ bool right_of_band(int, int) const { return false; }
    __device__ __forceinline__ bool left_of_band(int, int) const { return false; }
};

// A diagonal band: key j is visible to query i iff -left <= j - i - off <= right (causal: right = 0, left covers
// everything; sliding window: both finite). Python stores covering values for unbounded sides (params.cuh).
// It reads the window from the params (kernel parameter space) at each use rather than holding it in registers:
// the kernels run at the edge of the register file, and a constant-bank operand costs no register.
struct BandMask {
    static constexpr bool MASKS = true;
    const AttnParams& p;
    const Seq& seq;
    __device__ __forceinline__ BandMask(const AttnParams& params, const Seq& sequence) : p(params), seq(sequence) {}
    __device__ __forceinline__ int off() const { return seq.diagonal_offset(p); }

    // Key tiles that query rows [m0, m0 + BLOCK_M) see any key of.
    template <int BLOCK_M, int BLOCK_N>
    __device__ __forceinline__ int2 key_tiles(int m0, int seqlen_k) const {
        return tiles_covering<BLOCK_N>(m0 + off() - p.window_left, m0 + BLOCK_M - 1 + off() + p.window_right,
                                       seqlen_k);
    }
    // Query tiles that see any of keys [n0, n0 + BLOCK_N).
    template <int BLOCK_M, int BLOCK_N>
    __device__ __forceinline__ int2 query_tiles(int n0, int seqlen_q) const {
        return tiles_covering<BLOCK_M>(n0 - off() - p.window_right, n0 + BLOCK_N - 1 - off() + p.window_left,
                                       seqlen_q);
    }
    // Whether the band's right (left) edge crosses the tile of queries [m0, m0 + BLOCK_M) x keys [n0, n0 + BLOCK_N).
    // The two edges are masked in separate passes: one comparison per element each, which keeps the register
    // peak of the masking where it was before windows existed (the kernels run at the edge of the file).
    template <int BLOCK_M, int BLOCK_N>
    __device__ __forceinline__ bool crosses_right_edge(int m0, int n0) const {
        return n0 + BLOCK_N - 1 - m0 - off() > p.window_right;
    }
    template <int BLOCK_M, int BLOCK_N>
    __device__ __forceinline__ bool crosses_left_edge(int m0, int n0) const {
        return n0 - (m0 + BLOCK_M - 1) - off() < -p.window_left;
    }
    __device__ __forceinline__ bool right_of_band(int query, int key) const {
        return key - query - off() > p.window_right;
    }
    __device__ __forceinline__ bool left_of_band(int query, int key) const {
        return key - query - off() < -p.window_left;
    }
    // The same edges as bounds on a query's keys: key j is visible to query i iff first_key(i) <= j <=
    // last_key(i). (The windows are at most the sequence lengths, problem.py normalize_window: no overflow.)
    __device__ __forceinline__ int last_key(int query) const { return query + off() + p.window_right; }
    __device__ __forceinline__ int first_key(int query) const { return query + off() - p.window_left; }
};

// Sets the hidden logits of a warp's accumulator fragment to -inf, one element at a time (hidden(query, key)).
template <bool ROWS_ARE_KEYS, int ROW_TILES, int COL_TILES, typename Hidden>
__device__ __forceinline__ void mask_where(float (&s)[ROW_TILES][COL_TILES][4], int row0, int col0, int lane,
                                           Hidden hidden) {
    for_each_element(s, row0, col0, lane, [&](float& x, int row, int col) {
        if (ROWS_ARE_KEYS ? hidden(col, row) : hidden(row, col)) x = neg_inf();
    });
}

// Sets to -inf the elements of a warp's accumulator fragment (first row and column row0, col0) whose column lies
// past (ABOVE) or before (!ABOVE) the bound of its row: one bound a row, then one comparison of a constant column
// offset an element (a bound per element would cost four or five integer ops more on every masked tile).
template <bool ABOVE, int ROW_TILES, int COL_TILES, typename Bound>
__device__ __forceinline__ void hide_past(float (&s)[ROW_TILES][COL_TILES][4], int row0, int col0, int lane,
                                          Bound bound) {
    const int col = col0 + 2 * (lane % 4);
    #pragma unroll
    for (int mt = 0; mt < ROW_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int b = bound(row0 + lane / 4 + 16 * mt + 8 * r) - col;  // from this thread's first column
            #pragma unroll
            for (int nt = 0; nt < COL_TILES; ++nt)
                #pragma unroll
                for (int c = 0; c < 2; ++c)
                    if (ABOVE ? 8 * nt + c > b : 8 * nt + c < b) s[mt][nt][2 * r + c] = neg_inf();
        }
}

// Sets the hidden logits of a warp's accumulator fragment to -inf: padding keys (>= seqlen_k) and pairs outside
// the mask, in the tile of queries [m0, m0 + BLOCK_M) x keys [n0, n0 + BLOCK_N). The fragment's rows are queries
// (forward, dQ) or keys (dK/dV: ROWS_ARE_KEYS); row0, col0 are its first row and column. Tiles inside the mask
// and past no padding cost one uniform branch.
// ROW_BOUNDS (the wgmma forward): a band's edges as one bound a row, one comparison an element (ISETP + FSEL;
// the per-element test costs four or five integer ops more, and head dim 64 is issue-bound). The mma.sync kernels
// keep the per-element test: the bound form moved the register allocation of some at the edge of the file
// (sm_90 compile check: spills in packed-row band kernels, forward at head dim 96 and dK/dV at 64).
template <int BLOCK_M, int BLOCK_N, bool ROWS_ARE_KEYS = false, bool ROW_BOUNDS = false, typename Mask,
          int ROW_TILES, int COL_TILES>
__device__ __forceinline__ void mask_fragment(const Mask& mask, float (&s)[ROW_TILES][COL_TILES][4], int row0,
                                              int col0, int lane, int m0, int n0, int seqlen_k) {
    if constexpr (ROW_BOUNDS && Mask::MASKS) {
        static_assert(!ROWS_ARE_KEYS, "row bounds: query rows");
        if (n0 + BLOCK_N > seqlen_k || mask.template crosses_right_edge<BLOCK_M, BLOCK_N>(m0, n0))
            hide_past<true>(s, row0, col0, lane, [&](int query) { return min(mask.last_key(query), seqlen_k - 1); });
        if (mask.template crosses_left_edge<BLOCK_M, BLOCK_N>(m0, n0))
            hide_past<false>(s, row0, col0, lane, [&](int query) { return mask.first_key(query); });
    } else {
        if (n0 + BLOCK_N > seqlen_k || mask.template crosses_right_edge<BLOCK_M, BLOCK_N>(m0, n0))
            mask_where<ROWS_ARE_KEYS>(s, row0, col0, lane, [&](int query, int key) {
                return key >= seqlen_k || mask.right_of_band(query, key);
            });
        if (Mask::MASKS && mask.template crosses_left_edge<BLOCK_M, BLOCK_N>(m0, n0))
            mask_where<ROWS_ARE_KEYS>(s, row0, col0, lane,
                                      [&](int query, int key) { return mask.left_of_band(query, key); });
    }
}

}  // namespace cf
