// FlashAttention-2 forward on mma.sync tensor cores (sm_80 and later).
//
// One block computes BLOCK_M query rows of one (batch, head): O = softmax(Q K^T * scale) V and
// LSE = log(sum(exp(Q K^T * scale))). K/V tiles of BLOCK_N keys stream through a STAGES-deep cp.async ring;
// each of the WARPS warps owns BLOCK_M / WARPS query rows and keeps its S tile, its P tile and its output
// accumulator in registers, so no score ever reaches device memory.
#include "mma_sm80.cuh"
#include "smem_tile.cuh"
#include "warp_gemm.cuh"
#include "online_softmax.cuh"

namespace cf {

struct Strides {  // in elements; the head dim is contiguous
    i64 batch, seq, head;
};

template <typename Elem = f16, int HEAD_DIM = 128, int BLOCK_M = 128, int BLOCK_N = 32, int WARPS = 4,
          int STAGES = 2, int MIN_BLOCKS = 2, bool IS_CAUSAL = false>
__global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS)
flash_fwd_kernel(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                 u16* __restrict__ out, float* __restrict__ lse,
                 i64 q_sb, i64 q_ss, i64 q_sh, i64 k_sb, i64 k_ss, i64 k_sh,  // element strides: batch, seq, head
                 i64 v_sb, i64 v_ss, i64 v_sh, i64 o_sb, i64 o_ss, i64 o_sh,
                 int nheads, int seqlen_q, int seqlen_k, int head_dim, float scale_log2) {
    constexpr int THREADS = WARPS * 32;
    constexpr int ROWS_PER_WARP = BLOCK_M / WARPS;
    constexpr int M_TILES = ROWS_PER_WARP / 16;
    constexpr int N_TILES = BLOCK_N / 8;
    constexpr int D_TILES = HEAD_DIM / 8;
    static_assert(ROWS_PER_WARP % 16 == 0 && BLOCK_N % 16 == 0 && STAGES >= 2, "tile shape");
    using QTile = SmemTile<BLOCK_M, HEAD_DIM>;
    using KVTile = SmemTile<BLOCK_N, HEAD_DIM>;
    const Strides q_str{q_sb, q_ss, q_sh}, k_str{k_sb, k_ss, k_sh}, v_str{v_sb, v_ss, v_sh}, o_str{o_sb, o_ss, o_sh};

    extern __shared__ uint4 smem_raw[];
    u16* sQ = reinterpret_cast<u16*>(smem_raw);    // later reused to stage O on its way out
    const u32 sQ_addr = smem_addr(sQ);
    const u32 sK_addr = sQ_addr + QTile::BYTES;    // STAGES K tiles, then STAGES V tiles
    const u32 sV_addr = sK_addr + STAGES * KVTile::BYTES;

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    // Causal blocks further down carry more work; launching them first evens out the tail.
    const int m_block = IS_CAUSAL ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int m0 = m_block * BLOCK_M;
    const int causal_offset = seqlen_k - seqlen_q;
    const int warp_row0 = warp * ROWS_PER_WARP;

    const int n_tiles = key_tiles_for_query_block<BLOCK_M, BLOCK_N, IS_CAUSAL>(m0, seqlen_k, causal_offset);

    const u16* q_bh = q + batch * q_str.batch + head * q_str.head + m0 * q_str.seq;
    const u16* k_bh = k + batch * k_str.batch + head * k_str.head;
    const u16* v_bh = v + batch * v_str.batch + head * v_str.head;
    // Key tiles are visited last-first, so the tiles that need masking come first.
    auto load_kv = [&](int t) {
        const int n0 = (n_tiles - 1 - t) * BLOCK_N, stage = t % STAGES;
        load_tile_async<KVTile, THREADS>(sK_addr + stage * KVTile::BYTES, k_bh + n0 * k_str.seq, k_str.seq,
                                         seqlen_k - n0, head_dim);
        load_tile_async<KVTile, THREADS>(sV_addr + stage * KVTile::BYTES, v_bh + n0 * v_str.seq, v_str.seq,
                                         seqlen_k - n0, head_dim);
    };

    load_tile_async<QTile, THREADS>(sQ_addr, q_bh, q_str.seq, seqlen_q - m0, head_dim);
    #pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) {
        if (t < n_tiles) load_kv(t);
        cp_async_commit();
    }

    float acc[M_TILES][D_TILES][4] = {};
    OnlineSoftmax<M_TILES> softmax;
    softmax.init();

    for (int t = 0; t < n_tiles; ++t) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile t visible to all warps; every warp is done with the stage refilled below
        if (t + STAGES - 1 < n_tiles) load_kv(t + STAGES - 1);
        cp_async_commit();

        const int n0 = (n_tiles - 1 - t) * BLOCK_N;
        const u32 sK_t = sK_addr + (t % STAGES) * KVTile::BYTES;
        const u32 sV_t = sV_addr + (t % STAGES) * KVTile::BYTES;

        // S = Q K^T (raw scores)
        float s[M_TILES][N_TILES][4] = {};
        gemm_smem_smem<Elem, M_TILES, N_TILES, HEAD_DIM, QTile, KVTile>(s, sQ_addr, warp_row0, sK_t, 0, lane);

        const bool partial = n0 + BLOCK_N > seqlen_k;
        const bool crosses_diagonal = IS_CAUSAL && n0 + BLOCK_N - 1 > m0 + causal_offset;
        if (partial || crosses_diagonal)  // padding keys must not enter the softmax sum; nor keys past the diagonal
            mask_where(s, m0 + warp_row0, n0, lane, [&](int row, int col) {
                return col >= seqlen_k || (IS_CAUSAL && col > row + causal_offset);
            });

        // m_i, l_i, acc <- online softmax step; s now holds P
        softmax.update(s, acc, scale_log2);

        // acc += P V
        u32 p[M_TILES][N_TILES / 2][4];
        accum_to_a_frags<Elem>(p, s);
        gemm_regs_smem_nn<Elem, M_TILES, D_TILES, BLOCK_N, KVTile>(acc, p, sV_t, lane);
    }

    // O = acc / l_i, staged through shared memory (sQ) for 16-byte coalesced stores; LSE per row.
    cp_async_wait<0>();
    __syncthreads();
    softmax.finish();
    float row_scale[M_TILES][2];
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            row_scale[mt][r] = softmax.inv_l(mt, r);
            const int row = m0 + warp_row0 + 16 * mt + lane / 4 + 8 * r;
            if (lane % 4 == 0 && row < seqlen_q)
                lse[(static_cast<i64>(batch) * nheads + head) * seqlen_q + row] = softmax.lse(mt, r, scale_log2);
        }
    stage_accum_in_smem<Elem, QTile>(sQ, warp_row0, acc, row_scale, lane);
    __syncthreads();
    store_tile<QTile, THREADS>(out + batch * o_str.batch + head * o_str.head + m0 * o_str.seq, sQ, o_str.seq,
                               seqlen_q - m0, head_dim);
}

}  // namespace cf

#ifndef CUPYFLASH_RUNTIME  // a standalone build (nvcc -Xptxas -v) gets the default instance to report on
template __global__ void cf::flash_fwd_kernel<>(const cf::u16*, const cf::u16*, const cf::u16*, cf::u16*, float*,
                                                cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, cf::i64,
                                                cf::i64, cf::i64, cf::i64, cf::i64, cf::i64, int, int, int, int,
                                                float);
#endif
