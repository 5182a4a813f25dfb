// Warp-level matrix products on m16n8k16 tensor-core fragments. A warp owns M_TILES row tiles of 16 rows.
// Accumulator fragment acc[mt][nt][e]: row = 16*mt + lane/4 + 8*(e/2), column = 8*nt + 2*(lane%4) + e%2.
#pragma once
#include "mma_sm80.cuh"
#include "smem_tile.cuh"

namespace cf {

// Calls f(x, dr, dc) for every element x of an accumulator fragment, with its row and column offsets from the
// thread's first element (row lane/4, column 2*(lane%4)); the offsets are compile-time constants once unrolled.
template <int M_TILES, int N_TILES, typename F>
__device__ __forceinline__ void for_each_element_offset(float (&c)[M_TILES][N_TILES][4], F f) {
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int nt = 0; nt < N_TILES; ++nt)
            #pragma unroll
            for (int e = 0; e < 4; ++e)
                f(c[mt][nt][e], 16 * mt + 8 * (e / 2), 8 * nt + (e % 2));
}

// Calls f(x, row, col) for every element x of an accumulator fragment whose first row and column are row0 and
// col0 (rows and columns mean whatever the product has there: queries x keys for S, keys x queries for S^T).
template <int M_TILES, int N_TILES, typename F>
__device__ __forceinline__ void for_each_element(float (&c)[M_TILES][N_TILES][4], int row0, int col0, int lane, F f) {
    const int row = row0 + lane / 4, col = col0 + 2 * (lane % 4);
    for_each_element_offset(c, [&](float& x, int dr, int dc) { f(x, row + dr, col + dc); });
}

// Calls f(x, y, row, col) for each pair of elements (row, col), (row, col + 1) of an accumulator fragment whose first
// row and column are row0 and col0: the pairs a thread holds side by side (values read two at a time).
template <int M_TILES, int N_TILES, typename F>
__device__ __forceinline__ void for_each_pair(float (&c)[M_TILES][N_TILES][4], int row0, int col0, int lane, F f) {
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int nt = 0; nt < N_TILES; ++nt)
            #pragma unroll
            for (int r = 0; r < 2; ++r)
                f(c[mt][nt][2 * r], c[mt][nt][2 * r + 1], row0 + 16 * mt + lane / 4 + 8 * r,
                  col0 + 8 * nt + 2 * (lane % 4));
}

// A fragment (16x16, row-major) of rows row0.., columns col0.. of a shared tile.
template <typename Tile>
__device__ __forceinline__ void load_a_frag(u32 (&a)[4], u32 tile, int row0, int col0, int lane) {
    ldmatrix_x4(a, tile + Tile::byte_offset(row0 + (lane & 15), col0 + (lane >> 4) * 8));
}

// The same A fragment from a tile stored k-major (row = k, column = m; as dS^T is for dQ = dS K).
template <typename Tile>
__device__ __forceinline__ void load_a_frag_kmajor(u32 (&a)[4], u32 tile, int row0, int col0, int lane) {
    ldmatrix_x4_trans(a, tile + Tile::byte_offset(col0 + (lane & 7) + ((lane >> 4) & 1) * 8,
                                                  row0 + ((lane >> 3) & 1) * 8));
}

// B fragments for two n-tiles (n0..n0+15) over k0..k0+15 from a tile stored n-major (one row per n, as K is
// for S = Q K^T): b[0..1] feed n-tile n0, b[2..3] feed n-tile n0+8.
template <typename Tile>
__device__ __forceinline__ void load_b_pair_nmajor(u32 (&b)[4], u32 tile, int n0, int k0, int lane) {
    ldmatrix_x4(b, tile + Tile::byte_offset(n0 + (lane & 7) + (lane >> 4) * 8, k0 + ((lane >> 3) & 1) * 8));
}

// The same from a tile stored k-major (one row per k, as V is for O = P V): transposed on load.
template <typename Tile>
__device__ __forceinline__ void load_b_pair_kmajor(u32 (&b)[4], u32 tile, int n0, int k0, int lane) {
    ldmatrix_x4_trans(b, tile + Tile::byte_offset(k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 + (lane >> 4) * 8));
}

// acc += A B over k = 0..K, A and B both read from shared memory: A = rows [a_m0, a_m0 + 16*M_TILES) of the
// m x k product operand, B = columns [b_n0, b_n0 + 8*N_TILES) of the k x n operand. Each operand is stored either
// one row per m (or n) index (S = Q K^T: Q and K are both stored that way) or one row per k index (*_KMAJOR; as dO
// is for dV = P^T dO, and as dS^T and K are for dQ = dS K); k-major operands are transposed by ldmatrix.
template <typename Elem, int M_TILES, int N_TILES, int K, typename ATile, typename BTile, bool A_KMAJOR = false,
          bool B_KMAJOR = false>
__device__ __forceinline__ void gemm_smem_smem(float (&acc)[M_TILES][N_TILES][4], u32 sA, int a_m0, u32 sB,
                                               int b_n0, int lane) {
    static_assert(N_TILES % 2 == 0 && K % 16 == 0, "fragment pairs");
    #pragma unroll
    for (int k0 = 0; k0 < K; k0 += 16) {
        u32 a[M_TILES][4];
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt) {
            if constexpr (A_KMAJOR) load_a_frag_kmajor<ATile>(a[mt], sA, a_m0 + 16 * mt, k0, lane);
            else load_a_frag<ATile>(a[mt], sA, a_m0 + 16 * mt, k0, lane);
        }
        #pragma unroll
        for (int np = 0; np < N_TILES / 2; ++np) {
            u32 b[4];
            if constexpr (B_KMAJOR) load_b_pair_kmajor<BTile>(b, sB, b_n0 + 16 * np, k0, lane);
            else load_b_pair_nmajor<BTile>(b, sB, b_n0 + 16 * np, k0, lane);
            #pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
                Mma<Elem>::run(acc[mt][2 * np], a[mt], b[0], b[1]);
                Mma<Elem>::run(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
            }
        }
    }
}

// acc += A B with A held in registers as packed fragments (one per 16 columns of K) and B = the first K rows
// of sB, stored k-major (O += P V).
template <typename Elem, int M_TILES, int N_TILES, int K, typename BTile>
__device__ __forceinline__ void gemm_regs_smem_nn(float (&acc)[M_TILES][N_TILES][4],
                                                  const u32 (&a)[M_TILES][K / 16][4], u32 sB, int lane) {
    static_assert(N_TILES % 2 == 0, "fragment pairs");
    #pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
        #pragma unroll
        for (int np = 0; np < N_TILES / 2; ++np) {
            u32 b[4];
            load_b_pair_kmajor<BTile>(b, sB, 16 * np, 16 * kk, lane);
            #pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
                Mma<Elem>::run(acc[mt][2 * np], a[mt][kk], b[0], b[1]);
                Mma<Elem>::run(acc[mt][2 * np + 1], a[mt][kk], b[2], b[3]);
            }
        }
    }
}

// An fp32 accumulator (16 x 8*N_TILES per row tile) repacked as A fragments of 16-bit elements: the
// accumulator layout of two adjacent n-tiles is exactly the A layout of one k16 step.
template <typename Elem, int M_TILES, int N_TILES>
__device__ __forceinline__ void accum_to_a_frags(u32 (&a)[M_TILES][N_TILES / 2][4],
                                                 const float (&c)[M_TILES][N_TILES][4]) {
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
        #pragma unroll
        for (int kk = 0; kk < N_TILES / 2; ++kk) {
            a[mt][kk][0] = Mma<Elem>::pack(c[mt][2 * kk][0], c[mt][2 * kk][1]);
            a[mt][kk][1] = Mma<Elem>::pack(c[mt][2 * kk][2], c[mt][2 * kk][3]);
            a[mt][kk][2] = Mma<Elem>::pack(c[mt][2 * kk + 1][0], c[mt][2 * kk + 1][1]);
            a[mt][kk][3] = Mma<Elem>::pack(c[mt][2 * kk + 1][2], c[mt][2 * kk + 1][3]);
        }
    }
}

// Writes rows [row0, row0 + 16*M_TILES) of an accumulator, each row multiplied by row_scale(mt, r), into a shared
// tile as 16-bit elements (the way out to global memory goes through shared memory for 16-byte stores).
template <typename Elem, typename Tile, int M_TILES, int N_TILES, typename RowScale>
__device__ __forceinline__ void stage_accum_in_smem_with(u16* tile, int row0, const float (&acc)[M_TILES][N_TILES][4],
                                                         RowScale row_scale, int lane) {
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + 16 * mt + lane / 4 + 8 * r;
            const float scale = row_scale(mt, r);
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt)
                *reinterpret_cast<u32*>(tile + Tile::offset(row, 8 * nt + 2 * (lane % 4))) =
                    Mma<Elem>::pack(acc[mt][nt][2 * r] * scale, acc[mt][nt][2 * r + 1] * scale);
        }
}

// With one scale per row held by this thread (1/l_i for the forward's output, softmax_scale for dK).
template <typename Elem, typename Tile, int M_TILES, int N_TILES>
__device__ __forceinline__ void stage_accum_in_smem(u16* tile, int row0, const float (&acc)[M_TILES][N_TILES][4],
                                                    const float (&row_scale)[M_TILES][2], int lane) {
    stage_accum_in_smem_with<Elem, Tile>(tile, row0, acc, [&](int mt, int r) { return row_scale[mt][r]; }, lane);
}

// Unscaled (dV; P^T and dS^T on their way to the other warps).
template <typename Elem, typename Tile, int M_TILES, int N_TILES>
__device__ __forceinline__ void stage_accum_in_smem(u16* tile, int row0, const float (&acc)[M_TILES][N_TILES][4],
                                                    int lane) {
    stage_accum_in_smem_with<Elem, Tile>(tile, row0, acc, [](int, int) { return 1.f; }, lane);
}

}  // namespace cf
