// FlashAttention-2 backward on mma.sync tensor cores (sm_80 and later).
//
// With P = exp(logits - LSE) recomputed from the saved log-sum-exp, logits = Score(Q K^T) where Mask shows them:
//   dV = P^T dO,  dP = dO V^T,  dS = P o (dP - D) o Score' with D = rowsum(dO o O),  dQ = scale dS K,
//   dK = scale dS^T Q   (Score' = d(logit)/d(scaled score): 1 unless softcapped; see score_mod.cuh).
// With dropout (dropout.cuh: Z = the kept mask over the keep probability, regenerated from the forward's state),
//   O = (P o Z) V, so dV = (P o Z)^T dO and dS = P o (dP o Z - D) o Score', with D = rowsum(dO o O) as before.
// flash_bwd_preprocess_kernel: D, and LSE in log2 units.
// flash_bwd_dkdv_kernel: one block per BLOCK_N keys of one (batch, K/V head, split); loops over its split's share of
//   the query heads that share the K/V head and their query blocks, keeps dK and dV in registers (so grouped-query
//   gradients are summed in a fixed order), passes P^T and dS^T between warps through shared memory. With ATOMIC_DQ
//   it also adds scale * dS K into an fp32 dQ buffer with atomics (fast, order-dependent). With more than one split
//   per group it writes fp32 partials, which flash_bwd_reduce_dkdv_kernel adds in split order.
// flash_bwd_dq_kernel: the deterministic dQ, one block per BLOCK_M queries looping over keys (the forward's
//   shape): recomputes S and dP, so it costs two extra products but adds in a fixed order.
#include "mma_sm80.cuh"
#include "params.cuh"
#include "coords.cuh"
#include "bias.cuh"
#include "mask.cuh"
#include "score_mod.cuh"
#include "smem_tile.cuh"
#include "warp_gemm.cuh"
#include "wgmma.cuh"
#include "online_softmax.cuh"
#include "dropout.cuh"

namespace cf {

// The (batch, head, query) row that warp `warp_id` of a one-warp-per-row kernel handles, and its batch entry's rows;
// false past the end, or past the entry's own length (packed rows: the grid covers the longest entry).
template <typename Rows>
struct QueryRow {
    int batch, head, query;
    Seq seq;
    __device__ __forceinline__ bool locate(i64 warp_id, const AttnParams& p) {
        if (warp_id >= static_cast<i64>(p.batch) * p.nheads * p.seqlen_q) return false;
        query = warp_id % p.seqlen_q;
        const int bh = warp_id / p.seqlen_q;
        head = bh % p.nheads;
        batch = bh / p.nheads;
        seq = Rows::of(p, batch);
        return query < seq.seqlen_q;
    }
};

// One warp per query row: delta = rowsum(dO o O) in fp32, lse2 = lse * log2(e). A row that saw no key (lse = -inf)
// gets lse2 = +inf, so P = exp2(logit * scale_log2 - lse2) is 0 there rather than NaN. With a dq_accum buffer
// (atomic dQ) it also zeroes the row's fp32 dQ, saving a separate fill of that buffer.
template <typename Elem = f16, typename Rows = DenseRows>
__global__ void __launch_bounds__(128) flash_bwd_preprocess_kernel(const AttnParams p) {
    const int lane = threadIdx.x % 32;
    QueryRow<Rows> row;
    if (!row.locate(static_cast<i64>(blockIdx.x) * 4 + threadIdx.x / 32, p)) return;
    const int b = row.batch, h = row.head, m = row.query;
    const Seq& seq = row.seq;
    float dot = 0.f;
    if (lane * 8 < p.head_dim) {  // head_dim <= 256: one 16-byte chunk per lane
        float o[8], g[8];
        Mma<Elem>::load8(elems<Elem>(p.out) + row_offset(p.o_str, b, h, seq.q0 + m) + lane * 8, o);
        Mma<Elem>::load8(elems<Elem>(p.dout) + row_offset(p.do_str, b, h, seq.q0 + m) + lane * 8, g);
        #pragma unroll
        for (int i = 0; i < 8; i += 2) dot += o[i] * g[i] + o[i + 1] * g[i + 1];
        if (p.dq_accum != nullptr) {
            float4* dst = reinterpret_cast<float4*>(p.dq_accum + Rows::dq_accum_offset(p, seq, b, h, m) + lane * 8);
            dst[0] = dst[1] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    #pragma unroll
    for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    if (lane == 0) {
        const i64 at = row_values_offset(p, b, h) + m;
        const float l = p.lse[Rows::lse_offset(p, seq, b, h, m)];
        p.delta[at] = dot;
        p.lse2[at] = l == neg_inf() ? -neg_inf() : l * 1.4426950408889634f;  // log2(e)
    }
}

__device__ __forceinline__ void add4(float4& a, float4 b) {
    a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
}

// One warp per query row: dQ (Elem, any row strides, 16-byte aligned) from the fp32 atomic accumulator.
template <typename Elem = f16, typename Rows = DenseRows>
__global__ void __launch_bounds__(128) flash_bwd_convert_dq_kernel(const AttnParams p) {
    const int lane = threadIdx.x % 32;
    QueryRow<Rows> row;
    if (!row.locate(static_cast<i64>(blockIdx.x) * 4 + threadIdx.x / 32, p) || lane * 8 >= p.head_dim) return;
    const float4* src = reinterpret_cast<const float4*>(
        p.dq_accum + Rows::dq_accum_offset(p, row.seq, row.batch, row.head, row.query) + lane * 8);
    Mma<Elem>::store8(elems<Elem>(p.dq) + row_offset(p.dq_str, row.batch, row.head, row.seq.q0 + row.query) + lane * 8,
                      src[0], src[1]);
}

// One warp per (batch, key, K/V head) row: dK and dV (Elem, any row strides, 16-byte aligned) as the sums, in split
// order, of the dK/dV kernel's fp32 partials.
template <typename Elem = f16, typename Rows = DenseRows>
__global__ void __launch_bounds__(128) flash_bwd_reduce_dkdv_kernel(const AttnParams p) {
    const int lane = threadIdx.x % 32;
    const i64 row = static_cast<i64>(blockIdx.x) * 4 + threadIdx.x / 32;  // ((batch * seqlen_k) + key) * nheads_k + h
    if (row >= static_cast<i64>(p.batch) * p.seqlen_k * p.nheads_k || lane * 8 >= p.head_dim) return;
    const int kv_head = row % p.nheads_k, key = row / p.nheads_k % p.seqlen_k;
    const int batch = row / p.nheads_k / p.seqlen_k;
    const Seq seq = Rows::of(p, batch);
    if (key >= seq.seqlen_k) return;  // packed rows: the partials cover the longest entry
    const float* dk_src = p.dkv_partial + dkv_partial_offset(p, batch, kv_head * p.kv_splits, key) + lane * 8;
    const float* dv_src = dk_src + dkv_partial_size(p);
    float4 dk_lo = {}, dk_hi = {}, dv_lo = {}, dv_hi = {};
    for (int s = 0; s < p.kv_splits; ++s) {
        const float4* dk_s = reinterpret_cast<const float4*>(dk_src + s * p.head_dim);
        const float4* dv_s = reinterpret_cast<const float4*>(dv_src + s * p.head_dim);
        add4(dk_lo, dk_s[0]), add4(dk_hi, dk_s[1]), add4(dv_lo, dv_s[0]), add4(dv_hi, dv_s[1]);
    }
    Mma<Elem>::store8(elems<Elem>(p.dk) + row_offset(p.dk_str, batch, kv_head, seq.k0 + key) + lane * 8, dk_lo, dk_hi);
    Mma<Elem>::store8(elems<Elem>(p.dv) + row_offset(p.dv_str, batch, kv_head, seq.k0 + key) + lane * 8, dv_lo, dv_hi);
}

// dQ[rows] += scale * dS K for one warp's share of this step's dQ: query rows [row0, row0 + 16*ROW_TILES), head-dim
// columns [col0, col0 + COLS), from dS^T (key rows x query columns) and K in shared memory, added into the fp32
// buffer dq (rows row_stride apart) 32 (or 16) columns at a time so that a small accumulator lives next to dK and
// dV.
template <typename Elem, int ROW_TILES, int COLS, int BLOCK_N, typename DSTile, typename KVTile>
__device__ __forceinline__ void accumulate_dq_atomic(float* dq, i64 row_stride, u32 sdS, u32 sK, int row0,
                                                     int col0, int rows_valid, int head_dim, float scale,
                                                     int lane) {
    constexpr int CHUNK = COLS % 32 == 0 ? 32 : 16;
    #pragma unroll
    for (int c0 = col0; c0 < col0 + COLS; c0 += CHUNK) {
        if (c0 >= head_dim) break;  // zero-padded head-dim columns: nothing to add
        float c[ROW_TILES][CHUNK / 8][4] = {};
        gemm_smem_smem<Elem, ROW_TILES, CHUNK / 8, BLOCK_N, DSTile, KVTile, true, true>(c, sdS, row0, sK, c0,
                                                                                         lane);
        #pragma unroll
        for (int mt = 0; mt < ROW_TILES; ++mt)
            #pragma unroll
            for (int nt = 0; nt < CHUNK / 8; ++nt)
                atomic_add_fragment(dq, row_stride, c[mt][nt], row0 + 16 * mt, c0 + 8 * nt, rows_valid, head_dim,
                                    scale, lane);
    }
}

// A helper warpgroup's dQ on wgmma: dQ^T = K^T dS^T, a product of 64 head-dim rows x the step's queries for each 64
// of the head dim (one at 64, two at 128), with K^T's two parts held in registers for the walk (A, k = keys:
// load_held_rows of the K tile, transposed; 128 registers at 128) and the step's dS as a queries x keys tile (B,
// k-major), written beside dS^T by the math warps. On mma.sync (dQ = dS K from dS^T and K in shared memory) the
// helper's dQ outlasted the math warps' first products: they waited ~30% of a step at its barrier, and its operand
// loads were a quarter of the block's shared-memory traffic (twenty-sixth session's profile,
// docs/measurements/2026-11-27-h100-s26-profile.md).
template <typename Elem, int BLOCK_M, int BLOCK_N, int HEAD_DIM>
struct HelperDq {
    static constexpr int MB = HEAD_DIM / 64;  // 64 head-dim rows a product
    u32 kt_hi[MB][1][BLOCK_N / 8][4], kt_lo[MB][1][BLOCK_N / 8][4];  // this warp's 16 rows of each, every key

    template <typename KVTile>
    __device__ __forceinline__ void hold_keys(u32 sK, int warp, int lane) {
        #pragma unroll
        for (int mb = 0; mb < MB; ++mb)
            load_held_rows<KVTile, BLOCK_N, true>(kt_hi[mb], kt_lo[mb], sK, 64 * mb + 16 * (warp % 4), lane);
    }
    // dq[query][col] += scale dQ^T[col][query] of the step whose dS tile is at sDs (rows_valid queries)
    template <typename DsTile>
    __device__ __forceinline__ void add(float* dq, i64 row_stride, u32 sDs, int rows_valid, int head_dim,
                                        float scale, int warp, int lane) const {
        #pragma unroll
        for (int mb = 0; mb < MB; ++mb) {
            float c[1][BLOCK_M / 8][4];
            WarpgroupMma::qk_held<Elem, BLOCK_N, DsTile>(c, kt_hi[mb], kt_lo[mb], sDs);
            #pragma unroll
            for (int nt = 0; nt < BLOCK_M / 8; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = 64 * mb + 16 * (warp % 4) + lane / 4 + 8 * (e / 2);
                    const int query = 8 * nt + 2 * (lane % 4) + e % 2;
                    if (query < rows_valid && col < head_dim)
                        atomicAdd(dq + query * row_stride + col, c[0][nt][e] * scale);
                }
        }
    }
};

// A warpgroup's A operands of dV^T += dO^T P (or dK^T += Q^T dS): the step's dO (Q) tile read transposed, head-dim
// rows 64 mb + 16 (warp % 4).. of the mb-th product, its queries k-paired (a[0] and a[2] hold queries 2 (lane % 4)
// and the next: the order PairedSwizzledTile stores P^T's and dS^T's columns in).
template <typename QTile, int BLOCK_M, int MB>
__device__ __forceinline__ void load_transposed_a(u32 (&a)[MB][1][BLOCK_M / 8][4], u32 tile, int warp, int lane,
                                                  int mb0 = 0) {  // (products mb0 .. mb0 + MB - 1)
    #pragma unroll
    for (int mb = 0; mb < MB; ++mb)
        #pragma unroll
        for (int kk = 0; kk < BLOCK_M / 8; ++kk) {
            u32 b[4];  // (k, n), (k + 1, n), (k, n + 8), (k + 1, n + 8): n the head-dim row, k the query
            load_b_pair_kmajor<QTile, true>(b, tile, 64 * (mb0 + mb) + 16 * (warp % 4), 8 * kk, lane);
            a[mb][0][kk][0] = b[0], a[mb][0][kk][1] = b[2], a[mb][0][kk][2] = b[1], a[mb][0][kk][3] = b[3];
        }
}

// The end of a dK/dV block on warpgroups: dK = scale dK^T^T and dV (or, with kv_splits > 1, the split's fp32
// partials), from the transposed accumulators (element e of n-tile nt of product mb: head-dim row
// 64 mb + 16 (warp % 4) + lane / 4 + 8 (e / 2), key column 64 (warp / 4) + 8 nt + 2 (lane % 4) + e % 2), staged
// through the K and V tiles for 16-byte stores. Warps before FIRST_WARP (a helper warpgroup) hold no gradients and
// only store; warp numbers above count from FIRST_WARP.
template <typename Elem, typename KVTile, int THREADS, int FIRST_WARP = 0, int MB, int NT>
__device__ __forceinline__ void store_transposed_grads(const AttnParams& p, const float (&acc_dk)[MB][1][NT][4],
                                                       const float (&acc_dv)[MB][1][NT][4],
                                                       typename KVTile::Storage* sK, typename KVTile::Storage* sV,
                                                       int batch, int slot, int n0, const Seq& seq, int warp,
                                                       int lane) {
    const int keys = seq.seqlen_k - n0, head_dim = p.head_dim;
    float* dk_part = nullptr;  // with kv_splits > 1: this split's share of the group, unrounded, for
    float* dv_part = nullptr;  // flash_bwd_reduce_dkdv_kernel
    const i64 row_stride = static_cast<i64>(p.nheads_k) * p.kv_splits * head_dim;
    if (p.kv_splits > 1) {
        dk_part = p.dkv_partial + dkv_partial_offset(p, batch, slot, n0);
        dv_part = dk_part + dkv_partial_size(p);
    } else {
        __syncthreads();  // every warp is done with K and V
    }
    warp -= FIRST_WARP;
    #pragma unroll
    for (int mb = 0; mb < MB; ++mb)
        #pragma unroll
        for (int nt = 0; nt < NT && (FIRST_WARP == 0 || warp >= 0); ++nt)
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = 64 * (warp / 4) + 8 * nt + 2 * (lane % 4) + e % 2;
                const int col = 64 * mb + 16 * (warp % 4) + lane / 4 + 8 * (e / 2);
                const float dk = acc_dk[mb][0][nt][e] * p.softmax_scale, dv = acc_dv[mb][0][nt][e];
                if (dk_part == nullptr) {
                    sK[KVTile::offset(key, col)] = dk;
                    sV[KVTile::offset(key, col)] = dv;
                } else if (key < keys && col < head_dim) {
                    dk_part[key * row_stride + col] = dk;
                    dv_part[key * row_stride + col] = dv;
                }
            }
    if (dk_part != nullptr) return;
    __syncthreads();
    store_tile<KVTile, THREADS>(elems<Elem>(p.dv) + row_offset(p.dv_str, batch, slot, seq.k0 + n0), sV, p.dv_str.seq,
                                keys, head_dim);
    store_tile<KVTile, THREADS>(elems<Elem>(p.dk) + row_offset(p.dk_str, batch, slot, seq.k0 + n0), sK, p.dk_str.seq,
                                keys, head_dim);
}

// Whether the backward kernels' S and dP products sum their small terms apart (float32 at "highest" on mma_tf32:
// warp_gemm.cuh gemm_smem_smem): not where a bias beside a score modifier leaves no registers for them, above head
// dim 128 or with dropout (the CPU compile check: the dQ kernel at 192 with the band mask, softcap, ALiBi and a
// float32 bias spilled 16 bytes; a sweep of the picks: the dK/dV kernel at 64 and 256 with dropout too).
template <int HEAD_DIM, typename Score, typename Bias, typename Drop>
__host__ __device__ constexpr bool small_terms_apart() {
    return !(Bias::ON && !Score::IDENTITY && (HEAD_DIM > 128 || Drop::ON));
}

// Whether the backward adds a bias after S's product rather than starting S from it: float32 "highest", whose
// truncated tensor-core additions onto the bias erred relative to the bias's size (with a float32 pair bias at head
// dims 64 and 128, dQ, dK and dV 2.2-5.5x plain float32's error before, 1.2-2.1x after; H100, twenty-ninth
// session). Plain scores up to head dim 128, without dropout or a block-sparse mask: elsewhere it spilled.
template <typename Elem, int HEAD_DIM, typename Score, typename Bias, typename Drop>
__host__ __device__ constexpr bool bias_after_products() {
    return Mma<Elem>::SUM_PER_TILE && HEAD_DIM <= 128 && Score::IDENTITY && !Drop::ON && !Bias::Tiles::SKIPS;
}

// Dynamic shared memory of the dK/dV kernel: room to align the tiles as the core needs, K, V, P^T, dS^T (BLOCK_N x
// BLOCK_M; with a helper warpgroup also two dS, BLOCK_M x BLOCK_N, of alternate steps), then STAGES Q tiles, STAGES
// dO tiles, STAGES x 2 rows of BLOCK_M floats (lse2, delta) and STAGES bias tiles (none without a bias). Python's
// smem_bytes("bwd") computes the same number.
template <typename Core>
__host__ __device__ constexpr bool has_helper_warpgroup(int warps, int block_n) {  // (flash_bwd_dkdv_kernel HELPER)
    return Core::WARPGROUPS && warps * 16 == block_n + 64;
}
// The query columns of the P^T and dS^T tiles: a step's queries, or on warpgroups at least a 128-byte row of them
// (32 floats: the swizzled tiles' panel), of which a 16-query step fills the first half; with a helper warpgroup a
// 16-float row in the 64-byte swizzle (the 16 KB the half-filled tiles left empty hold the helper's dS tiles).
template <typename Core, typename S>
__host__ __device__ constexpr int p_tile_cols(int block_m, bool helper = false) {
    if (!Core::WARPGROUPS || block_m * static_cast<int>(sizeof(S)) >= 128) return block_m;
    return helper && block_m * static_cast<int>(sizeof(S)) == 64 ? block_m : 128 / static_cast<int>(sizeof(S));
}
// The P^T and dS^T tile type (key rows x p_tile_cols query columns; warpgroups: swizzled, columns k-paired)
template <typename Elem, typename Core, int BLOCK_M, int BLOCK_N, bool HELPER, typename S = typename Mma<Elem>::Storage,
          int COLS = p_tile_cols<Core, S>(BLOCK_M, HELPER)>
using PTileOf = typename Core::template Operands<
    Elem, typename Pick<Core::WARPGROUPS, PairedSwizzledTile<BLOCK_N, COLS, S, (COLS * sizeof(S) < 128 ? 64 : 128)>,
                        SmemTile<BLOCK_N, BLOCK_M, S>>::type>;
template <typename Elem, int HEAD_DIM, int BLOCK_M, int BLOCK_N, int STAGES, typename Bias, typename Core = WarpMma,
          int WARPS = 0>
__host__ __device__ constexpr int bwd_dkdv_smem_bytes() {
    using S = typename Mma<Elem>::Storage;
    using C = Core;  // (operand tiles: f32x3's split in two on warpgroups)
    constexpr bool HELPER = has_helper_warpgroup<Core>(WARPS, BLOCK_N);
    constexpr int P_TILES = HELPER ? 4 : 2;  // a helper's dS, two steps
    return Core::SMEM_ALIGN + 2 * C::template Operands<Elem, typename C::template Tile<BLOCK_N, HEAD_DIM, S>>::BYTES +
           P_TILES * PTileOf<Elem, Core, BLOCK_M, BLOCK_N, HELPER>::BYTES +
           2 * STAGES * C::template Operands<Elem, typename C::template Tile<BLOCK_M, HEAD_DIM, S>>::BYTES +
           STAGES * 2 * BLOCK_M * 4 + STAGES * Bias::template tile_bytes<BLOCK_M, BLOCK_N>();
}

// Warps form a KEY_WARPS x D_SPLIT grid. Warp (g, j) computes S^T and dP^T for key rows [32g, 32g + 32) (BLOCK_N /
// KEY_WARPS of them) and the j-th 1/D_SPLIT of the step's queries, then owns the same key rows of dK and dV for
// the j-th 1/D_SPLIT of the head dim. P^T and dS^T pass between the two layouts through shared memory. Owning 32
// key rows rather than 16 halves how often each Q and dO fragment is read from shared memory per product, which
// is what bounds this kernel (ldmatrix bandwidth, not tensor cores).
// Core: WarpMma, or WarpgroupMma (float32 as TF32 on sm_90a): S^T = K Q^T and dP^T = V dO^T by warpgroups, warp w
// owning key rows 16w..16w+15 and every query of the step for them and for the elementwise work (the "S layout"),
// and dV^T += dO^T P, dK^T += Q^T dS by warpgroups too, transposed: a warpgroup's rows are the head dim (64 a
// product) and its columns its 64 keys, dO^T and Q^T register operands read from the swizzled dO and Q tiles, P^T
// and dS^T k-major B operands in shared memory (their queries in the paired order: PairedSwizzledTile). dQ stays on
// mma.sync, reading dS^T and K from those tiles.
template <typename Elem = f16, int HEAD_DIM = 128, int BLOCK_M = 64, int BLOCK_N = 128, int WARPS = 8,
          int STAGES = 2, int MIN_BLOCKS = 1, typename Mask = NoMask, typename Score = ScoreMod<>,
          typename Bias = NoBias, typename Rows = DenseRows, typename Drop = NoDropout, bool ATOMIC_DQ = true,
          int D_SPLIT = 2, typename Core = WarpMma,
          int SMEM_BYTES = bwd_dkdv_smem_bytes<Elem, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, Bias, Core, WARPS>()>
__global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS) flash_bwd_dkdv_kernel(const AttnParams p) {
    constexpr int THREADS = WARPS * 32;
    // HELPER (warpgroups, one more than the key rows take): warpgroup 0 copies and splits the steps' tiles and adds
    // dQ (of the step before, on wgmma: HelperDq) while the others compute S^T, dP^T, P^T, dS^T, dV^T and dK^T.
    constexpr bool HELPER = has_helper_warpgroup<Core>(WARPS, BLOCK_N);
    static_assert(!HELPER || !Bias::Tiles::SKIPS, "a helper walks no mask: it loads steps without their walk entries");
    constexpr int MATH_WARPS = HELPER ? WARPS - 4 : WARPS;  // the warps that own key rows
    constexpr int COPY_THREADS = HELPER ? 128 : THREADS;    // the threads that copy (and split) tiles
    constexpr int DQ_WARPS = HELPER ? 4 : WARPS;            // the warps that compute dQ
    constexpr int KEY_WARPS = MATH_WARPS / D_SPLIT;
    constexpr int KEY_TILES = BLOCK_N / KEY_WARPS / 16;   // m16 tiles of key rows per warp
    constexpr int WARP_QUERIES = BLOCK_M / D_SPLIT;        // S^T columns per warp
    constexpr int WARP_D = HEAD_DIM / D_SPLIT;             // dK/dV columns per warp
    // dQ = dS K (BLOCK_M x HEAD_DIM) over the same warps: DQ_ROW_TILES m16 tiles of queries each (two where the
    // split allows: fewer K fragment reads), the head dim split over the warps that share a row range.
    constexpr bool DQ_PAIRS = BLOCK_M % 32 == 0 && BLOCK_M / 32 <= DQ_WARPS && DQ_WARPS % (BLOCK_M / 32) == 0 &&
                              HEAD_DIM / (DQ_WARPS / (BLOCK_M / 32)) % 16 == 0;
    constexpr int DQ_ROW_TILES = DQ_PAIRS ? 2 : 1;
    constexpr int DQ_ROW_WARPS = BLOCK_M / (16 * DQ_ROW_TILES);
    constexpr int DQ_COLS = HEAD_DIM / (DQ_WARPS / DQ_ROW_WARPS);
    static_assert(MATH_WARPS % D_SPLIT == 0 && BLOCK_N % (16 * KEY_WARPS) == 0 && STAGES >= 2, "key rows per warp");
    static_assert(WARP_QUERIES % 16 == 0 && WARP_D % 16 == 0, "queries and head dim split in n16 pairs");
    static_assert(DQ_WARPS % DQ_ROW_WARPS == 0 && DQ_COLS % 16 == 0, "dQ split over warps");
    static_assert(SMEM_BYTES == bwd_dkdv_smem_bytes<Elem, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, Bias, Core, WARPS>(),
                  "Python's smem formula");
    static_assert(!(Bias::ON && Rows::PACKED), "bias with packed rows");
    // (a bias is added into S^T before its product, which a wgmma's first k step would overwrite)
    static_assert(!Core::WARPGROUPS || (BLOCK_N == 16 * MATH_WARPS && D_SPLIT == 1 && !Bias::ON && HEAD_DIM % 64 == 0 &&
                                        BLOCK_M % 16 == 0 && !Drop::ON),
                  "warpgroup products: a warp owns 16 key rows and every query of a step, 64 head-dim rows of dK^T "
                  "and dV^T a product (no head-dim split); without a bias or dropout");
    // The S layout: S^T, dP^T, P^T and dS^T of S_KEY_TILES m16 tiles of keys x S_QUERIES queries a warp.
    constexpr int S_KEY_TILES = Core::WARPGROUPS ? 1 : KEY_TILES;
    constexpr int S_QUERIES = Core::WARPGROUPS ? BLOCK_M : WARP_QUERIES;
    using S = typename Mma<Elem>::Storage;
    // (f32x3 on warpgroups: every operand tile in two parts, hi and lo, split where it is written: mma_tf32.cuh
    // SplitTile; the products take three passes, dQ's mma.sync reads the parts rather than splitting fragments)
    using KVTile = typename Core::template Operands<Elem, typename Core::template Tile<BLOCK_N, HEAD_DIM, S>>;
    // (16 queries a step on warpgroups at "highest": Q's and dO's parts alternate by panel, so that S^T's and dP^T's
    // products read K's and V's hi part once for both of a step's parts: WarpgroupMma::issue_qk_paired)
    constexpr bool PAIRED_Q = Core::WARPGROUPS && SPLITS_OPERANDS<Elem> && BLOCK_M == 16;
    using QTile = typename Pick<PAIRED_Q, PanelSplitTile<BLOCK_M, HEAD_DIM>, typename Core::template Operands<
                                              Elem, typename Core::template Tile<BLOCK_M, HEAD_DIM, S>>>::type;
    // P^T and dS^T: key rows x query columns (on warpgroups at least 32, or 16 with a helper: p_tile_cols)
    using PTile = PTileOf<Elem, Core, BLOCK_M, BLOCK_N, HELPER>;

    // A helper's dS tiles (queries x keys, of alternate steps) for its dQ^T = K^T dS^T (HelperDq), after P^T and dS^T
    using DsTile = typename Core::template Operands<Elem, typename Core::template Tile<BLOCK_M, BLOCK_N, S>>;
    static_assert(!HELPER || (DsTile::BYTES == PTile::BYTES && HEAD_DIM % 64 == 0 && DsTile::SPLIT),
                  "a helper warpgroup: at \"highest\" (its dQ's wgmma reads split tiles), dS as P^T's size");
    constexpr int P_OFF = 2 * KVTile::BYTES, Q_OFF = P_OFF + (HELPER ? 4 : 2) * PTile::BYTES;
    constexpr int DO_OFF = Q_OFF + STAGES * QTile::BYTES, ROW_OFF = DO_OFF + STAGES * QTile::BYTES;
    constexpr int BIAS_OFF = ROW_OFF + STAGES * 2 * BLOCK_M * 4;
    constexpr int BIAS_BYTES = Bias::template tile_bytes<BLOCK_M, BLOCK_N>();
    static_assert(!Core::SMEM_ALIGN || (P_OFF % Core::SMEM_ALIGN == 0 && Q_OFF % Core::SMEM_ALIGN == 0 &&
                                        QTile::BYTES % Core::SMEM_ALIGN == 0), "tiles aligned as the core reads them");
    extern __shared__ uint4 smem_raw[];
    // (the dynamic base is 16-aligned: aligned up as the core's tiles need)
    constexpr u32 ALIGN = Core::SMEM_ALIGN;
    char* smem = reinterpret_cast<char*>(smem_raw) + (ALIGN ? (ALIGN - smem_addr(smem_raw) % ALIGN) % ALIGN : 0);
    S* sK = reinterpret_cast<S*>(smem);
    S* sV = sK + KVTile::BYTES / sizeof(S);
    S* sP = reinterpret_cast<S*>(smem + P_OFF);
    S* sdS = sP + PTile::BYTES / sizeof(S);
    S* sDs = sdS + PTile::BYTES / sizeof(S);  // (a helper's)
    const u32 sK_addr = smem_addr(smem), sV_addr = sK_addr + KVTile::BYTES;
    const u32 sP_addr = sK_addr + P_OFF, sdS_addr = sP_addr + PTile::BYTES, sDs_addr = sdS_addr + PTile::BYTES;
    const u32 sQ_addr = sK_addr + Q_OFF, sdO_addr = sK_addr + DO_OFF, sRow_addr = sK_addr + ROW_OFF;
    const float* sRow = reinterpret_cast<const float*>(smem + ROW_OFF);

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int mwarp = HELPER ? warp - 4 : warp;  // among the warps that own key rows (negative: the helper's)
    // Block::slot() = kv_head * kv_splits + split (kv_head itself without splits): the split's query heads start at
    // slot * heads_per_split. Block's fields are re-read from the grid position rather than held across the loop
    // (registers). With dbias, batches are the grid's fastest dimension (KeyBlock, coords.cuh).
    using Block = KeyBlock<Bias::GRAD>;
    const int kv_head = Block::slot() / p.kv_splits, batch = Block::batch();
    const int n0 = Block::tile() * BLOCK_N;
    const Seq seq = Rows::of(p, batch);
    if (Rows::PACKED && n0 >= seq.seqlen_k) return;  // packed rows: the grid covers the longest entry
    const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k, head_dim = p.head_dim;
    const int warp_key0 = mwarp / D_SPLIT * 16 * KEY_TILES;
    const int warp_query0 = warp % D_SPLIT * WARP_QUERIES, d_col0 = warp % D_SPLIT * WARP_D;
    const int s_key0 = Core::WARPGROUPS ? 16 * mwarp : warp_key0, s_query0 = Core::WARPGROUPS ? 0 : warp_query0;
    const int dq_row0 = warp % DQ_ROW_WARPS * 16 * DQ_ROW_TILES, dq_col0 = warp / DQ_ROW_WARPS * DQ_COLS;
    const Mask mask(p, seq);

    // Steps walk the query tiles that see these keys, for each query head of this block's split in turn: dense step
    // s is query head slot * heads_per_split + s / m_steps, query tile first + s % m_steps. Step t is dense
    // step t, or with a boolean mask's tile summary the t-th dense step whose tile holds a visible pair
    // (next_load: the entry of the next one to load, 2 * dense step + partial).
    const int2 query_tiles = mask.template query_tiles<BLOCK_M, BLOCK_N>(n0, seqlen_q);
    const int m_steps = query_tiles.y - query_tiles.x;
    const int dense_steps = m_steps * p.heads_per_split;
    const unsigned long long m_steps_magic = division_magic(max(m_steps, 1));  // s / m_steps without a division
    auto step_head = [&](int s) {
        return static_cast<int>(Block::slot()) * p.heads_per_split + divide(s, m_steps, m_steps_magic);
    };
    auto step_tile = [&](int s) { return query_tiles.x + s - divide(s, m_steps, m_steps_magic) * m_steps; };

    using Tiles = typename Bias::Tiles;
    auto tiles_of = [&](int head) { return Tiles(p, true, batch, head, Block::tile()); };
    auto entry_after = [&](int entry) {  // the entry of the first dense step past entry's holding a visible pair
        for (int s = entry == -1 ? dense_steps : (entry >> 1) + 1; s < dense_steps;) {
            const int tile = step_tile(s);
            const int found = tiles_of(step_head(s)).first_entry(tile, query_tiles.y);
            if (found >= 0) return found + 2 * (s - tile);
            s += query_tiles.y - tile;
        }
        return -1;
    };
    int n_steps = dense_steps;
    if constexpr (Tiles::SKIPS) {
        n_steps = 0;
        for (int h = 0; h < p.heads_per_split; ++h)
            n_steps += tiles_of(Block::slot() * p.heads_per_split + h).count(query_tiles.x, query_tiles.y);
    }

    // entry: step t's walk entry (Tiles::SKIPS), stashed with its mask tile for the math.
    auto load_step = [&](int t, int entry) {
        const int s = Tiles::SKIPS ? entry >> 1 : t, stage = t % STAGES;
        const int head = step_head(s), m0 = step_tile(s) * BLOCK_M;
        load_tile_async<QTile, COPY_THREADS>(sQ_addr + stage * QTile::BYTES,
                                             elems<Elem>(p.q) + row_offset(p.q_str, batch, head, seq.q0 + m0),
                                             p.q_str.seq, seqlen_q - m0, head_dim);
        load_tile_async<QTile, COPY_THREADS>(sdO_addr + stage * QTile::BYTES,
                                             elems<Elem>(p.dout) + row_offset(p.do_str, batch, head, seq.q0 + m0),
                                             p.do_str.seq, seqlen_q - m0, head_dim);
        const i64 rows = row_values_offset(p, batch, head) + m0;
        load_row_values_async<BLOCK_M, COPY_THREADS>(sRow_addr + stage * 2 * BLOCK_M * 4, p.lse2 + rows,
                                                     seqlen_q - m0);
        load_row_values_async<BLOCK_M, COPY_THREADS>(sRow_addr + (stage * 2 + 1) * BLOCK_M * 4, p.delta + rows,
                                                     seqlen_q - m0);
        if constexpr (Bias::ON)
            Bias::template load_tile<BLOCK_M, BLOCK_N, THREADS>(sK_addr + BIAS_OFF + stage * BIAS_BYTES, p, batch,
                                                                head, m0, n0, seqlen_q - m0, seqlen_k - n0, entry);
        if constexpr (Tiles::SKIPS) Bias::template stash<BLOCK_N, 0>(sK_addr + BIAS_OFF + stage * BIAS_BYTES, entry);
    };

    load_tile_async<KVTile, COPY_THREADS>(sK_addr,
                                          elems<Elem>(p.k) + row_offset(p.k_str, batch, kv_head, seq.k0 + n0),
                                          p.k_str.seq, seqlen_k - n0, head_dim);
    load_tile_async<KVTile, COPY_THREADS>(sV_addr,
                                          elems<Elem>(p.v) + row_offset(p.v_str, batch, kv_head, seq.k0 + n0),
                                          p.v_str.seq, seqlen_k - n0, head_dim);
    // The entry of the next step to load. Each step's end finds it from the entry its load stashed, so that it is
    // live from there to the next load only, not across the products (at the largest tiles that register spills).
    int next_load = Tiles::SKIPS ? entry_after(-2) : 0;  // -2: the entry before dense step 0
    fill_pipeline<STAGES, Tiles::SKIPS>(n_steps, next_load, load_step, entry_after);
    // float32 at "tf32": with atomic dQ, K and V come unrounded (cupyflash/backward.py stages Q and dO only, which
    // every step reloads); they are rounded here, once a block. The loop's first barrier orders it before the products.
    if constexpr (ROUNDS_OPERANDS<Elem>) {
        cp_async_wait<STAGES - 2>();  // the first group: K, V and step 0's tiles
        __syncthreads();
        round_tile_to_tf32<KVTile, THREADS>(sK);
        round_tile_to_tf32<KVTile, THREADS>(sV);
    }
    // f32x3 on warpgroups: K and V split once a block, and each step's Q and dO once they landed, by the threads that
    // copied them (split_copied_tile): step t + 1's during step t's last product, so that the loop's first barrier
    // orders them before the products that read them.
    auto split_step = [&](int t) {
        if constexpr (QTile::SPLIT) {
            split_copied_tile<QTile, COPY_THREADS>(reinterpret_cast<float*>(smem + Q_OFF + t % STAGES * QTile::BYTES));
            split_copied_tile<QTile, COPY_THREADS>(reinterpret_cast<float*>(smem + DO_OFF + t % STAGES * QTile::BYTES));
        }
    };
    if constexpr (KVTile::SPLIT) {
        cp_async_wait<STAGES - 2>();  // this thread's copies of the first group: K, V and step 0's tiles
        split_copied_tile<KVTile, COPY_THREADS>(sK);
        split_copied_tile<KVTile, COPY_THREADS>(sV);
        if (n_steps > 0) split_step(0);
    }

    // dV and dK: a warp's KEY_TILES x WARP_D share, or on warpgroups dV^T and dK^T, HEAD_DIM / 64 products of 64
    // head-dim rows x the warpgroup's 64 keys
    // (both types are formed: the warpgroups' stays non-empty below head dim 64, where it is never picked)
    constexpr int PRODUCTS = HEAD_DIM / 64 > 0 ? HEAD_DIM / 64 : 1;
    using Grads = typename Pick<Core::WARPGROUPS, float[PRODUCTS][1][BLOCK_N / MATH_WARPS * 4 / 8][4],
                                float[KEY_TILES][WARP_D / 8][4]>::type;
    Grads acc_dv = {}, acc_dk = {};
    typename Bias::template Grad<S_KEY_TILES, S_QUERIES / 8> dbias;  // nothing unless the bias's gradient is on

    // dQ += scale dS K into the fp32 buffer, a contiguous (batch, seqlen_q, nheads, head_dim) array: the step of
    // (head, m0), its dS^T in the tile at ds
    auto add_dq = [&](int head, int m0, u32 ds) {
        if constexpr (ATOMIC_DQ)
            accumulate_dq_atomic<Elem, DQ_ROW_TILES, DQ_COLS, BLOCK_N, PTile, KVTile>(
                p.dq_accum + Rows::dq_accum_offset(p, seq, batch, head, m0), static_cast<i64>(p.nheads) * head_dim,
                ds, sK_addr, dq_row0, dq_col0, seqlen_q - m0, head_dim, p.softmax_scale, lane);
    };

    // Step t's start, for every warp.
    auto begin_step = [&](int t) {
        cp_async_wait<STAGES - 2>();
        Core::tiles_landed();  // (wgmma reads through the async proxy what cp.async and the rounding wrote)
        __syncthreads();  // step t visible to all warps; every warp is done with the stage refilled below, and
                          // with the previous step's P^T and dS^T
        if (t + STAGES - 1 < n_steps) load_step(t + STAGES - 1, next_load);
        cp_async_commit();
    };
    if constexpr (HELPER) {
        // The helper's walk: the step before's dQ while the others compute S^T, dP^T, P^T and dS^T, then, past the
        // barrier where those are complete, the next step's Q and dO split as they land while the others run dV^T
        // and dK^T. (Every warp meets both of the step's barriers: with the P^T/dS^T barrier named for the math
        // warps alone, compute-sanitizer's racecheck reported WAR hazards between their reads of a stage and the
        // helper's copies into it two steps later, across the full barrier that orders them; with both barriers
        // block-wide, none. docs/performance.md, twenty-fifth session.) Its own loop, so that the K^T operands it
        // holds are live in it alone, not across the math warps' products.
        if (mwarp < 0) {
            HelperDq<Elem, BLOCK_M, BLOCK_N, HEAD_DIM> dq;
            auto add_dq_of = [&](int s) {  // step s's, from its dS tile
                const int m0 = step_tile(s) * BLOCK_M;
                dq.template add<DsTile>(p.dq_accum + Rows::dq_accum_offset(p, seq, batch, step_head(s), m0),
                                        static_cast<i64>(p.nheads) * head_dim, sDs_addr + s % 2 * DsTile::BYTES,
                                        seqlen_q - m0, head_dim, p.softmax_scale, warp, lane);
            };
            for (int t = 0; t < n_steps; ++t) {
                begin_step(t);
                if constexpr (ATOMIC_DQ) {
                    if (t == 0) dq.template hold_keys<KVTile>(sK_addr, warp, lane);  // split before the barrier
                    else add_dq_of(t - 1);
                }
                __syncthreads();  // the math warps' P^T and dS^T barrier
                if (t + 1 < n_steps) {
                    cp_async_wait<STAGES - 2>();
                    split_step(t + 1);
                }
            }
            cp_async_wait<0>();
            __syncthreads();  // the last step's dS complete
            if (ATOMIC_DQ && n_steps > 0) add_dq_of(n_steps - 1);
        }
    }
    const bool math_walk = !HELPER || mwarp >= 0;  // (the helper walked its own loop above)
    for (int t = 0; math_walk && t < n_steps; ++t) {
        begin_step(t);
        int entry = 1;  // 2 * dense step + partial (a mask's walk)
        if constexpr (Tiles::SKIPS)
            entry = Bias::template stashed<BLOCK_N, 0>(sK_addr + BIAS_OFF + t % STAGES * BIAS_BYTES);

        // (with a helper at head dim 128 and the band mask the stage made warp-uniform (shfl): the products'
        // descriptors then stay on the uniform datapath rather than in registers built ahead, which spilled there;
        // without the mask it cost 1.5-2% at 4k-8k on the H100, twenty-seventh session)
        constexpr bool UNIFORM_STAGE = HELPER && HEAD_DIM >= 128 && Mask::MASKS;
        const int dense = Tiles::SKIPS ? entry >> 1 : t;
        const int stage = UNIFORM_STAGE ? __shfl_sync(0xffffffffu, t % STAGES, 0) : t % STAGES;
        const int head = step_head(dense), m0 = step_tile(dense) * BLOCK_M;
        const u32 sQ_t = sQ_addr + stage * QTile::BYTES, sdO_t = sdO_addr + stage * QTile::BYTES;
        const float* sLse2 = sRow + stage * 2 * BLOCK_M;
        const float* sDelta = sLse2 + BLOCK_M;
        const Score score(p, seq, batch, head);
        const Drop drop(p, batch, head);

        // (the keep bits before the products, dropout.cuh; key0 and query0 after them, not live across them)
        const auto kept = drop.template kept<true, S_KEY_TILES, S_QUERIES / 8>(n0 + s_key0, m0 + s_query0, lane);
        // S^T = bias^T + K Q^T and dP^T = V dO^T for this warp's keys x queries (raw scores); logits = Score(S^T)
        float s[S_KEY_TILES][S_QUERIES / 8][4] = {};
        float dp[S_KEY_TILES][S_QUERIES / 8][4] = {};
        constexpr bool BIAS_AFTER = bias_after_products<Elem, HEAD_DIM, Score, Bias, Drop>();
        if constexpr (Bias::ON && !BIAS_AFTER)
            Bias::template apply<true, BLOCK_M, BLOCK_N, false>(s, sK_addr + BIAS_OFF + stage * BIAS_BYTES,
                                                                s_key0, s_query0, lane, p, entry);
        if constexpr (Core::WARPGROUPS) {  // both products in flight at once
            // (one warpgroup: its first row is the constant 0, which keeps the descriptors on the uniform datapath)
            const int group_row0 = MATH_WARPS == 4 ? 0 : s_key0;
            // (with the band mask, dP^T's product as before: both products' wider accumulators spilled 8-28 bytes)
            QkSum<S_QUERIES / 8, PAIRED_Q> s_sum;
            QkSum<S_QUERIES / 8, PAIRED_Q && !Mask::MASKS> dp_sum;
            s_sum.template issue<Elem, HEAD_DIM, KVTile, QTile>(s, sK_addr, group_row0, sQ_t);
            dp_sum.template issue<Elem, HEAD_DIM, KVTile, QTile>(dp, sV_addr, group_row0, sdO_t);
            Core::template wait<0>();
            s_sum.landed(s);
            dp_sum.landed(dp);
        } else {
            constexpr bool APART = small_terms_apart<HEAD_DIM, Score, Bias, Drop>();
            // (S^T tiles of at most 16 floats a thread above head dim 32: beside dK and dV)
            constexpr bool FIRST =
                small_terms_first<Score, Bias, Drop, Rows, HEAD_DIM, KEY_TILES * WARP_QUERIES / 8 * 4, 16>();
            gemm_smem_smem<Elem, KEY_TILES, WARP_QUERIES / 8, HEAD_DIM, KVTile, QTile, false, false, APART, FIRST>(
                s, sK_addr, warp_key0, sQ_t, warp_query0, lane);
            gemm_smem_smem<Elem, KEY_TILES, WARP_QUERIES / 8, HEAD_DIM, KVTile, QTile, false, false, APART, FIRST>(
                dp, sV_addr, warp_key0, sdO_t, warp_query0, lane);
        }
        if constexpr (Bias::ON && BIAS_AFTER)
            Bias::template apply<true, BLOCK_M, BLOCK_N, true>(s, sK_addr + BIAS_OFF + stage * BIAS_BYTES, s_key0,
                                                               s_query0, lane, p, entry);
        const int key0 = n0 + s_key0, query0 = m0 + s_query0;
        apply_score_mod<true, Bias::ON>(score, s, key0, query0, lane);
        // Padding keys are masked too: their zero K rows give S = 0, so P = exp2(-lse2), which overflows to inf
        // where a row's lse is below about -88, and inf times the zero K row would put NaN into dQ.
        mask_fragment<BLOCK_M, BLOCK_N, true>(mask, s, key0, query0, lane, m0, n0, seqlen_k);

        // P^T = exp2(logits^T scale_log2 - lse2), dS^T = P^T o (dP^T o Z^T - D) o Score', and P^T o Z^T for dV.
        // Padding queries need no mask: their Q, dO, lse2 and delta are zero-filled, so they add nothing to dK, dV,
        // and their dQ rows are not stored.
        #pragma unroll
        for (int kt = 0; kt < S_KEY_TILES; ++kt)
            #pragma unroll
            for (int qt = 0; qt < S_QUERIES / 8; ++qt) {
                const int col = s_query0 + 8 * qt + 2 * (lane % 4);
                const float2 l2 = *reinterpret_cast<const float2*>(sLse2 + col);
                const float2 dl = *reinterpret_cast<const float2*>(sDelta + col);
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float prob = fast_exp2(s[kt][qt][e] * p.scale_log2 - (e % 2 ? l2.y : l2.x));
                    const bool keep = kept.at(kt, qt, e);
                    const float dp_kept = keep ? dp[kt][qt][e] * drop.scale() : 0.f;
                    dp[kt][qt][e] = prob * (dp_kept - (e % 2 ? dl.y : dl.x));
                    if constexpr (!Score::IDENTITY)
                        dp[kt][qt][e] *= score.grad_factor(s[kt][qt][e], m0 + col + e % 2,
                                                           key0 + 16 * kt + lane / 4 + 8 * (e / 2));
                    s[kt][qt][e] = keep ? prob * drop.scale() : 0.f;
                }
            }
        // dbias = dS (per element, or summed over the bias's broadcast queries or keys: bias.cuh BiasGrad)
        const int key_group = Block::tile() * KEY_WARPS + warp / D_SPLIT;
        dbias.step(dp, p, batch, head, key0, query0, seqlen_q, seqlen_k, key_group, lane);
        if constexpr (Bias::GRAD && Tiles::SKIPS) {  // the head's last visited step: the next is another head's
            int next = -1;  // step t + 1's entry: the next load's with two stages, else stashed (loaded earlier)
            if (t + 1 < n_steps)
                next = STAGES == 2 ? next_load
                                   : Bias::template stashed<BLOCK_N, 0>(sK_addr + BIAS_OFF +
                                                                        (t + 1) % STAGES * BIAS_BYTES);
            if (next < 0 || step_head(next >> 1) != head)
                dbias.flush(p, batch, head, key0, seqlen_k, key_group, warp % D_SPLIT, lane);
        } else if (m0 == (query_tiles.y - 1) * BLOCK_M) {  // the head's last query tile
            dbias.flush(p, batch, head, key0, seqlen_k, key_group, warp % D_SPLIT, lane);
        }
        stage_operands_in_smem<Elem, PTile>(sP + s_query0, s_key0, s, lane);
        stage_operands_in_smem<Elem, PTile>(sdS + s_query0, s_key0, dp, lane);
        if constexpr (HELPER && ATOMIC_DQ)  // the helper's dS of this step (it adds the other step's meanwhile)
            stage_operands_transposed<Elem, DsTile>(sDs + t % 2 * (DsTile::BYTES / sizeof(S)), s_key0, dp, lane);
        Core::tiles_landed();  // (wgmma reads P^T and dS^T through the async proxy)
        __syncthreads();  // P^T and dS^T complete (a helper meets this barrier after its dQ, below)

        // dV += P^T dO, dK += dS^T Q (the scale on dK is applied once, at the end)
        if constexpr (Core::WARPGROUPS) {  // dV^T += dO^T P, dK^T += Q^T dS: both in flight, then waited for
            const u32 group_keys = PTile::byte_offset(mwarp / 4 * 64, 0);  // the warpgroup's 64 key rows of P^T, dS^T
            if constexpr (PTile::SPLIT) {
                // f32x3: three passes a product, each step's sum fresh, then added; one 64-row product of the head
                // dim at a time. Head dim 64: dV^T's and dK^T's in flight together, dQ on mma.sync under dV's.
                // SERIAL (head dim 128, where both products' step sums and operands beside dK^T and dV^T spilled):
                // dQ first, then each product in turn, in two halves of the warpgroup's 64 keys (half the registers
                // for its fresh sum).
                constexpr int NT = BLOCK_N / MATH_WARPS * 4 / 8;
                constexpr bool SERIAL = HEAD_DIM / 64 > 1;
                auto serial_product = [&](float (&acc)[1][NT][4], u32 (&hi)[1][BLOCK_M / 8][4],
                                          u32 (&lo)[1][BLOCK_M / 8][4], u32 sB) {
                    #pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        float step[1][NT / 2][4];
                        Core::template issue_pv<Elem, BLOCK_M, PTile, true>(step, hi, lo,
                                                                            sB + PTile::byte_offset(32 * half, 0));
                        Core::template wait<0>();
                        fence_fragment(step[0]);
                        #pragma unroll
                        for (int nt = 0; nt < NT / 2; ++nt)
                            #pragma unroll
                            for (int e = 0; e < 4; ++e) acc[0][NT / 2 * half + nt][e] += step[0][nt][e];
                    }
                    fence_fragment(hi), fence_fragment(lo);
                };
                if (!HELPER && SERIAL) add_dq(head, m0, sdS_addr);
                #pragma unroll
                for (int mb = 0; mb < HEAD_DIM / 64; ++mb) {
                    u32 a_do[1][1][BLOCK_M / 8][4], lo_do[1][1][BLOCK_M / 8][4];
                    u32 a_q[1][1][BLOCK_M / 8][4], lo_q[1][1][BLOCK_M / 8][4];
                    load_transposed_a<QTile, BLOCK_M>(a_do, sdO_t, mwarp, lane, mb);
                    load_transposed_a<QTile, BLOCK_M>(lo_do, sdO_t + QTile::LO, mwarp, lane, mb);
                    if constexpr (SERIAL) {
                        serial_product(acc_dv[mb], a_do[0], lo_do[0], sP_addr + group_keys);
                        load_transposed_a<QTile, BLOCK_M>(a_q, sQ_t, mwarp, lane, mb);
                        load_transposed_a<QTile, BLOCK_M>(lo_q, sQ_t + QTile::LO, mwarp, lane, mb);
                        serial_product(acc_dk[mb], a_q[0], lo_q[0], sdS_addr + group_keys);
                        if (!HELPER && mb == HEAD_DIM / 64 - 1 && t + 1 < n_steps) {  // the next step's Q and dO
                            cp_async_wait<STAGES - 2>();  // this thread's copies of step t + 1
                            split_step(t + 1);
                        }
                        continue;
                    }
                    float step_dv[1][NT][4], step_dk[1][NT][4];
                    Core::template issue_pv<Elem, BLOCK_M, PTile, true>(step_dv, a_do[0], lo_do[0],
                                                                        sP_addr + group_keys);
                    if (!HELPER && mb == 0) add_dq(head, m0, sdS_addr);  // on mma.sync while dV's product runs
                    load_transposed_a<QTile, BLOCK_M>(a_q, sQ_t, mwarp, lane, mb);
                    load_transposed_a<QTile, BLOCK_M>(lo_q, sQ_t + QTile::LO, mwarp, lane, mb);
                    Core::template issue_pv<Elem, BLOCK_M, PTile, true>(step_dk, a_q[0], lo_q[0],
                                                                        sdS_addr + group_keys);
                    // the next step's Q and dO split while the last dK product runs (another stage)
                    if (!HELPER && mb == HEAD_DIM / 64 - 1 && t + 1 < n_steps) {
                        cp_async_wait<STAGES - 2>();  // this thread's copies of step t + 1
                        split_step(t + 1);
                    }
                    Core::template wait<0>();
                    fence_fragment(step_dv[0]), fence_fragment(step_dk[0]);
                    fence_fragment(a_do[0]), fence_fragment(a_q[0]), fence_fragment(lo_do[0]);
                    fence_fragment(lo_q[0]);
                    #pragma unroll
                    for (int nt = 0; nt < NT; ++nt)
                        #pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            acc_dv[mb][0][nt][e] += step_dv[0][nt][e];
                            acc_dk[mb][0][nt][e] += step_dk[0][nt][e];
                        }
                }
            } else {
                u32 a_do[HEAD_DIM / 64][1][BLOCK_M / 8][4], a_q[HEAD_DIM / 64][1][BLOCK_M / 8][4];
                load_transposed_a<QTile, BLOCK_M>(a_do, sdO_t, mwarp, lane);
                load_transposed_a<QTile, BLOCK_M>(a_q, sQ_t, mwarp, lane);
                #pragma unroll
                for (int mb = 0; mb < HEAD_DIM / 64; ++mb)
                    Core::template issue_pv<Elem, BLOCK_M, PTile>(acc_dv[mb], a_do[mb], sP_addr + group_keys);
                #pragma unroll
                for (int mb = 0; mb < HEAD_DIM / 64; ++mb)
                    Core::template issue_pv<Elem, BLOCK_M, PTile>(acc_dk[mb], a_q[mb], sdS_addr + group_keys);
                Core::template wait<0>();
                #pragma unroll
                for (int mb = 0; mb < HEAD_DIM / 64; ++mb) {
                    fence_fragment(acc_dv[mb][0]), fence_fragment(acc_dk[mb][0]);
                    fence_fragment(a_do[mb]), fence_fragment(a_q[mb]);
                }
            }
        } else {
            // (float32 at "highest": each step's sum fresh, in slices of CHUNK n-tiles where a second accumulator of
            // all of them beside dK and dV would not fit: warp_gemm.cuh accumulate)
            // (above head dim 192 a bias beside a score modifier leaves no registers for a slice: sums in place)
            constexpr int MAX_FLOATS = 48, WIDE = Bias::ON && !Score::IDENTITY ? 0 : WIDE_SLICE_FLOATS;
            constexpr int CHUNK = column_chunk<Elem, MAX_FLOATS, KEY_TILES, WARP_D / 8, HEAD_DIM, WIDE>();
            using Slice = float[KEY_TILES][CHUNK][4];
            accumulate<Elem, MAX_FLOATS, CHUNK>(acc_dv, [&](Slice& c, int nt0) {
                gemm_smem_smem<Elem, KEY_TILES, CHUNK, BLOCK_M, PTile, QTile, false, true>(c, sP_addr, warp_key0,
                                                                                          sdO_t, d_col0 + 8 * nt0,
                                                                                          lane);
            });
            accumulate<Elem, MAX_FLOATS, CHUNK>(acc_dk, [&](Slice& c, int nt0) {
                gemm_smem_smem<Elem, KEY_TILES, CHUNK, BLOCK_M, PTile, QTile, false, true>(c, sdS_addr, warp_key0,
                                                                                          sQ_t, d_col0 + 8 * nt0,
                                                                                          lane);
            });
        }
        if constexpr (!PTile::SPLIT && !HELPER) add_dq(head, m0, sdS_addr);
        // The next entry, from the one stashed by this step's load (visible since the __syncthreads above).
        if constexpr (Tiles::SKIPS)
            if (t + STAGES - 1 < n_steps)
                next_load = entry_after(Bias::template stashed<BLOCK_N, 0>(
                    sK_addr + BIAS_OFF + (t + STAGES - 1) % STAGES * BIAS_BYTES));
    }

    cp_async_wait<0>();
    if constexpr (Core::WARPGROUPS) {
        if (HELPER && mwarp >= 0) __syncthreads();  // the helper's last dQ barrier (its walk above)
        store_transposed_grads<Elem, KVTile, THREADS, WARPS - MATH_WARPS>(p, acc_dk, acc_dv, sK, sV, batch,
                                                                          Block::slot(), n0, seq, warp, lane);
    } else {
        if (p.kv_splits > 1) {  // this split's share of the group, unrounded, for flash_bwd_reduce_dkdv_kernel
            float* dk_part = p.dkv_partial + dkv_partial_offset(p, batch, Block::slot(), n0);
            float* dv_part = dk_part + dkv_partial_size(p);
            const i64 row_stride = static_cast<i64>(p.nheads_k) * p.kv_splits * head_dim;
            #pragma unroll
            for (int kt = 0; kt < KEY_TILES; ++kt)
                #pragma unroll
                for (int nt = 0; nt < WARP_D / 8; ++nt) {
                    const int row0 = warp_key0 + 16 * kt, col0 = d_col0 + 8 * nt;
                    store_fragment(dk_part, row_stride, acc_dk[kt][nt], row0, col0, seqlen_k - n0, head_dim,
                                   p.softmax_scale, lane);
                    store_fragment(dv_part, row_stride, acc_dv[kt][nt], row0, col0, seqlen_k - n0, head_dim, 1.f,
                                   lane);
                }
            return;
        }
        // dK = scale * acc_dk, dV = acc_dv, staged through the K and V tiles for 16-byte stores. Unsplit: the slot is
        // the K/V head.
        __syncthreads();
        float scales[KEY_TILES][2];
        #pragma unroll
        for (int kt = 0; kt < KEY_TILES; ++kt) scales[kt][0] = scales[kt][1] = p.softmax_scale;
        stage_accum_in_smem<Elem, KVTile>(sV + d_col0, warp_key0, acc_dv, lane);
        stage_accum_in_smem<Elem, KVTile>(sK + d_col0, warp_key0, acc_dk, scales, lane);
        __syncthreads();
        store_tile<KVTile, THREADS>(elems<Elem>(p.dv) + row_offset(p.dv_str, batch, Block::slot(), seq.k0 + n0), sV,
                                    p.dv_str.seq, seqlen_k - n0, head_dim);
        store_tile<KVTile, THREADS>(elems<Elem>(p.dk) + row_offset(p.dk_str, batch, Block::slot(), seq.k0 + n0), sK,
                                    p.dk_str.seq, seqlen_k - n0, head_dim);
    }
}

// Dynamic shared memory of the dQ kernel: Q and dO tiles plus STAGES K and V tiles and STAGES bias tiles.
template <typename Elem, int HEAD_DIM, int BLOCK_M, int BLOCK_N, int STAGES, typename Bias>
__host__ __device__ constexpr int bwd_dq_smem_bytes() {
    using S = typename Mma<Elem>::Storage;
    return 2 * SmemTile<BLOCK_M, HEAD_DIM, S>::BYTES + 2 * STAGES * SmemTile<BLOCK_N, HEAD_DIM, S>::BYTES +
           STAGES * Bias::template tile_bytes<BLOCK_M, BLOCK_N>();
}

template <typename Elem = f16, int HEAD_DIM = 128, int BLOCK_M = 64, int BLOCK_N = 64, int WARPS = 4,
          int STAGES = 2, int MIN_BLOCKS = 2, typename Mask = NoMask, typename Score = ScoreMod<>,
          typename Bias = NoBias, typename Rows = DenseRows, typename Drop = NoDropout,
          int SMEM_BYTES = bwd_dq_smem_bytes<Elem, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, Bias>()>
__global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS) flash_bwd_dq_kernel(const AttnParams p) {
    constexpr int THREADS = WARPS * 32;
    constexpr int ROWS_PER_WARP = BLOCK_M / WARPS;
    constexpr int M_TILES = ROWS_PER_WARP / 16;
    constexpr int N_TILES = BLOCK_N / 8;
    constexpr int D_TILES = HEAD_DIM / 8;
    static_assert(ROWS_PER_WARP % 16 == 0 && BLOCK_N % 16 == 0 && STAGES >= 2, "tile shape");
    static_assert(SMEM_BYTES == bwd_dq_smem_bytes<Elem, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, Bias>(),
                  "Python's smem formula");
    static_assert(!(Bias::ON && Rows::PACKED), "bias with packed rows");
    using S = typename Mma<Elem>::Storage;
    using QTile = SmemTile<BLOCK_M, HEAD_DIM, S>;
    using KVTile = SmemTile<BLOCK_N, HEAD_DIM, S>;

    extern __shared__ uint4 smem_raw[];
    S* sQ = reinterpret_cast<S*>(smem_raw);  // later reused to stage dQ on its way out
    const u32 sQ_addr = smem_addr(sQ), sdO_addr = sQ_addr + QTile::BYTES;
    const u32 sK_addr = sdO_addr + QTile::BYTES, sV_addr = sK_addr + STAGES * KVTile::BYTES;
    const u32 sBias_addr = sV_addr + STAGES * KVTile::BYTES;  // STAGES bias tiles
    constexpr int BIAS_BYTES = Bias::template tile_bytes<BLOCK_M, BLOCK_N>();

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    using Block = QueryBlock<Bias::ADDS>;
    const int m_block = Mask::MASKS ? Block::tiles() - 1 - Block::tile() : Block::tile();
    const int head = Block::head(), batch = Block::batch();
    const int m0 = m_block * BLOCK_M;
    const Seq seq = Rows::of(p, batch);
    if (Rows::PACKED && m0 >= seq.seqlen_q) return;  // packed rows: the grid covers the longest entry
    const int warp_row0 = warp * ROWS_PER_WARP;
    const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k, head_dim = p.head_dim;
    const Mask mask(p, seq);
    const Score score(p, seq, batch, head);
    const Drop drop(p, batch, head);

    // Key tiles [first, end) in order; with a boolean mask's tile summary only those holding a visible pair (walked
    // as in the forward, upwards).
    using Tiles = typename Bias::Tiles;
    const Tiles tiles(p, false, batch, head, m_block);
    const int2 key_tiles = mask.template key_tiles<BLOCK_M, BLOCK_N>(m0, seqlen_k);
    int n_tiles = key_tiles.y - key_tiles.x;
    if constexpr (Tiles::SKIPS) n_tiles = tiles.count(key_tiles.x, key_tiles.y);
    auto after = [&](int entry) { return entry < 0 ? -1 : tiles.first_entry((entry >> 1) + 1, key_tiles.y); };

    // K/V rows are addressed from per-block base pointers where the registers allow; the 128-row tiles at head dims
    // of 96 and up spill even with the K/V head held across the loop, so those recompute the address (and the
    // head) for every tile.
    constexpr bool HOLD_KV_BASE = HEAD_DIM <= 64;
    const S* k = elems<Elem>(p.k);
    const S* v = elems<Elem>(p.v);
    const S* k_base = HOLD_KV_BASE ? k + row_offset(p.k_str, batch, kv_head_of(p, head), seq.k0) : nullptr;
    const S* v_base = HOLD_KV_BASE ? v + row_offset(p.v_str, batch, kv_head_of(p, head), seq.k0) : nullptr;
    auto load_kv = [&](int t, int entry) {  // entry: step t's walk entry (Tiles::SKIPS)
        const int tile = Tiles::SKIPS ? entry >> 1 : key_tiles.x + t;
        const int n0 = tile * BLOCK_N, stage = t % STAGES;
        const S* k_rows = HOLD_KV_BASE ? k_base + n0 * p.k_str.seq
                                       : k + row_offset(p.k_str, batch, kv_head_of(p, head), seq.k0 + n0);
        const S* v_rows = HOLD_KV_BASE ? v_base + n0 * p.v_str.seq
                                       : v + row_offset(p.v_str, batch, kv_head_of(p, head), seq.k0 + n0);
        load_tile_async<KVTile, THREADS>(sK_addr + stage * KVTile::BYTES, k_rows, p.k_str.seq, seqlen_k - n0,
                                         head_dim);
        load_tile_async<KVTile, THREADS>(sV_addr + stage * KVTile::BYTES, v_rows, p.v_str.seq, seqlen_k - n0,
                                         head_dim);
        if constexpr (Bias::ON)
            Bias::template load_tile<BLOCK_M, BLOCK_N, THREADS>(sBias_addr + stage * BIAS_BYTES, p, batch, head,
                                                                m0, n0, seqlen_q - m0, seqlen_k - n0, entry);
        if constexpr (Tiles::SKIPS) {  // as the forward's
            Bias::template stash<BLOCK_N, 0>(sBias_addr + stage * BIAS_BYTES, entry);
            if (threadIdx.x == 0) Bias::template stash<BLOCK_N, 1>(sBias_addr + stage * BIAS_BYTES, after(entry));
        }
    };
    load_tile_async<QTile, THREADS>(sQ_addr, elems<Elem>(p.q) + row_offset(p.q_str, batch, head, seq.q0 + m0),
                                    p.q_str.seq,
                                    seqlen_q - m0, head_dim);
    load_tile_async<QTile, THREADS>(sdO_addr, elems<Elem>(p.dout) + row_offset(p.do_str, batch, head, seq.q0 + m0),
                                    p.do_str.seq,
                                    seqlen_q - m0, head_dim);
    int first_entries = Tiles::SKIPS ? tiles.first_entry(key_tiles.x, key_tiles.y) : 0;
    fill_pipeline<STAGES, Tiles::SKIPS>(n_tiles, first_entries, load_kv, after);

    // lse2 and D of this thread's rows (padding rows read as 0: their dS multiplies zero-filled K rows only).
    float row_lse2[M_TILES][2], row_delta[M_TILES][2];
    const i64 row_base = row_values_offset(p, batch, head);
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = m0 + warp_row0 + 16 * mt + lane / 4 + 8 * r;
            row_lse2[mt][r] = row < seqlen_q ? p.lse2[row_base + row] : 0.f;
            row_delta[mt][r] = row < seqlen_q ? p.delta[row_base + row] : 0.f;
        }

    float acc[M_TILES][D_TILES][4] = {};
    for (int t = 0; t < n_tiles; ++t) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (t + STAGES - 1 < n_tiles) {
            int next = 0;
            if constexpr (Tiles::SKIPS)
                next = Bias::template stashed<BLOCK_N, 1>(sBias_addr + (t + STAGES - 2) % STAGES * BIAS_BYTES);
            load_kv(t + STAGES - 1, next);
        }
        cp_async_commit();
        int entry = 1;  // 2 * key tile + partial (a mask's walk)
        if constexpr (Tiles::SKIPS) entry = Bias::template stashed<BLOCK_N, 0>(sBias_addr + t % STAGES * BIAS_BYTES);
        const int n0 = (Tiles::SKIPS ? entry >> 1 : key_tiles.x + t) * BLOCK_N;
        const u32 sK_t = sK_addr + (t % STAGES) * KVTile::BYTES, sV_t = sV_addr + (t % STAGES) * KVTile::BYTES;

        const auto kept = drop.template kept<false, M_TILES, N_TILES>(m0 + warp_row0, n0, lane);
        // S = bias + Q K^T, dP = dO V^T; logits = Score(S)
        float s[M_TILES][N_TILES][4] = {};
        float dp[M_TILES][N_TILES][4] = {};
        constexpr bool BIAS_AFTER = bias_after_products<Elem, HEAD_DIM, Score, Bias, Drop>();
        if constexpr (Bias::ON && !BIAS_AFTER)
            Bias::template apply<false, BLOCK_M, BLOCK_N, false>(s, sBias_addr + (t % STAGES) * BIAS_BYTES,
                                                                 warp_row0, 0, lane, p, entry);
        constexpr bool APART = small_terms_apart<HEAD_DIM, Score, Bias, Drop>();
        constexpr bool FIRST = false;  // (its 64x32 and 64x64 tiles at head dims 32 and 64 spilled 8-420 bytes)
        gemm_smem_smem<Elem, M_TILES, N_TILES, HEAD_DIM, QTile, KVTile, false, false, APART, FIRST>(
            s, sQ_addr, warp_row0, sK_t, 0, lane);
        gemm_smem_smem<Elem, M_TILES, N_TILES, HEAD_DIM, QTile, KVTile, false, false, APART, FIRST>(
            dp, sdO_addr, warp_row0, sV_t, 0, lane);
        if constexpr (Bias::ON && BIAS_AFTER)
            Bias::template apply<false, BLOCK_M, BLOCK_N, true>(s, sBias_addr + (t % STAGES) * BIAS_BYTES, warp_row0,
                                                                0, lane, p, entry);
        const int query0 = m0 + warp_row0;
        apply_score_mod<false, Bias::ON>(score, s, query0, n0, lane);
        // Padding keys are masked for the same reason as in the dK/dV kernel.
        mask_fragment<BLOCK_M, BLOCK_N>(mask, s, query0, n0, lane, m0, n0, seqlen_k);

        // dS = P o (dP o Z - D) o Score', P = exp2(logits scale_log2 - lse2)
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float prob = fast_exp2(s[mt][nt][e] * p.scale_log2 - row_lse2[mt][e / 2]);
                    const float dp_kept = kept.at(mt, nt, e) ? dp[mt][nt][e] * drop.scale() : 0.f;
                    dp[mt][nt][e] = prob * (dp_kept - row_delta[mt][e / 2]);
                    if constexpr (!Score::IDENTITY)
                        dp[mt][nt][e] *= score.grad_factor(s[mt][nt][e], query0 + 16 * mt + lane / 4 + 8 * (e / 2),
                                                           n0 + 8 * nt + 2 * (lane % 4) + e % 2);
                }

        // dQ += dS K (K stored key-major: B of this product is k-major)
        u32 ds_frag[M_TILES][BLOCK_N / Mma<Elem>::K_STEP][4];
        accum_to_a_frags<Elem>(ds_frag, dp);
        // (above head dim 192 slices of 8 floats: 16 spilled 36 bytes at 256 beside S and dP's small-term
        // accumulators, run_split; a bias beside a score modifier leaves no registers for any: sums in place)
        constexpr int MAX_FLOATS = 96, WIDE = Bias::ON && !Score::IDENTITY ? 0 : WIDE_SLICE_FLOATS / 2;
        constexpr int CHUNK = column_chunk<Elem, MAX_FLOATS, M_TILES, D_TILES, HEAD_DIM, WIDE>();
        accumulate<Elem, MAX_FLOATS, CHUNK>(acc, [&](float (&c)[M_TILES][CHUNK][4], int nt0) {
            gemm_regs_smem_nn<Elem, M_TILES, CHUNK, BLOCK_N, KVTile>(c, ds_frag, sK_t, lane, 8 * nt0);
        });
    }

    cp_async_wait<0>();
    __syncthreads();
    float scales[M_TILES][2];
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) scales[mt][r] = p.softmax_scale;
    stage_accum_in_smem<Elem, QTile>(sQ, warp_row0, acc, scales, lane);
    __syncthreads();
    store_tile<QTile, THREADS>(elems<Elem>(p.dq) + row_offset(p.dq_str, batch, head, seq.q0 + m0), sQ, p.dq_str.seq,
                               seqlen_q - m0, head_dim);
}

}  // namespace cf

#ifndef CUPYFLASH_RUNTIME  // a standalone build (nvcc -Xptxas -v) gets the default instances to report on
template __global__ void cf::flash_bwd_preprocess_kernel<>(const cf::AttnParams);
template __global__ void cf::flash_bwd_convert_dq_kernel<>(const cf::AttnParams);
template __global__ void cf::flash_bwd_dkdv_kernel<>(const cf::AttnParams);
template __global__ void cf::flash_bwd_dq_kernel<>(const cf::AttnParams);
#endif
