// Warpgroup matrix products (wgmma, sm_90a) for the forward kernel's products, and the 128-byte-swizzled shared
// tiles they read. A warpgroup (4 consecutive warps, 64 rows) issues one asynchronous product for all its rows;
// warp w of the group receives rows 16w..16w+15 in the m16n8 fragment layout the other helpers use, so the kernels
// see the same fragments whichever core computed them (WarpMma in warp_gemm.cuh is the mma.sync core).
#pragma once
#include "mma_sm80.cuh"
#include "mma_tf32.cuh"
#include "warp_gemm.cuh"
#include "wgmma_ops.cuh"

namespace cf {

using u64 = unsigned long long;

// The wgmma instructions of an element type: 16-bit (k16) or float32 read as TF32 (k8, wgmma_ops.cuh). TF32
// products read no N-major operand, so their V comes transposed (WarpgroupMma::TRANSPOSED_V).
template <typename Elem, int N> struct WgmmaFor {
    using Op = WgmmaOp<Elem, N>;
    static constexpr bool TRANSPOSED_V = false;
};
template <int N> struct WgmmaFor<tf32, N> {
    using Op = WgmmaTf32Op<N>;
    static constexpr bool TRANSPOSED_V = true;
};
template <int N> struct WgmmaFor<f32x3, N> : WgmmaFor<tf32, N> {};  // three TF32 passes a product (SplitTile)

// A ROWS x COLS tile of 16-bit (or 32-bit) elements stored as panels of 64 (32) columns, 128 bytes a row, each
// panel's rows consecutive and its 16-byte chunks XOR-swizzled with row % 8: the layout wgmma reads with the
// 128-byte swizzle, free of bank conflicts for the row-wise copies that fill it. Same interface as SmemTile
// (smem_tile.cuh), so the copies that fill and drain a tile serve both. SWIZZLE 64: panels of 64-byte rows, chunks
// XOR-swizzled with (row / 2) % 4, wgmma's 64-byte swizzle (a 16-float row: the head-dim-128 helper kernel's P^T).
template <int ROWS, int COLS, typename T = u16, int SWIZZLE = 128>
struct SwizzledTile {
    static constexpr int ELEM = sizeof(T);
    static_assert((ELEM == 2 || ELEM == 4) && (SWIZZLE == 128 || SWIZZLE == 64) && COLS % (SWIZZLE / ELEM) == 0 &&
                  ROWS % 8 == 0, "panels of SWIZZLE-byte rows in 8-row groups");
    using Storage = T;
    static constexpr bool SWIZZLED = true;
    static constexpr bool PAIRED = false;
    static constexpr bool SPLIT = false;  // one part (mma_tf32.cuh SplitTile)
    static constexpr int LO = 0;
    static constexpr int ROW_BYTES = SWIZZLE;
    static constexpr int ROW_COUNT = ROWS;
    static constexpr int CHUNK = 16 / ELEM;                 // elements per 16-byte chunk
    static constexpr int CHUNKS_PER_ROW = COLS / CHUNK;
    static constexpr int PANEL_COLS = SWIZZLE / ELEM;
    static constexpr int PANEL_BYTES = ROWS * SWIZZLE;      // a multiple of 1024 at 128: 1024-byte aligned panels
    static constexpr int BYTES = ROWS * COLS * ELEM;
    static __device__ __forceinline__ u32 byte_offset(int row, int col) {
        const int chunk = (col % PANEL_COLS) / CHUNK, mix = SWIZZLE == 128 ? row % 8 : row / 2 % 4;
        return static_cast<u32>(col / PANEL_COLS * PANEL_BYTES + row * SWIZZLE + ((chunk ^ mix) * 16) +
                                (col % CHUNK) * ELEM);
    }
    static __device__ __forceinline__ int offset(int row, int col) { return byte_offset(row, col) / ELEM; }
    // byte_offset(row0 + r, col0 + c) - byte_offset(row0, col0) for row0 % 8 == 0, col0 % PANEL_COLS == 0, r < 8,
    // c < PANEL_COLS: the part of an address within an 8-row group of a panel (128-byte rows)
    static __device__ __forceinline__ u32 in_group(int r, int c) {
        static_assert(SWIZZLE == 128, "128-byte rows");
        return static_cast<u32>(r * 128 + (((c / CHUNK) ^ r) * 16) + (c % CHUNK) * ELEM);
    }
};

// A SwizzledTile whose columns are stored, within each 8, in the order 0 2 4 6 1 3 5 7 (column 2i at i, 2i + 1 at
// i + 4): the k order in which a float A operand is read in pairs (warp_gemm.cuh load_b_pair_kmajor, PAIR_K), so that
// a TF32 wgmma of such an A with this tile as its k-major B sums matching k (the dK/dV kernel's P^T and dS^T).
// Offsets take the column's own index.
template <int ROWS, int COLS, typename T = float, int SWIZZLE = 128>
struct PairedSwizzledTile : SwizzledTile<ROWS, COLS, T, SWIZZLE> {
    using Base = SwizzledTile<ROWS, COLS, T, SWIZZLE>;
    static constexpr bool PAIRED = true;
    static __device__ __forceinline__ int stored_col(int col) {
        return (col & ~7) | ((col & 1) << 2) | ((col & 7) >> 1);
    }
    static __device__ __forceinline__ u32 byte_offset(int row, int col) {
        return Base::byte_offset(row, stored_col(col));
    }
    static __device__ __forceinline__ int offset(int row, int col) { return byte_offset(row, col) / Base::ELEM; }
};

// A split tile (mma_tf32.cuh SplitTile: hi, and lo = x - hi LO bytes after it) whose parts alternate by panel: each
// 128-byte panel holds the ROWS rows of hi, then the ROWS rows of lo, so that both parts read together are one k-major
// operand of 2 ROWS rows (WarpgroupMma::issue_qk_paired). Its copies see ROWS rows (ROW_COUNT); lo's rows are hi's
// plus ROWS, which a multiple of 8 keeps in the same swizzle.
template <int ROWS, int COLS>
struct PanelSplitTile : SwizzledTile<2 * ROWS, COLS, float> {
    static_assert(ROWS % 8 == 0, "whole 8-row groups a part");
    static constexpr bool SPLIT = true;
    static constexpr bool PANEL_PAIRED = true;
    static constexpr int LO = ROWS * 128;
    static constexpr int ROW_COUNT = ROWS;
};
template <typename Tile, typename = void> inline constexpr bool PANEL_PAIRED = false;
template <typename Tile>
inline constexpr bool PANEL_PAIRED<Tile, decltype(void(Tile::PANEL_PAIRED))> = Tile::PANEL_PAIRED;

// Zeroes rows [first_row, ROW_COUNT) of a SwizzledTile, every column: in each panel those rows are one run of
// bytes (the swizzle permutes chunks within a row). `thread` of THREADS threads, each storing 16-byte chunks.
template <typename Tile, int THREADS>
__device__ __forceinline__ void zero_rows_from(u32 tile, int first_row, int thread) {
    const int chunks_per_panel = (Tile::ROW_COUNT - first_row) * 8;
    for (int i = thread; i < chunks_per_panel * (Tile::BYTES / Tile::PANEL_BYTES); i += THREADS)
        asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n"
                     :: "r"(tile + i / chunks_per_panel * Tile::PANEL_BYTES + first_row * 128 +
                            i % chunks_per_panel * 16), "r"(0) : "memory");
}

// ---- matrix descriptors (PTX ISA, "Matrix Descriptor Format"): start address, leading and stride byte offsets
// (all >> 4), 128-byte swizzle in bits 62-63. Tiles are 1024-byte aligned, so the base offset field is 0.
__device__ __forceinline__ u64 desc_field(u32 bytes) { return static_cast<u64>((bytes & 0x3FFFF) >> 4); }
constexpr u64 SWIZZLE_128B = 1ull << 62;

// K-major operand (rows of k: Q and K for S = Q K^T): 8-row groups 1024 bytes apart; the leading offset is unused.
__device__ __forceinline__ u64 kmajor_desc(u32 addr) {
    return desc_field(addr) | (desc_field(16) << 16) | (desc_field(1024) << 32) | SWIZZLE_128B;
}
// The same for a tile of either swizzle (SwizzledTile::ROW_BYTES): 8-row groups 8 rows apart, the swizzle's mode.
template <typename Tile>
__device__ __forceinline__ u64 kmajor_desc_of(u32 addr) {
    constexpr u64 MODE = Tile::ROW_BYTES == 128 ? SWIZZLE_128B : 2ull << 62;  // (64-byte swizzle: mode 2)
    return desc_field(addr) | (desc_field(16) << 16) | (desc_field(8 * Tile::ROW_BYTES) << 32) | MODE;
}
// N-major operand (rows of k, n along the row: V for O = P V): 64-column panels `panel_bytes` apart, groups of 8
// k-rows 1024 bytes apart.
__device__ __forceinline__ u64 nmajor_desc(u32 addr, u32 panel_bytes) {
    return desc_field(addr) | (desc_field(panel_bytes) << 16) | (desc_field(1024) << 32) | SWIZZLE_128B;
}

// The descriptor of an address `bytes` past desc's: a 32-bit add to the low word (the address field, which cannot
// carry into the leading offset above it while shared addresses stay below 256 KB), the high word kept.
__device__ __forceinline__ u64 desc_plus(u64 desc, u32 bytes) {
    return (desc & ~0xFFFFFFFFull) | static_cast<u32>(static_cast<u32>(desc) + (bytes >> 4));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory"); }

// Pins an accumulator's registers at this point of the program: the compiler may not move their reads or writes
// across it, so nothing touches them while a product that writes them is in flight.
template <int N_TILES>
__device__ __forceinline__ void fence_fragment(float (&c)[N_TILES][4]) {
    #pragma unroll
    for (int j = 0; j < N_TILES; ++j)
        #pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(c[j][e]) :: "memory");
}

template <int M_TILES, int K_STEPS>
__device__ __forceinline__ void fence_fragment(u32 (&a)[M_TILES][K_STEPS][4]) {
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int k = 0; k < K_STEPS; ++k)
            #pragma unroll
            for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[mt][k][e]) :: "memory");
}

// A warp's 16 rows (from row0) of a split k-major tile, every k step of K, both parts in registers: the A operand of
// WarpgroupMma::qk_held, in mma.sync's m16n8k8 TF32 layout, which TF32 wgmma takes from registers (a[0] (g, t),
// a[1] (g + 8, t), a[2] (g, t + 4), a[3] (g + 8, t + 4) of the k step; g = lane / 4, t = lane % 4). TRANSPOSED: the
// rows are the tile's columns and k its rows (K^T from the K tile).
template <typename Tile, int K, bool TRANSPOSED = false>
__device__ __forceinline__ void load_held_rows(u32 (&hi)[1][K / 8][4], u32 (&lo)[1][K / 8][4], u32 tile, int row0,
                                               int lane) {
    static_assert(Tile::SPLIT && Tile::ELEM == 4, "a split float tile");
    #pragma unroll
    for (int kk = 0; kk < K / 8; ++kk)
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = row0 + lane / 4 + 8 * (e % 2), k = 8 * kk + lane % 4 + 4 * (e / 2);
            const u32 at = tile + (TRANSPOSED ? Tile::byte_offset(k, row) : Tile::byte_offset(row, k));
            hi[0][kk][e] = lds_u32(at);
            lo[0][kk][e] = lds_u32(at + Tile::LO);
        }
}

template <int N_TILES, bool PAIRED> struct QkSum;

// The wgmma core. qk and pv issue a product and wait for it in place; issue_qk and issue_pv only issue (one commit
// group each), and wait<N>() returns once at most N of this warpgroup's groups are in flight: until then nothing
// may touch the product's accumulator or its register operand (P), which the caller pins with fence_fragment.
struct WarpgroupMma {
    template <int ROWS, int COLS, typename T> using Tile = SwizzledTile<ROWS, COLS, T>;
    static constexpr bool WARPGROUPS = true;  // a warp owns 16 rows, four warps one product
    static constexpr int SMEM_ALIGN = 1024;   // swizzled tiles start 1024-byte aligned: the dynamic base is rounded up
    // A shared operand tile of Elem's products: f32x3's split in two (SplitTile: wgmma reads it as it is stored).
    template <typename Elem, typename Tile>
    using Operands = typename Pick<SPLITS_OPERANDS<Elem>, SplitTile<Tile>, Tile>::type;

    // cp.async fills tiles through the generic proxy; wgmma reads them through the async proxy.
    static __device__ __forceinline__ void tiles_landed() { async_proxy_fence(); }

    template <int N>
    static __device__ __forceinline__ void wait() { wgmma_wait<N>(); }

    // float32 (TF32) products read no N-major operand, so V comes transposed: V^T, head dim x keys, stored k-major,
    // its keys within each group of 8 in the order P's registers hold them (0 2 4 6 1 3 5 7: warp_gemm.cuh
    // accum_to_a_frags pairs them), written so by the caller's staging. 16-bit V is keys x head dim (N-major).
    template <typename Elem>
    static constexpr bool TRANSPOSED_V = WgmmaFor<Elem, 8>::TRANSPOSED_V;

    // s = A B^T over k < K: A = this warpgroup's 64 rows of sA (the warp's first row is row0), B = every row of sB,
    // both stored k-major (S = Q K^T). A k step is 32 bytes of a row (16 16-bit elements or 8 floats). Split tiles
    // (f32x3): three passes, lo hi + hi lo + hi hi, the small terms first (as Mma<f32x3>::run).
    // STEP_DESC: each k step's descriptors as the first's plus the step's offset (the address field is the low 14
    // bits, and no tile crosses 256 KB), rather than built whole at every step (which costs ~12 instructions a step:
    // the dK/dV kernel's 32-query products issue 16 steps a product). The forward builds them whole (its SASS as
    // measured).
    template <typename Elem, int K, typename ATile, typename BTile, bool STEP_DESC = false, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void issue_qk(float (&s)[M_TILES][N_TILES][4], u32 sA, int row0, u32 sB) {
        static_assert(M_TILES == 1 && K % ATile::PANEL_COLS == 0, "a warp owns 16 rows; whole 128-byte panels");
        static_assert(ATile::SPLIT == BTile::SPLIT, "both operands split or neither");
        constexpr int K_STEP = Mma<Elem>::K_STEP, PANEL = ATile::PANEL_COLS, PASSES = ATile::SPLIT ? 3 : 1;
        const u32 a_rows = sA + (row0 / 64 * 64) * 128;
        const u64 a_desc = kmajor_desc(a_rows), b_desc = kmajor_desc(sB);
        fence_fragment(s[0]);
        wgmma_fence();
        #pragma unroll
        for (int pass = 0; pass < PASSES; ++pass) {
            const u32 a_part = pass == 0 ? ATile::LO : 0, b_part = pass == 1 ? BTile::LO : 0;  // (0 unsplit)
            #pragma unroll
            for (int k0 = 0; k0 < K; k0 += K_STEP) {
                const u32 col = (k0 % PANEL) * ATile::ELEM;  // byte offset of k0 within its panel
                if constexpr (STEP_DESC)
                    WgmmaFor<Elem, N_TILES * 8>::Op::ss(
                        s[0], desc_plus(a_desc, a_part + k0 / PANEL * ATile::PANEL_BYTES + col),
                        desc_plus(b_desc, b_part + k0 / PANEL * BTile::PANEL_BYTES + col), pass > 0 || k0 > 0);
                else
                    WgmmaFor<Elem, N_TILES * 8>::Op::ss(
                        s[0], kmajor_desc(a_rows + a_part + k0 / PANEL * ATile::PANEL_BYTES + col),
                        kmajor_desc(sB + b_part + k0 / PANEL * BTile::PANEL_BYTES + col), pass > 0 || k0 > 0);
            }
        }
        wgmma_commit();
    }
    // issue_qk's three passes on a B split by panel (PanelSplitTile): A's hi part times B's two parts as one product
    // twice as wide (wide: hi hi in its first N_TILES / 2 n-tiles, hi lo in the rest), then A's lo part times B's hi
    // into an accumulator of its own (small: the small terms apart, as Mma<f32x3>::run_split keeps them; ptxas
    // serializes every wgmma of a kernel where one adds into part of another's accumulator). A k step reads A from
    // shared memory twice rather than three times: the dK/dV kernel's 16-query steps, where an m64n16k8 product reads
    // 2 KB of A for 8 clocks of tensor work. QkSum folds the parts once landed.
    template <typename Elem, int K, typename ATile, typename BTile, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void issue_qk_paired(float (&wide)[M_TILES][N_TILES][4],
                                                           float (&small)[M_TILES][N_TILES / 2][4], u32 sA, int row0,
                                                           u32 sB) {
        static_assert(M_TILES == 1 && ATile::SPLIT && PANEL_PAIRED<BTile> && N_TILES * 8 == 2 * BTile::ROW_COUNT &&
                      K % ATile::PANEL_COLS == 0, "a warp owns 16 rows; every row of both of B's parts");
        constexpr int PANEL = ATile::PANEL_COLS;
        const u64 a_desc = kmajor_desc(sA + (row0 / 64 * 64) * 128), b_desc = kmajor_desc(sB);
        fence_fragment(wide[0]);
        fence_fragment(small[0]);
        wgmma_fence();
        #pragma unroll
        for (int pass = 0; pass < 2; ++pass)  // A's hi times (hi | lo), then A's lo times hi
            #pragma unroll
            for (int k0 = 0; k0 < K; k0 += 8) {
                const u64 a = desc_plus(a_desc, (pass ? ATile::LO : 0) + k0 / PANEL * ATile::PANEL_BYTES +
                                                    (k0 % PANEL) * 4);
                const u64 b = desc_plus(b_desc, k0 / PANEL * BTile::PANEL_BYTES + (k0 % PANEL) * 4);
                if (pass == 0)
                    WgmmaFor<Elem, N_TILES * 8>::Op::ss(wide[0], a, b, k0 > 0);
                else
                    WgmmaFor<Elem, N_TILES * 4>::Op::ss(small[0], a, b, k0 > 0);
            }
        wgmma_commit();
    }
    template <typename Elem, int K, typename ATile, typename BTile, bool = true, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void qk(float (&s)[M_TILES][N_TILES][4], u32 sA, int row0, u32 sB, int) {
        QkSum<N_TILES, PANEL_PAIRED<BTile>> sum;
        sum.template issue<Elem, K, ATile, BTile, ATile::SPLIT>(s, sA, row0, sB);  // (STEP_DESC: f32x3's 48 steps)
        wgmma_wait<0>();
        sum.landed(s);
    }

    // qk with A held in registers (load_held_rows, f32x3's two parts; three passes as issue_qk's, B split): the
    // forward's Q at head dim 64, which it holds for its whole walk, so that its products read only K from shared
    // memory (a k step from both operands there reads 128 bytes a cycle of a TF32 m64n64k8's, all the bandwidth).
    template <typename Elem, int K, typename BTile, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void qk_held(float (&s)[M_TILES][N_TILES][4], const u32 (&hi)[1][K / 8][4],
                                                   const u32 (&lo)[1][K / 8][4], u32 sB) {
        static_assert(M_TILES == 1 && BTile::SPLIT && Mma<Elem>::K_STEP == 8, "f32x3: a warp owns 16 rows");
        constexpr int PANEL = BTile::PANEL_COLS;
        fence_fragment(s[0]);
        wgmma_fence();
        #pragma unroll
        for (int pass = 0; pass < 3; ++pass) {  // lo hi + hi lo + hi hi, the small terms first
            const u32 b_part = pass == 1 ? BTile::LO : 0;
            #pragma unroll
            for (int kk = 0; kk < K / 8; ++kk) {
                const int k0 = 8 * kk;
                WgmmaFor<Elem, N_TILES * 8>::Op::rs(
                    s[0], pass == 0 ? lo[0][kk] : hi[0][kk],
                    kmajor_desc(sB + b_part + k0 / PANEL * BTile::PANEL_BYTES + (k0 % PANEL) * BTile::ELEM),
                    pass > 0 || kk > 0);
            }
        }
        wgmma_commit();
        wgmma_wait<0>();
        fence_fragment(s[0]);
    }

    // acc += P V: P in registers as m16n8k16 A fragments (accum_to_a_frags), V = the first K rows of sB, stored
    // one row per k (N-major).
    // float32: P's registers rounded to TF32 by the caller (round_a_frags), V^T k-major.
    template <typename Elem, int K, typename BTile, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void issue_pv(float (&acc)[M_TILES][N_TILES][4],
                                                    const u32 (&a)[M_TILES][K / Mma<Elem>::K_STEP][4], u32 sB) {
        static_assert(!BTile::SPLIT, "a split B takes A's hi and lo parts (pv splits P's registers)");
        fence_fragment(acc[0]);
        wgmma_fence();
        pv_steps<Elem, K, BTile>(acc, a, sB, 1);
        wgmma_commit();
    }
    // The same for a split B (SplitTile, f32x3) and A split alike (hi, lo): lo hi + hi lo + hi hi. FRESH: acc's old
    // value ignored (a step's own sum, which the caller adds to the running one: Mma<f32x3>::SUM_PER_TILE says why).
    template <typename Elem, int K, typename BTile, bool FRESH, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void issue_pv(float (&acc)[M_TILES][N_TILES][4],
                                                    const u32 (&hi)[M_TILES][K / Mma<Elem>::K_STEP][4],
                                                    const u32 (&lo)[M_TILES][K / Mma<Elem>::K_STEP][4], u32 sB) {
        static_assert(BTile::SPLIT, "a split B");
        fence_fragment(acc[0]);
        wgmma_fence();
        pv_steps<Elem, K, BTile>(acc, lo, sB, FRESH ? 0 : 1);
        pv_steps<Elem, K, BTile>(acc, hi, sB + BTile::LO, 1);
        pv_steps<Elem, K, BTile>(acc, hi, sB, 1);
        wgmma_commit();
    }
    // The k steps of acc += A B (issue_pv), the first adding to acc's old value or (scale_first 0) not.
    template <typename Elem, int K, typename BTile, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void pv_steps(float (&acc)[M_TILES][N_TILES][4],
                                                    const u32 (&a)[M_TILES][K / Mma<Elem>::K_STEP][4], u32 sB,
                                                    int scale_first) {
        static_assert(M_TILES == 1, "a warp owns 16 rows");
        constexpr int K_STEP = Mma<Elem>::K_STEP;
        #pragma unroll
        for (int kk = 0; kk < K / K_STEP; ++kk) {
            const int scale_d = kk > 0 ? 1 : scale_first;
            if constexpr (TRANSPOSED_V<Elem>) {
                const int k0 = kk * K_STEP;
                WgmmaFor<Elem, N_TILES * 8>::Op::rs(
                    acc[0], a[0][kk],
                    kmajor_desc_of<BTile>(sB + k0 / BTile::PANEL_COLS * BTile::PANEL_BYTES +
                                          (k0 % BTile::PANEL_COLS) * 4),
                    scale_d);
            } else {
                WgmmaFor<Elem, N_TILES * 8>::Op::rs(acc[0], a[0][kk],
                                                    nmajor_desc(sB + kk * 16 * 128, BTile::PANEL_BYTES), scale_d);
            }
        }
    }
    // A split B (f32x3: the forward's V^T): P's floats split in registers first, three passes. Every column at once
    // (a warpgroup product's whole width: callers give no column slices, accumulate's CHUNK being all n-tiles).
    template <typename Elem, int K, typename BTile, int M_TILES, int N_TILES>
    static __device__ __forceinline__ void pv(float (&acc)[M_TILES][N_TILES][4],
                                              const u32 (&a)[M_TILES][K / Mma<Elem>::K_STEP][4], u32 sB, int,
                                              int = 0) {
        if constexpr (BTile::SPLIT) {
            u32 hi[M_TILES][K / Mma<Elem>::K_STEP][4], lo[M_TILES][K / Mma<Elem>::K_STEP][4];
            #pragma unroll
            for (int kk = 0; kk < K / Mma<Elem>::K_STEP; ++kk)
                #pragma unroll
                for (int e = 0; e < 4; ++e)
                    split_tf32_stored(__uint_as_float(a[0][kk][e]), hi[0][kk][e], lo[0][kk][e]);
            issue_pv<Elem, K, BTile, false>(acc, hi, lo, sB);
            wgmma_wait<0>();
            fence_fragment(hi), fence_fragment(lo);
        } else {
            issue_pv<Elem, K, BTile>(acc, a, sB);
            wgmma_wait<0>();
        }
        fence_fragment(acc[0]);
    }
};

// A warpgroup's S = A B^T in flight (rows of 16 a warp, N_TILES n-tiles): issue_qk's, in place, or (PAIRED: B a
// PanelSplitTile) issue_qk_paired's parts, which landed() adds into s once the caller waited for the product.
template <int N_TILES, bool PAIRED>
struct QkSum {
    float wide[1][PAIRED ? 2 * N_TILES : 1][4], small[1][PAIRED ? N_TILES : 1][4];

    template <typename Elem, int K, typename ATile, typename BTile, bool STEP_DESC = true>
    __device__ __forceinline__ void issue(float (&s)[1][N_TILES][4], u32 sA, int row0, u32 sB) {
        if constexpr (PAIRED) WarpgroupMma::issue_qk_paired<Elem, K, ATile, BTile>(wide, small, sA, row0, sB);
        else WarpgroupMma::issue_qk<Elem, K, ATile, BTile, STEP_DESC>(s, sA, row0, sB);
    }
    __device__ __forceinline__ void landed(float (&s)[1][N_TILES][4]) {
        if constexpr (PAIRED) {
            fence_fragment(wide[0]);
            fence_fragment(small[0]);
            #pragma unroll
            for (int j = 0; j < N_TILES; ++j)
                #pragma unroll
                for (int e = 0; e < 4; ++e) s[0][j][e] = wide[0][j][e] + (wide[0][N_TILES + j][e] + small[0][j][e]);
        } else {
            fence_fragment(s[0]);
        }
    }
};

// O += P V of one key tile in flight beside the next tile's softmax (the forward's overlapped consumers), P held as
// the product's register operand until it lands. 16-bit products add into acc in place; float32 at "highest" (V^T
// split, VTile::SPLIT) takes P's two parts and sums the tile's product in a fresh accumulator, which landed() adds to
// acc (Mma<f32x3>::SUM_PER_TILE says why: as the consumers that wait in place sum it, warp_gemm.cuh accumulate).
template <typename Elem, int BLOCK_N, typename VTile, int D_TILES>
struct PvInFlight {
    static constexpr bool SPLIT = VTile::SPLIT;
    static constexpr int K_STEPS = BLOCK_N / Mma<Elem>::K_STEP;
    u32 (&hi)[1][K_STEPS][4];                // P (unsplit: P itself), the caller's registers
    u32 lo[1][SPLIT ? K_STEPS : 1][4];       // P's remainder
    float fresh[1][SPLIT ? D_TILES : 1][4];  // the tile's P V

    __device__ __forceinline__ explicit PvInFlight(u32 (&p)[1][K_STEPS][4]) : hi(p) {}

    template <int N_TILES>
    __device__ __forceinline__ void set_p(float (&s)[1][N_TILES][4]) {
        accum_to_a_frags<Elem>(hi, s);
        if constexpr (SPLIT)
            #pragma unroll
            for (int kk = 0; kk < K_STEPS; ++kk)
                #pragma unroll
                for (int e = 0; e < 4; ++e)
                    split_tf32_stored(__uint_as_float(hi[0][kk][e]), hi[0][kk][e], lo[0][kk][e]);
    }
    __device__ __forceinline__ void issue(float (&acc)[1][D_TILES][4], u32 sV) {
        if constexpr (SPLIT) WarpgroupMma::issue_pv<Elem, BLOCK_N, VTile, true>(fresh, hi, lo, sV);
        else WarpgroupMma::issue_pv<Elem, BLOCK_N, VTile>(acc, hi, sV);
    }
    // Once waited for (WarpgroupMma::wait): acc, and P's registers, may be touched again.
    __device__ __forceinline__ void landed(float (&acc)[1][D_TILES][4]) {
        fence_fragment(acc[0]);
        fence_fragment(hi);
        if constexpr (SPLIT) {
            fence_fragment(lo);
            fence_fragment(fresh[0]);
            #pragma unroll
            for (int j = 0; j < D_TILES; ++j)
                #pragma unroll
                for (int e = 0; e < 4; ++e) acc[0][j][e] += fresh[0][j][e];
        }
    }
    // The last tile's: issued and waited for in place.
    __device__ __forceinline__ void run(float (&acc)[1][D_TILES][4], u32 sV, int lane) {
        if constexpr (SPLIT) {
            issue(acc, sV);
            wgmma_wait<0>();
            landed(acc);
        } else {
            WarpgroupMma::pv<Elem, BLOCK_N, VTile>(acc, hi, sV, lane);
        }
    }
};

}  // namespace cf
