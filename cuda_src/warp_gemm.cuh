// Warp-level matrix products on m16n8 tensor-core fragments (k16 for 16-bit elements, k8 for floats). A warp owns
// M_TILES row tiles of 16 rows.
// Accumulator fragment acc[mt][nt][e]: row = 16*mt + lane/4 + 8*(e/2), column = 8*nt + 2*(lane%4) + e%2.
#pragma once
#include "mma_sm80.cuh"
#include "mma_tf32.cuh"
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

// Fragment loads. One k step is 32 bytes of an operand row (16 16-bit elements, 8 floats) and loads the same way
// for either: ldmatrix's 8x8 b16 matrices are 8 rows of 16 bytes, which for floats is the 8x4 block a TF32
// fragment register takes from (lane -> row lane/4, element lane%4). Tile::CHUNK is the elements of 16 bytes.
// Operands stored k-major are transposed by ldmatrix.trans for 16-bit elements; floats (which .trans would split)
// are read one register at a time. When both operands of a float product come that way, their k index is paired
// (PAIR_K): register 0 of the fragment takes k = 2*(lane%4) and register 1 the k after it, rather than lane%4 and
// lane%4 + 4, which keeps the reads free of bank conflicts; since the product sums over k, any order common to A
// and B gives the same result. accum_to_a_frags lays a float accumulator out as A in the paired order.

// A fragment (16 rows x one k step, row-major) of rows row0.., columns col0.. of a shared tile.
template <typename Tile>
__device__ __forceinline__ void load_a_frag(u32 (&a)[4], u32 tile, int row0, int col0, int lane) {
    ldmatrix_x4(a, tile + Tile::byte_offset(row0 + (lane & 15), col0 + (lane >> 4) * Tile::CHUNK));
}

// The same A fragment from a tile stored k-major (row = k, column = m; as dS^T is for dQ = dS K).
template <typename Tile>
__device__ __forceinline__ void load_a_frag_kmajor(u32 (&a)[4], u32 tile, int row0, int col0, int lane) {
    if constexpr (Tile::CHUNK == 8) {
        ldmatrix_x4_trans(a, tile + Tile::byte_offset(col0 + (lane & 7) + ((lane >> 4) & 1) * 8,
                                                      row0 + ((lane >> 3) & 1) * 8));
    } else {  // floats, k paired: a[0] (m, k), a[1] (m + 8, k), a[2] (m, k + 1), a[3] (m + 8, k + 1)
        if constexpr (Tile::SWIZZLED) {  // each address whole (row0 % 16 == 0: m and m + 8 in one panel)
            const int k = col0 + 2 * (lane % 4), m = row0 + lane / 4;
            a[0] = lds_u32(tile + Tile::byte_offset(k, m));
            a[1] = lds_u32(tile + Tile::byte_offset(k, m + 8));
            a[2] = lds_u32(tile + Tile::byte_offset(k + 1, m));
            a[3] = lds_u32(tile + Tile::byte_offset(k + 1, m + 8));
        } else {
            const u32 at = tile + Tile::byte_offset(col0 + 2 * (lane % 4), row0 + lane / 4);
            a[0] = lds_u32(at);
            a[1] = lds_u32(at + Tile::byte_offset(0, 8));
            a[2] = lds_u32(at + Tile::byte_offset(1, 0));
            a[3] = lds_u32(at + Tile::byte_offset(1, 8));
        }
    }
}

// B fragments for two n-tiles (n0..n0+15) over one k step from k0, from a tile stored n-major (one row per n, as K
// is for S = Q K^T): b[0..1] feed n-tile n0, b[2..3] feed n-tile n0+8.
template <typename Tile>
__device__ __forceinline__ void load_b_pair_nmajor(u32 (&b)[4], u32 tile, int n0, int k0, int lane) {
    ldmatrix_x4(b, tile + Tile::byte_offset(n0 + (lane & 7) + (lane >> 4) * 8, k0 + ((lane >> 3) & 1) * Tile::CHUNK));
}

// The same from a tile stored k-major (one row per k, as V is for O = P V): transposed on load.
template <typename Tile, bool PAIR_K = false>
__device__ __forceinline__ void load_b_pair_kmajor(u32 (&b)[4], u32 tile, int n0, int k0, int lane) {
    if constexpr (Tile::CHUNK == 8) {
        ldmatrix_x4_trans(b, tile + Tile::byte_offset(k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 + (lane >> 4) * 8));
    } else {  // floats: b[0] (k, n), b[1] (k', n), b[2] (k, n + 8), b[3] (k', n + 8)
        constexpr int NEXT_K = PAIR_K ? 1 : 4;
        if constexpr (Tile::SWIZZLED) {
            // k0 % 8 == 0 and n0 % 16 == 0: the lane's rows lie in one 8-row group and its columns in one panel, so
            // the address is the group's (k0, n0: constants where the caller's are) plus a lane's offset within it,
            // one of eight a thread, shared by every k step and every n pair of the same parity
            const int r = (PAIR_K ? 2 : 1) * (lane % 4), c = n0 % Tile::PANEL_COLS + lane / 4;
            const u32 at = tile + Tile::byte_offset(k0, n0 - n0 % Tile::PANEL_COLS);
            b[0] = lds_u32(at + Tile::in_group(r, c));
            b[1] = lds_u32(at + Tile::in_group(r + NEXT_K, c));
            b[2] = lds_u32(at + Tile::in_group(r, c + 8));
            b[3] = lds_u32(at + Tile::in_group(r + NEXT_K, c + 8));
        } else {
            const int k = k0 + (PAIR_K ? 2 : 1) * (lane % 4), n = n0 + lane / 4;
            const u32 at = tile + Tile::byte_offset(k, n);
            b[0] = lds_u32(at);
            b[1] = lds_u32(at + Tile::byte_offset(NEXT_K, 0));
            b[2] = lds_u32(at + Tile::byte_offset(0, 8));
            b[3] = lds_u32(at + Tile::byte_offset(NEXT_K, 8));
        }
    }
}

// The most floats a thread of the small terms' own accumulator (gemm_smem_smem below): the forward's 64x32, the dQ
// kernel's 32x32 and 64x32 and the dK/dV kernel's 32x32 tiles (16 or 8 floats: the tiles of head dims 96-256, where
// the head dim's sums are longest). Larger score tiles (head dims 32 and 64: 128x64, 64x64) spilled with it
// (a sweep of the float32 picks, sm_90): they keep the small terms in place, over 4-8 k steps.
constexpr int SMALL_TERMS_FLOATS = 16;

// Whether a kernel's score tiles too large for the small terms apart may sum them first instead (gemm_smem_smem's
// two passes a product, which load and split the operands twice): at head dims 32 and 64 they took plain float32's
// error ratio from up to 3.1x (lse) and 6.4x (dQ) to 1.7x and 2.8x (H100, twenty-ninth session). Plain scores and
// masks only: with a score modifier, a bias, dropout, packed rows or a block-sparse mask kernels spilled (up to
// 1.3 KB; a sweep of every float32 pick at 32 and 64, sm_90). Above head dim 32 only where the warp's score tile,
// FLOATS a thread, is at most the kernel's MAX_FLOATS (what its other live registers leave: larger tiles spilled,
// the forward's 128x64 at 64 1.3 KB and the dK/dV kernel's 64x64 0.4 KB on sm_90; a sweep of every candidate tile,
// thirtieth session).
template <typename Score, typename Bias, typename Drop, typename Rows, int HEAD_DIM, int FLOATS, int MAX_FLOATS>
__host__ __device__ constexpr bool small_terms_first() {
    return Score::IDENTITY && !Bias::ON && !Drop::ON && !Rows::PACKED && !Bias::Tiles::SKIPS &&
           (HEAD_DIM <= 32 || FLOATS <= MAX_FLOATS);
}

// acc += A B over k = 0..K, A and B both read from shared memory: A = rows [a_m0, a_m0 + 16*M_TILES) of the
// m x k product operand, B = columns [b_n0, b_n0 + 8*N_TILES) of the k x n operand. Each operand is stored either
// one row per m (or n) index (S = Q K^T: Q and K are both stored that way) or one row per k index (*_KMAJOR; as dO
// is for dV = P^T dO, and as dS^T and K are for dQ = dS K); k-major operands are transposed on load.
// Float32 at "highest" sums the small terms apart (Mma<f32x3>::run_split) in the products over the head dim, whose
// operands are both stored a row per m or n index (S = Q K^T, dP = dO V^T and their transposes).
// SMALL_FIRST: where the small terms do not fit apart, sum them first (small_terms_first above); else in place.
template <typename Elem, int M_TILES, int N_TILES, int K, typename ATile, typename BTile, bool A_KMAJOR = false,
          bool B_KMAJOR = false, bool OVER_HEAD_DIM = !A_KMAJOR && !B_KMAJOR, bool SMALL_FIRST = false>
__device__ __forceinline__ void gemm_smem_smem(float (&acc)[M_TILES][N_TILES][4], u32 sA, int a_m0, u32 sB,
                                               int b_n0, int lane) {
    using Op = Mma<Elem>;
    static_assert(N_TILES % 2 == 0 && K % Op::K_STEP == 0, "fragment pairs");
    static_assert(!A_KMAJOR || B_KMAJOR || ATile::CHUNK == 8, "float A read k-major pairs k with a k-major B");
    constexpr bool SPLIT_SUMS = OVER_HEAD_DIM && Op::SUM_PER_TILE;  // (f32x3)
    constexpr bool SMALL_TERMS_APART = SPLIT_SUMS && M_TILES * N_TILES * 4 <= SMALL_TERMS_FLOATS;
    // Score tiles too large for that accumulator sum every k step's small terms first, then the large ones: the
    // running sum then takes one truncated addition a k step at its full size, as with the small terms apart, for
    // operands loaded and split twice.
    constexpr bool SMALL_TERMS_FIRST = SPLIT_SUMS && !SMALL_TERMS_APART && SMALL_FIRST;
    float small[SMALL_TERMS_APART ? M_TILES : 1][SMALL_TERMS_APART ? N_TILES : 1][4] = {};
    #pragma unroll
    for (int pass = 0; pass < (SMALL_TERMS_FIRST ? 2 : 1); ++pass)
    #pragma unroll
    for (int k0 = 0; k0 < K; k0 += Op::K_STEP) {
        typename Op::Operand a[M_TILES];
        auto load_a = [&](u32 (&r)[4], u32 tile, int mt) {
            if constexpr (A_KMAJOR) load_a_frag_kmajor<ATile>(r, tile, a_m0 + 16 * mt, k0, lane);
            else load_a_frag<ATile>(r, tile, a_m0 + 16 * mt, k0, lane);
        };
        auto load_b = [&](u32 (&r)[4], u32 tile, int np) {
            if constexpr (B_KMAJOR) load_b_pair_kmajor<BTile, A_KMAJOR>(r, tile, b_n0 + 16 * np, k0, lane);
            else load_b_pair_nmajor<BTile>(r, tile, b_n0 + 16 * np, k0, lane);
        };
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt) {
            u32 r[4];
            load_a(r, sA, mt);
            if constexpr (ATile::SPLIT) {  // (mma_tf32.cuh SplitTile: the lo part loads alike)
                u32 lo[4];
                load_a(lo, sA + ATile::LO, mt);
                a[mt] = Op::operand(r, lo);
            } else {
                a[mt] = Op::operand(r);
            }
        }
        #pragma unroll
        for (int np = 0; np < N_TILES / 2; ++np) {
            u32 r[4];
            load_b(r, sB, np);
            typename Op::Operand b;
            if constexpr (BTile::SPLIT) {
                u32 lo[4];
                load_b(lo, sB + BTile::LO, np);
                b = Op::operand(r, lo);
            } else {
                b = Op::operand(r);
            }
            #pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
                if constexpr (SMALL_TERMS_APART) {
                    Op::run_split(acc[mt][2 * np], small[mt][2 * np], a[mt], b, 0);
                    Op::run_split(acc[mt][2 * np + 1], small[mt][2 * np + 1], a[mt], b, 1);
                } else if constexpr (SMALL_TERMS_FIRST) {
                    if (pass == 0) {
                        Op::template run_pass<true>(acc[mt][2 * np], a[mt], b, 0);
                        Op::template run_pass<true>(acc[mt][2 * np + 1], a[mt], b, 1);
                    } else {
                        Op::template run_pass<false>(acc[mt][2 * np], a[mt], b, 0);
                        Op::template run_pass<false>(acc[mt][2 * np + 1], a[mt], b, 1);
                    }
                } else {
                    Op::run(acc[mt][2 * np], a[mt], b, 0);
                    Op::run(acc[mt][2 * np + 1], a[mt], b, 1);
                }
            }
        }
    }
    if constexpr (SMALL_TERMS_APART)
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) acc[mt][nt][e] += small[mt][nt][e];
}

// Above head dim 192 half-width second accumulators spilled (twenty-fifth session's sweep of the float32 picks: the
// dK/dV kernel at 256, the forward and dQ kernels at 224 and 256, on sm_80 and sm_90): there the slices are narrower,
// at most WIDE_SLICE_FLOATS a thread (the callers pass fewer, or 0 for sums in place, where even those spill).
// Measured at 224 and 256 (H100, twenty-eighth session): dK 23x -> 4.9x plain float32's error, 11% slower.
constexpr int SLICED_HEAD_DIM_MAX = 192;
constexpr int WIDE_SLICE_FLOATS = 16;

// The n-tiles a fresh accumulator of accumulate() below takes at once: all N_TILES where M_TILES x N_TILES floats a
// thread fit MAX_FLOATS, else half of them where those fit (the product is then made in two column slices, each
// summed fresh and added, each reading its A operand); N_TILES where products add into acc directly (no
// SUM_PER_TILE), or where half do not fit either (then the sums are made in place), or above
// SLICED_HEAD_DIM_MAX.
template <typename Elem, int MAX_FLOATS, int M_TILES, int N_TILES, int HEAD_DIM, int WIDE_FLOATS = WIDE_SLICE_FLOATS>
__host__ __device__ constexpr int column_chunk() {
    if (!Mma<Elem>::SUM_PER_TILE || M_TILES * N_TILES * 4 <= MAX_FLOATS) return N_TILES;
    if (HEAD_DIM > SLICED_HEAD_DIM_MAX) {  // narrow slices: the widest of at most WIDE_FLOATS a thread
        for (int chunk = N_TILES / 2; chunk >= 2; --chunk)
            if (N_TILES % chunk == 0 && chunk % 2 == 0 && M_TILES * chunk * 4 <= WIDE_FLOATS) return chunk;
        return N_TILES;
    }
    if (N_TILES % 4 == 0 && M_TILES * N_TILES * 2 <= MAX_FLOATS) return N_TILES / 2;
    return N_TILES;
}

// acc += product(...): the product written into acc directly, or with Mma<Elem>::SUM_PER_TILE summed in a fresh
// accumulator first and added with FADD (mma_tf32.cuh says why), CHUNK n-tiles at a time (column_chunk).
// product(c, nt0) adds the product's n-tiles nt0 .. nt0 + CHUNK - 1 into c. A second accumulator larger than
// MAX_FLOATS a thread spills (compile check): 96 fits the forward and dQ kernels, 48 the dK/dV kernel, which holds
// dK and dV; products twice as wide are summed in two slices of columns.
template <typename Elem, int MAX_FLOATS, int CHUNK, int M_TILES, int N_TILES, typename Product>
__device__ __forceinline__ void accumulate(float (&acc)[M_TILES][N_TILES][4], Product product) {
    static_assert(N_TILES % CHUNK == 0, "whole slices of columns");
    if constexpr (Mma<Elem>::SUM_PER_TILE && M_TILES * CHUNK * 4 <= MAX_FLOATS) {
        #pragma unroll
        for (int nt0 = 0; nt0 < N_TILES; nt0 += CHUNK) {
            float tile[M_TILES][CHUNK][4] = {};
            product(tile, nt0);
            #pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt)
                #pragma unroll
                for (int nt = 0; nt < CHUNK; ++nt)
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][nt0 + nt][e] += tile[mt][nt][e];
        }
    } else {
        static_assert(CHUNK == N_TILES, "in place: one product over every column");
        product(acc, 0);
    }
}

// acc += A B with A held in registers as fragments from accum_to_a_frags (one per k step of K) and B = columns
// [b_n0, b_n0 + 8*N_TILES) of the first K rows of sB, stored k-major (O += P V).
template <typename Elem, int M_TILES, int N_TILES, int K, typename BTile>
__device__ __forceinline__ void gemm_regs_smem_nn(float (&acc)[M_TILES][N_TILES][4],
                                                  const u32 (&a)[M_TILES][K / Mma<Elem>::K_STEP][4], u32 sB,
                                                  int lane, int b_n0 = 0) {
    using Op = Mma<Elem>;
    static_assert(N_TILES % 2 == 0, "fragment pairs");
    #pragma unroll
    for (int kk = 0; kk < K / Op::K_STEP; ++kk) {
        typename Op::Operand a_op[M_TILES];
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt) a_op[mt] = Op::operand(a[mt][kk]);
        #pragma unroll
        for (int np = 0; np < N_TILES / 2; ++np) {
            u32 r[4];
            load_b_pair_kmajor<BTile, true>(r, sB, b_n0 + 16 * np, Op::K_STEP * kk, lane);
            const typename Op::Operand b = Op::operand(r);
            #pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
                Op::run(acc[mt][2 * np], a_op[mt], b, 0);
                Op::run(acc[mt][2 * np + 1], a_op[mt], b, 1);
            }
        }
    }
}

// The mma.sync core of the forward kernel (wgmma.cuh has the warpgroup one): every warp multiplies its own rows,
// tiles padded by a chunk a row (SmemTile).
struct WarpMma {
    template <int ROWS, int COLS, typename T> using Tile = SmemTile<ROWS, COLS, T>;
    static constexpr bool WARPGROUPS = false;
    static constexpr int SMEM_ALIGN = 0;  // 16 bytes, as any dynamic shared memory
    template <typename Elem, typename Tile>
    using Operands = Tile;  // operands as stored (f32x3 splits them at each fragment load: Mma<f32x3>::operand)
    template <typename Elem>
    static constexpr bool TRANSPOSED_V = false;  // V as it comes, keys x head dim (wgmma.cuh: TF32 transposes it)
    static __device__ __forceinline__ void tiles_landed() {}

    // s += A B^T over k < K: rows row0.. of sA, every row of sB, both stored k-major (S = Q K^T).
    // SMALL_FIRST: gemm_smem_smem's.
    template <typename Elem, int K, typename ATile, typename BTile, bool SMALL_FIRST = false, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void qk(float (&s)[M_TILES][N_TILES][4], u32 sA, int row0, u32 sB, int lane) {
        gemm_smem_smem<Elem, M_TILES, N_TILES, K, ATile, BTile, false, false, true, SMALL_FIRST>(s, sA, row0, sB, 0,
                                                                                               lane);
    }
    // acc += P V: P in registers (accum_to_a_frags), V = the first K rows of sB, from n-tile nt0 on.
    template <typename Elem, int K, typename BTile, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void pv(float (&acc)[M_TILES][N_TILES][4],
                                              const u32 (&a)[M_TILES][K / Mma<Elem>::K_STEP][4], u32 sB, int lane,
                                              int nt0 = 0) {
        gemm_regs_smem_nn<Elem, M_TILES, N_TILES, K, BTile>(acc, a, sB, lane, 8 * nt0);
    }
};

// An fp32 accumulator (16 x 8*N_TILES per row tile) as A fragments: for 16-bit elements, packed, the accumulator
// layout of two adjacent n-tiles being exactly the A layout of one k16 step; for floats, one n-tile per k8 step,
// its registers in the paired k order (a lane's columns 2*(lane%4) and the next: see the fragment loads).
template <typename Elem, int M_TILES, int N_TILES>
__device__ __forceinline__ void accum_to_a_frags(u32 (&a)[M_TILES][N_TILES * 8 / Mma<Elem>::K_STEP][4],
                                                 const float (&c)[M_TILES][N_TILES][4]) {
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
        if constexpr (Mma<Elem>::K_STEP == 16) {
            #pragma unroll
            for (int kk = 0; kk < N_TILES / 2; ++kk) {
                a[mt][kk][0] = Mma<Elem>::pack(c[mt][2 * kk][0], c[mt][2 * kk][1]);
                a[mt][kk][1] = Mma<Elem>::pack(c[mt][2 * kk][2], c[mt][2 * kk][3]);
                a[mt][kk][2] = Mma<Elem>::pack(c[mt][2 * kk + 1][0], c[mt][2 * kk + 1][1]);
                a[mt][kk][3] = Mma<Elem>::pack(c[mt][2 * kk + 1][2], c[mt][2 * kk + 1][3]);
            }
        } else {
            #pragma unroll
            for (int kk = 0; kk < N_TILES; ++kk) {
                a[mt][kk][0] = __float_as_uint(Mma<Elem>::operand_value(c[mt][kk][0]));
                a[mt][kk][1] = __float_as_uint(Mma<Elem>::operand_value(c[mt][kk][2]));
                a[mt][kk][2] = __float_as_uint(Mma<Elem>::operand_value(c[mt][kk][1]));
                a[mt][kk][3] = __float_as_uint(Mma<Elem>::operand_value(c[mt][kk][3]));
            }
        }
    }
}

// A computed operand's value at element `at` of a tile, as the products take it: both parts where the tile is split
// (mma_tf32.cuh SplitTile), else the element type's operand value (float32 at "tf32": rounded).
template <typename Elem, typename Tile>
__device__ __forceinline__ void store_operand(typename Tile::Storage* tile, int at, float x) {
    if constexpr (Tile::SPLIT) {
        u32 hi, lo;
        split_tf32_stored(x, hi, lo);
        tile[at] = __uint_as_float(hi);
        tile[at + Tile::LO / 4] = __uint_as_float(lo);
    } else {
        tile[at] = Mma<Elem>::operand_value(x);
    }
}

// Writes rows [row0, row0 + 16*M_TILES) of an accumulator, each row multiplied by row_scale(mt, r), into a shared
// tile as Elem's storage (the way out to global memory goes through shared memory for 16-byte stores). OPERAND: the
// values are a product's operand on their way to the other warps (P^T, dS^T), stored as the products take them
// (Mma::operand_value: float32 at "tf32" rounded).
template <typename Elem, typename Tile, bool OPERAND = false, int M_TILES, int N_TILES, typename RowScale>
__device__ __forceinline__ void stage_accum_in_smem_with(typename Tile::Storage* tile, int row0,
                                                         const float (&acc)[M_TILES][N_TILES][4],
                                                         RowScale row_scale, int lane) {
    auto value = [](float x) { return OPERAND ? Mma<Elem>::operand_value(x) : x; };
    auto put = [&](int at, float x) {
        if constexpr (OPERAND) store_operand<Elem, Tile>(tile, at, x);
        else tile[at] = x;
    };
    static_assert(!(OPERAND && Tile::SPLIT) || Tile::PAIRED, "split operands are the warpgroups' paired tiles");
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + 16 * mt + lane / 4 + 8 * r;
            const float scale = row_scale(mt, r);
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt) {
                const int col = 8 * nt + 2 * (lane % 4);
                if constexpr (Tile::PAIRED) {  // the two columns 4 apart
                    put(Tile::offset(row, col), acc[mt][nt][2 * r] * scale);
                    put(Tile::offset(row, col + 1), acc[mt][nt][2 * r + 1] * scale);
                } else {
                    Mma<Elem>::store_pair(tile + Tile::offset(row, col), value(acc[mt][nt][2 * r] * scale),
                                          value(acc[mt][nt][2 * r + 1] * scale));
                }
            }
        }
}

// With one scale per row held by this thread (1/l_i for the forward's output, softmax_scale for dK).
template <typename Elem, typename Tile, int M_TILES, int N_TILES>
__device__ __forceinline__ void stage_accum_in_smem(typename Tile::Storage* tile, int row0,
                                                    const float (&acc)[M_TILES][N_TILES][4],
                                                    const float (&row_scale)[M_TILES][2], int lane) {
    stage_accum_in_smem_with<Elem, Tile>(tile, row0, acc, [&](int mt, int r) { return row_scale[mt][r]; }, lane);
}

// Unscaled (dV).
template <typename Elem, typename Tile, int M_TILES, int N_TILES>
__device__ __forceinline__ void stage_accum_in_smem(typename Tile::Storage* tile, int row0,
                                                    const float (&acc)[M_TILES][N_TILES][4], int lane) {
    stage_accum_in_smem_with<Elem, Tile>(tile, row0, acc, [](int, int) { return 1.f; }, lane);
}

// A computed operand stored transposed, the accumulator's (row, col) at the tile's (col, row), split where the tile
// is: dS as queries x keys from dS^T's fragment (flash_bwd.cu HelperDq). The four queries a store's lanes write sit
// in rows whose swizzle moves their chunks apart: no bank conflicts.
template <typename Elem, typename Tile, int M_TILES, int N_TILES>
__device__ __forceinline__ void stage_operands_transposed(typename Tile::Storage* tile, int row0,
                                                          float (&acc)[M_TILES][N_TILES][4], int lane) {
    for_each_element(acc, row0, 0, lane, [&](float& x, int row, int col) {
        store_operand<Elem, Tile>(tile, Tile::offset(col, row), x);
    });
}

// A computed operand (P^T, dS^T) on its way to the other warps' products, as those take it.
template <typename Elem, typename Tile, int M_TILES, int N_TILES>
__device__ __forceinline__ void stage_operands_in_smem(typename Tile::Storage* tile, int row0,
                                                       const float (&acc)[M_TILES][N_TILES][4], int lane) {
    stage_accum_in_smem_with<Elem, Tile, true>(tile, row0, acc, [](int, int) { return 1.f; }, lane);
}

}  // namespace cf
