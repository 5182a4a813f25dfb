// FlashAttention-2 backward on mma.sync tensor cores (sm_80 and later).
//
// With P = exp(S - LSE) recomputed from the saved log-sum-exp, S = Q K^T * scale:
//   dV = P^T dO,  dP = dO V^T,  dS = P o (dP - D) with D = rowsum(dO o O),  dQ = scale dS K,  dK = scale dS^T Q.
// flash_bwd_preprocess_kernel: D, and LSE in log2 units.
// flash_bwd_dkdv_kernel: one block per BLOCK_N keys of one (batch, head); loops over query blocks, keeps dK and dV in
//   registers, passes P^T and dS^T between warps through shared memory. With ATOMIC_DQ it also adds scale * dS K
//   into an fp32 dQ buffer with atomics (fast, order-dependent).
// flash_bwd_dq_kernel: the deterministic dQ, one block per BLOCK_M queries looping over keys (the forward's
//   shape): recomputes S and dP, so it costs two extra products but adds in a fixed order.
#include "mma_sm80.cuh"
#include "smem_tile.cuh"
#include "warp_gemm.cuh"
#include "online_softmax.cuh"

namespace cf {

constexpr float LOG2E = 1.4426950408889634f;

// The (batch, head, query) row that warp `warp_id` of a one-warp-per-row kernel handles; false past the end.
struct QueryRow {
    int batch, head, query;
    __device__ __forceinline__ bool locate(i64 warp_id, int batch_size, int nheads, int seqlen_q) {
        if (warp_id >= static_cast<i64>(batch_size) * nheads * seqlen_q) return false;
        query = warp_id % seqlen_q;
        const int bh = warp_id / seqlen_q;
        head = bh % nheads;
        batch = bh / nheads;
        return true;
    }
    // Element offset of this row in the contiguous fp32 dQ accumulator, a (batch, seqlen_q, nheads, head_dim) array.
    __device__ __forceinline__ i64 dq_accum_offset(int nheads, int seqlen_q, int head_dim) const {
        return ((static_cast<i64>(batch) * seqlen_q + query) * nheads + head) * head_dim;
    }
};

// One warp per query row: delta = rowsum(dO o O) in fp32, lse2 = lse * log2(e). A row that saw no key (lse = -inf)
// gets lse2 = +inf, so P = exp2(S * scale_log2 - lse2) is 0 there rather than NaN. Rows are stored with a
// stride of row_pitch (a multiple of 4) per (batch, head) so that blocks can copy them 16 bytes at a time.
// With a dq_accum buffer (atomic dQ) it also zeroes the row's fp32 dQ, saving a separate fill of that buffer.
template <typename Elem = f16>
__global__ void __launch_bounds__(128)
flash_bwd_preprocess_kernel(const u16* __restrict__ out, const u16* __restrict__ dout, const float* __restrict__ lse,
                            float* __restrict__ delta, float* __restrict__ lse2, float* __restrict__ dq_accum,
                            i64 o_sb, i64 o_ss, i64 o_sh, i64 do_sb, i64 do_ss, i64 do_sh, int batch_size,
                            int nheads, int seqlen_q, int row_pitch, int head_dim) {
    const int lane = threadIdx.x % 32;
    const i64 row_id = static_cast<i64>(blockIdx.x) * 4 + threadIdx.x / 32;
    QueryRow row;
    if (!row.locate(row_id, batch_size, nheads, seqlen_q)) return;
    const int b = row.batch, h = row.head, m = row.query;
    float dot = 0.f;
    if (lane * 8 < head_dim) {  // head_dim <= 256: one 16-byte chunk per lane
        const uint4 o = *reinterpret_cast<const uint4*>(out + b * o_sb + m * o_ss + h * o_sh + lane * 8);
        const uint4 g = *reinterpret_cast<const uint4*>(dout + b * do_sb + m * do_ss + h * do_sh + lane * 8);
        const u32 ov[4] = {o.x, o.y, o.z, o.w}, gv[4] = {g.x, g.y, g.z, g.w};
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 a = Mma<Elem>::unpack(ov[i]), c = Mma<Elem>::unpack(gv[i]);
            dot += a.x * c.x + a.y * c.y;
        }
        if (dq_accum != nullptr) {
            float4* dst = reinterpret_cast<float4*>(dq_accum + row.dq_accum_offset(nheads, seqlen_q, head_dim) +
                                                    lane * 8);
            dst[0] = dst[1] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    #pragma unroll
    for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    if (lane == 0) {
        const i64 at = (static_cast<i64>(b) * nheads + h) * row_pitch + m;
        const float l = lse[row_id];
        delta[at] = dot;
        lse2[at] = l == neg_inf() ? -neg_inf() : l * LOG2E;
    }
}

// One warp per query row: dQ (Elem, any row strides, 16-byte aligned) from the fp32 atomic accumulator.
template <typename Elem = f16>
__global__ void __launch_bounds__(128)
flash_bwd_convert_dq_kernel(const float* __restrict__ dq_accum, u16* __restrict__ dq, i64 dq_sb, i64 dq_ss,
                            i64 dq_sh, int batch_size, int nheads, int seqlen_q, int head_dim) {
    const int lane = threadIdx.x % 32;
    QueryRow row;
    if (!row.locate(static_cast<i64>(blockIdx.x) * 4 + threadIdx.x / 32, batch_size, nheads, seqlen_q) ||
        lane * 8 >= head_dim)
        return;
    const float4* src = reinterpret_cast<const float4*>(dq_accum + row.dq_accum_offset(nheads, seqlen_q, head_dim) +
                                                        lane * 8);
    const float4 lo = src[0], hi = src[1];
    *reinterpret_cast<uint4*>(dq + row.batch * dq_sb + row.query * dq_ss + row.head * dq_sh + lane * 8) =
        make_uint4(Mma<Elem>::pack(lo.x, lo.y), Mma<Elem>::pack(lo.z, lo.w), Mma<Elem>::pack(hi.x, hi.y),
                   Mma<Elem>::pack(hi.z, hi.w));
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

// Warps form a KEY_WARPS x D_SPLIT grid. Warp (g, j) computes S^T and dP^T for key rows [32g, 32g + 32) (BLOCK_N /
// KEY_WARPS of them) and the j-th 1/D_SPLIT of the step's queries, then owns the same key rows of dK and dV for
// the j-th 1/D_SPLIT of the head dim. P^T and dS^T pass between the two layouts through shared memory. Owning 32
// key rows rather than 16 halves how often each Q and dO fragment is read from shared memory per product, which
// is what bounds this kernel (ldmatrix bandwidth, not tensor cores).
template <typename Elem = f16, int HEAD_DIM = 128, int BLOCK_M = 64, int BLOCK_N = 128, int WARPS = 8,
          int STAGES = 2, int MIN_BLOCKS = 1, bool IS_CAUSAL = false, bool ATOMIC_DQ = true, int D_SPLIT = 2>
__global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS)
flash_bwd_dkdv_kernel(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                      const u16* __restrict__ dout, const float* __restrict__ lse2, const float* __restrict__ delta,
                      float* __restrict__ dq_accum, u16* __restrict__ dk, u16* __restrict__ dv,
                      i64 q_sb, i64 q_ss, i64 q_sh, i64 k_sb, i64 k_ss, i64 k_sh, i64 v_sb, i64 v_ss, i64 v_sh,
                      i64 do_sb, i64 do_ss, i64 do_sh, i64 dk_sb, i64 dk_ss, i64 dk_sh, i64 dv_sb, i64 dv_ss,
                      i64 dv_sh, int nheads, int seqlen_q, int seqlen_k, int row_pitch, int head_dim,
                      float scale_log2, float softmax_scale) {
    constexpr int THREADS = WARPS * 32;
    constexpr int KEY_WARPS = WARPS / D_SPLIT;
    constexpr int KEY_TILES = BLOCK_N / KEY_WARPS / 16;   // m16 tiles of key rows per warp
    constexpr int WARP_QUERIES = BLOCK_M / D_SPLIT;        // S^T columns per warp
    constexpr int WARP_D = HEAD_DIM / D_SPLIT;             // dK/dV columns per warp
    // dQ = dS K (BLOCK_M x HEAD_DIM) over the same warps: DQ_ROW_TILES m16 tiles of queries each (two where the
    // split allows: fewer K fragment reads), the head dim split over the warps that share a row range.
    constexpr bool DQ_PAIRS = BLOCK_M % 32 == 0 && BLOCK_M / 32 <= WARPS && WARPS % (BLOCK_M / 32) == 0 &&
                              HEAD_DIM / (WARPS / (BLOCK_M / 32)) % 16 == 0;
    constexpr int DQ_ROW_TILES = DQ_PAIRS ? 2 : 1;
    constexpr int DQ_ROW_WARPS = BLOCK_M / (16 * DQ_ROW_TILES);
    constexpr int DQ_COLS = HEAD_DIM / (WARPS / DQ_ROW_WARPS);
    static_assert(WARPS % D_SPLIT == 0 && BLOCK_N % (16 * KEY_WARPS) == 0 && STAGES >= 2, "key rows per warp");
    static_assert(WARP_QUERIES % 16 == 0 && WARP_D % 16 == 0, "queries and head dim split in n16 pairs");
    static_assert(WARPS % DQ_ROW_WARPS == 0 && DQ_COLS % 16 == 0, "dQ split over warps");
    using KVTile = SmemTile<BLOCK_N, HEAD_DIM>;
    using QTile = SmemTile<BLOCK_M, HEAD_DIM>;
    using PTile = SmemTile<BLOCK_N, BLOCK_M>;  // P^T and dS^T: key rows x query columns

    // Shared memory: K, V, P^T, dS^T, then STAGES Q tiles, STAGES dO tiles, STAGES x (lse2, delta) rows.
    constexpr int P_OFF = 2 * KVTile::BYTES, Q_OFF = P_OFF + 2 * PTile::BYTES;
    constexpr int DO_OFF = Q_OFF + STAGES * QTile::BYTES, ROW_OFF = DO_OFF + STAGES * QTile::BYTES;
    extern __shared__ uint4 smem_raw[];
    char* smem = reinterpret_cast<char*>(smem_raw);
    u16* sK = reinterpret_cast<u16*>(smem);
    u16* sV = sK + KVTile::ELEMS;
    u16* sP = reinterpret_cast<u16*>(smem + P_OFF);
    u16* sdS = sP + PTile::ELEMS;
    const u32 sK_addr = smem_addr(smem), sV_addr = sK_addr + KVTile::BYTES;
    const u32 sP_addr = sK_addr + P_OFF, sdS_addr = sP_addr + PTile::BYTES;
    const u32 sQ_addr = sK_addr + Q_OFF, sdO_addr = sK_addr + DO_OFF, sRow_addr = sK_addr + ROW_OFF;
    const float* sRow = reinterpret_cast<const float*>(smem + ROW_OFF);

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int n0 = blockIdx.x * BLOCK_N;
    const int causal_offset = seqlen_k - seqlen_q;
    const int warp_key0 = warp / D_SPLIT * 16 * KEY_TILES;
    const int warp_query0 = warp % D_SPLIT * WARP_QUERIES, d_col0 = warp % D_SPLIT * WARP_D;
    const int dq_row0 = warp % DQ_ROW_WARPS * 16 * DQ_ROW_TILES, dq_col0 = warp / DQ_ROW_WARPS * DQ_COLS;

    // Query blocks whose rows all precede key n0's diagonal see nothing of this block: start after them.
    const int m_begin = IS_CAUSAL ? max(n0 - causal_offset, 0) / BLOCK_M : 0;
    const int n_steps = max((seqlen_q + BLOCK_M - 1) / BLOCK_M - m_begin, 0);

    const u16* q_bh = q + batch * q_sb + head * q_sh;
    const u16* do_bh = dout + batch * do_sb + head * do_sh;
    const i64 row_base = (static_cast<i64>(batch) * nheads + head) * row_pitch;
    auto load_step = [&](int t) {
        const int m0 = (m_begin + t) * BLOCK_M, stage = t % STAGES;
        load_tile_async<QTile, THREADS>(sQ_addr + stage * QTile::BYTES, q_bh + m0 * q_ss, q_ss, seqlen_q - m0,
                                        head_dim);
        load_tile_async<QTile, THREADS>(sdO_addr + stage * QTile::BYTES, do_bh + m0 * do_ss, do_ss,
                                        seqlen_q - m0, head_dim);
        load_row_values_async<BLOCK_M, THREADS>(sRow_addr + stage * 2 * BLOCK_M * 4, lse2 + row_base + m0,
                                                seqlen_q - m0);
        load_row_values_async<BLOCK_M, THREADS>(sRow_addr + (stage * 2 + 1) * BLOCK_M * 4, delta + row_base + m0,
                                                seqlen_q - m0);
    };

    load_tile_async<KVTile, THREADS>(sK_addr, k + batch * k_sb + head * k_sh + n0 * k_ss, k_ss, seqlen_k - n0,
                                     head_dim);
    load_tile_async<KVTile, THREADS>(sV_addr, v + batch * v_sb + head * v_sh + n0 * v_ss, v_ss, seqlen_k - n0,
                                     head_dim);
    #pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) {
        if (t < n_steps) load_step(t);
        cp_async_commit();
    }

    float acc_dv[KEY_TILES][WARP_D / 8][4] = {};
    float acc_dk[KEY_TILES][WARP_D / 8][4] = {};

    for (int t = 0; t < n_steps; ++t) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // step t visible to all warps; every warp is done with the stage refilled below, and
                          // with the previous step's P^T and dS^T
        if (t + STAGES - 1 < n_steps) load_step(t + STAGES - 1);
        cp_async_commit();

        const int m0 = (m_begin + t) * BLOCK_M, stage = t % STAGES;
        const u32 sQ_t = sQ_addr + stage * QTile::BYTES, sdO_t = sdO_addr + stage * QTile::BYTES;
        const float* sLse2 = sRow + stage * 2 * BLOCK_M;
        const float* sDelta = sLse2 + BLOCK_M;

        // S^T = K Q^T and dP^T = V dO^T for this warp's keys x queries (raw scores)
        float s[KEY_TILES][WARP_QUERIES / 8][4] = {};
        float dp[KEY_TILES][WARP_QUERIES / 8][4] = {};
        gemm_smem_smem<Elem, KEY_TILES, WARP_QUERIES / 8, HEAD_DIM, KVTile, QTile>(s, sK_addr, warp_key0, sQ_t,
                                                                                  warp_query0, lane);
        gemm_smem_smem<Elem, KEY_TILES, WARP_QUERIES / 8, HEAD_DIM, KVTile, QTile>(dp, sV_addr, warp_key0, sdO_t,
                                                                                  warp_query0, lane);
        // Padding keys are masked too: their zero K rows give S = 0, so P = exp2(-lse2), which overflows to inf
        // where a row's lse is below about -88, and inf times the zero K row would put NaN into dQ.
        if (n0 + BLOCK_N > seqlen_k || (IS_CAUSAL && n0 + BLOCK_N - 1 > m0 + causal_offset))
            mask_where(s, n0 + warp_key0, m0 + warp_query0, lane, [&](int key, int query) {
                return key >= seqlen_k || (IS_CAUSAL && key > query + causal_offset);
            });

        // P^T = exp2(S^T scale_log2 - lse2), dS^T = P^T o (dP^T - D). Padding queries need no mask: their Q, dO,
        // lse2 and delta are zero-filled, so they add nothing to dK, dV, and their dQ rows are not stored.
        #pragma unroll
        for (int kt = 0; kt < KEY_TILES; ++kt)
            #pragma unroll
            for (int qt = 0; qt < WARP_QUERIES / 8; ++qt) {
                const int col = warp_query0 + 8 * qt + 2 * (lane % 4);
                const float2 l2 = *reinterpret_cast<const float2*>(sLse2 + col);
                const float2 dl = *reinterpret_cast<const float2*>(sDelta + col);
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float p = fast_exp2(s[kt][qt][e] * scale_log2 - (e % 2 ? l2.y : l2.x));
                    dp[kt][qt][e] = p * (dp[kt][qt][e] - (e % 2 ? dl.y : dl.x));
                    s[kt][qt][e] = p;
                }
            }
        stage_accum_in_smem<Elem, PTile>(sP + warp_query0, warp_key0, s, lane);
        stage_accum_in_smem<Elem, PTile>(sdS + warp_query0, warp_key0, dp, lane);
        __syncthreads();  // P^T and dS^T complete

        // dV += P^T dO, dK += dS^T Q (the scale on dK is applied once, at the end)
        gemm_smem_smem<Elem, KEY_TILES, WARP_D / 8, BLOCK_M, PTile, QTile, false, true>(acc_dv, sP_addr, warp_key0,
                                                                                       sdO_t, d_col0, lane);
        gemm_smem_smem<Elem, KEY_TILES, WARP_D / 8, BLOCK_M, PTile, QTile, false, true>(acc_dk, sdS_addr,
                                                                                       warp_key0, sQ_t, d_col0,
                                                                                       lane);
        // dQ += scale dS K into the fp32 buffer, a contiguous (batch, seqlen_q, nheads, head_dim) array
        if constexpr (ATOMIC_DQ)
            accumulate_dq_atomic<Elem, DQ_ROW_TILES, DQ_COLS, BLOCK_N, PTile, KVTile>(
                dq_accum + ((static_cast<i64>(batch) * seqlen_q + m0) * nheads + head) * head_dim,
                static_cast<i64>(nheads) * head_dim, sdS_addr, sK_addr, dq_row0, dq_col0, seqlen_q - m0, head_dim,
                softmax_scale, lane);
    }

    // dK = scale * acc_dk, dV = acc_dv, staged through the K and V tiles for 16-byte stores.
    cp_async_wait<0>();
    __syncthreads();
    float scales[KEY_TILES][2];
    #pragma unroll
    for (int kt = 0; kt < KEY_TILES; ++kt) scales[kt][0] = scales[kt][1] = softmax_scale;
    stage_accum_in_smem<Elem, KVTile>(sV + d_col0, warp_key0, acc_dv, lane);
    stage_accum_in_smem<Elem, KVTile>(sK + d_col0, warp_key0, acc_dk, scales, lane);
    __syncthreads();
    store_tile<KVTile, THREADS>(dv + batch * dv_sb + head * dv_sh + n0 * dv_ss, sV, dv_ss, seqlen_k - n0, head_dim);
    store_tile<KVTile, THREADS>(dk + batch * dk_sb + head * dk_sh + n0 * dk_ss, sK, dk_ss, seqlen_k - n0, head_dim);
}

template <typename Elem = f16, int HEAD_DIM = 128, int BLOCK_M = 64, int BLOCK_N = 64, int WARPS = 4,
          int STAGES = 2, int MIN_BLOCKS = 2, bool IS_CAUSAL = false>
__global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS)
flash_bwd_dq_kernel(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                    const u16* __restrict__ dout, const float* __restrict__ lse2, const float* __restrict__ delta,
                    u16* __restrict__ dq, i64 q_sb, i64 q_ss, i64 q_sh, i64 k_sb, i64 k_ss, i64 k_sh, i64 v_sb,
                    i64 v_ss, i64 v_sh, i64 do_sb, i64 do_ss, i64 do_sh, i64 dq_sb, i64 dq_ss, i64 dq_sh,
                    int nheads, int seqlen_q, int seqlen_k, int row_pitch, int head_dim, float scale_log2,
                    float softmax_scale) {
    constexpr int THREADS = WARPS * 32;
    constexpr int ROWS_PER_WARP = BLOCK_M / WARPS;
    constexpr int M_TILES = ROWS_PER_WARP / 16;
    constexpr int N_TILES = BLOCK_N / 8;
    constexpr int D_TILES = HEAD_DIM / 8;
    static_assert(ROWS_PER_WARP % 16 == 0 && BLOCK_N % 16 == 0 && STAGES >= 2, "tile shape");
    using QTile = SmemTile<BLOCK_M, HEAD_DIM>;
    using KVTile = SmemTile<BLOCK_N, HEAD_DIM>;

    // Shared memory: Q, dO, then STAGES K tiles and STAGES V tiles.
    extern __shared__ uint4 smem_raw[];
    u16* sQ = reinterpret_cast<u16*>(smem_raw);  // later reused to stage dQ on its way out
    const u32 sQ_addr = smem_addr(sQ), sdO_addr = sQ_addr + QTile::BYTES;
    const u32 sK_addr = sdO_addr + QTile::BYTES, sV_addr = sK_addr + STAGES * KVTile::BYTES;

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int m_block = IS_CAUSAL ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int m0 = m_block * BLOCK_M;
    const int causal_offset = seqlen_k - seqlen_q;
    const int warp_row0 = warp * ROWS_PER_WARP;

    const int n_tiles = key_tiles_for_query_block<BLOCK_M, BLOCK_N, IS_CAUSAL>(m0, seqlen_k, causal_offset);

    const u16* k_bh = k + batch * k_sb + head * k_sh;
    const u16* v_bh = v + batch * v_sb + head * v_sh;
    auto load_kv = [&](int t) {
        const int n0 = t * BLOCK_N, stage = t % STAGES;
        load_tile_async<KVTile, THREADS>(sK_addr + stage * KVTile::BYTES, k_bh + n0 * k_ss, k_ss, seqlen_k - n0,
                                         head_dim);
        load_tile_async<KVTile, THREADS>(sV_addr + stage * KVTile::BYTES, v_bh + n0 * v_ss, v_ss, seqlen_k - n0,
                                         head_dim);
    };
    load_tile_async<QTile, THREADS>(sQ_addr, q + batch * q_sb + head * q_sh + m0 * q_ss, q_ss, seqlen_q - m0,
                                    head_dim);
    load_tile_async<QTile, THREADS>(sdO_addr, dout + batch * do_sb + head * do_sh + m0 * do_ss, do_ss,
                                    seqlen_q - m0, head_dim);
    #pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) {
        if (t < n_tiles) load_kv(t);
        cp_async_commit();
    }

    // lse2 and D of this thread's rows (padding rows read as 0: their dS multiplies zero-filled K rows only).
    float row_lse2[M_TILES][2], row_delta[M_TILES][2];
    const i64 row_base = (static_cast<i64>(batch) * nheads + head) * row_pitch;
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = m0 + warp_row0 + 16 * mt + lane / 4 + 8 * r;
            row_lse2[mt][r] = row < seqlen_q ? lse2[row_base + row] : 0.f;
            row_delta[mt][r] = row < seqlen_q ? delta[row_base + row] : 0.f;
        }

    float acc[M_TILES][D_TILES][4] = {};
    for (int t = 0; t < n_tiles; ++t) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (t + STAGES - 1 < n_tiles) load_kv(t + STAGES - 1);
        cp_async_commit();
        const int n0 = t * BLOCK_N;
        const u32 sK_t = sK_addr + (t % STAGES) * KVTile::BYTES, sV_t = sV_addr + (t % STAGES) * KVTile::BYTES;

        // S = Q K^T, dP = dO V^T
        float s[M_TILES][N_TILES][4] = {};
        float dp[M_TILES][N_TILES][4] = {};
        gemm_smem_smem<Elem, M_TILES, N_TILES, HEAD_DIM, QTile, KVTile>(s, sQ_addr, warp_row0, sK_t, 0, lane);
        gemm_smem_smem<Elem, M_TILES, N_TILES, HEAD_DIM, QTile, KVTile>(dp, sdO_addr, warp_row0, sV_t, 0, lane);
        // Padding keys are masked for the same reason as in the dK/dV kernel.
        if (n0 + BLOCK_N > seqlen_k || (IS_CAUSAL && n0 + BLOCK_N - 1 > m0 + causal_offset))
            mask_where(s, m0 + warp_row0, n0, lane, [&](int query, int key) {
                return key >= seqlen_k || (IS_CAUSAL && key > query + causal_offset);
            });

        // dS = P o (dP - D), P = exp2(S scale_log2 - lse2)
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float p = fast_exp2(s[mt][nt][e] * scale_log2 - row_lse2[mt][e / 2]);
                    dp[mt][nt][e] = p * (dp[mt][nt][e] - row_delta[mt][e / 2]);
                }

        // dQ += dS K (K stored key-major: B of this product is k-major)
        u32 ds_frag[M_TILES][N_TILES / 2][4];
        accum_to_a_frags<Elem>(ds_frag, dp);
        gemm_regs_smem_nn<Elem, M_TILES, D_TILES, BLOCK_N, KVTile>(acc, ds_frag, sK_t, lane);
    }

    cp_async_wait<0>();
    __syncthreads();
    float scales[M_TILES][2];
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) scales[mt][r] = softmax_scale;
    stage_accum_in_smem<Elem, QTile>(sQ, warp_row0, acc, scales, lane);
    __syncthreads();
    store_tile<QTile, THREADS>(dq + batch * dq_sb + head * dq_sh + m0 * dq_ss, sQ, dq_ss, seqlen_q - m0, head_dim);
}

}  // namespace cf

#ifndef CUPYFLASH_RUNTIME  // a standalone build (nvcc -Xptxas -v) gets the default instances to report on
template __global__ void cf::flash_bwd_preprocess_kernel<>(const cf::u16*, const cf::u16*, const float*, float*,
                                                           float*, float*, cf::i64, cf::i64, cf::i64, cf::i64,
                                                           cf::i64, cf::i64, int, int, int, int, int);
template __global__ void cf::flash_bwd_convert_dq_kernel<>(const float*, cf::u16*, cf::i64, cf::i64, cf::i64, int,
                                                           int, int, int);
template __global__ void cf::flash_bwd_dkdv_kernel<>(const cf::u16*, const cf::u16*, const cf::u16*, const cf::u16*,
                                                     const float*, const float*, float*, cf::u16*, cf::u16*,
                                                     cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, cf::i64,
                                                     cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, cf::i64,
                                                     cf::i64, cf::i64, cf::i64, cf::i64, int, int, int, int, int,
                                                     float, float);
template __global__ void cf::flash_bwd_dq_kernel<>(const cf::u16*, const cf::u16*, const cf::u16*, const cf::u16*,
                                                   const float*, const float*, cf::u16*, cf::i64, cf::i64, cf::i64,
                                                   cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, cf::i64,
                                                   cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, int, int, int, int,
                                                   int, float, float);
#endif
