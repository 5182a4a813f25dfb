// FlashAttention-2 forward on tensor cores: mma.sync (sm_80 and later, Core = WarpMma) or wgmma (sm_90a, Core =
// WarpgroupMma, where four warps share each product).
//
// One block computes BLOCK_M query rows of one (batch, head): O = softmax(logits) V and LSE = log(sum(exp(logits)))
// with logits = Score(Q K^T) where Mask shows them. K/V tiles of BLOCK_N keys stream through a STAGES-deep cp.async
// ring, filled by every warp or by a producer warpgroup (Loads, pipeline.cuh); each warp that computes owns an
// equal share of the BLOCK_M query rows and keeps its S tile, its P tile and its output accumulator in registers,
// so no score ever reaches device memory.
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
#include "split_kv.cuh"
#include "pipeline.cuh"
#include "bulk_bias.cuh"

namespace cf {

// Dynamic shared memory: room to align the tiles as the core needs, a Q tile (reused to stage O), STAGES K and V
// tiles, STAGES bias tiles (none without a bias), and the pipeline's barriers (none when all warps load).
// Python's smem_bytes computes the same number and passes it as SMEM_BYTES, which the kernel checks.
template <typename Elem, int HEAD_DIM, int BLOCK_M, int BLOCK_N, int STAGES, typename Bias, typename Core,
          typename Loads>
__host__ __device__ constexpr int fwd_smem_bytes() {
    using S = typename Mma<Elem>::Storage;
    using C = Core;  // (operand tiles: f32x3's split in two on warpgroups)
    return Core::SMEM_ALIGN + C::template Operands<Elem, typename C::template Tile<BLOCK_M, HEAD_DIM, S>>::BYTES +
           2 * STAGES * C::template Operands<Elem, typename C::template Tile<BLOCK_N, HEAD_DIM, S>>::BYTES +
           STAGES * Bias::template tile_bytes<BLOCK_M, BLOCK_N>() + Loads::template barrier_bytes<STAGES>();
}

// Where the forward's tiles and barriers sit in dynamic shared memory, from the Q tile's aligned start (sQ).
template <typename Elem, int HEAD_DIM, int BLOCK_M, int BLOCK_N, int STAGES, typename Bias, typename Core>
struct FwdSmem {
    using S = typename Mma<Elem>::Storage;
    // (f32x3 on warpgroups: every operand tile in two parts, hi and lo: mma_tf32.cuh SplitTile)
    template <int ROWS, int COLS>
    using Operands = typename Core::template Operands<Elem, typename Core::template Tile<ROWS, COLS, S>>;
    using QTile = Operands<BLOCK_M, HEAD_DIM>;
    // (float32 "highest" on warpgroups above head dim 64, where Q is not held: K's parts alternate by panel, so that
    // S = Q K^T reads Q's hi part once for both: WarpgroupMma::issue_qk_paired)
    static constexpr bool PAIRED_K = Core::WARPGROUPS && SPLITS_OPERANDS<Elem> && HEAD_DIM > 64;
    using KVTile = typename Pick<PAIRED_K, PanelSplitTile<BLOCK_N, HEAD_DIM>, Operands<BLOCK_N, HEAD_DIM>>::type;
    // V as the core reads it: KVTile, or (float32 on wgmma) V^T, head dim x keys: the same bytes.
    using VTile = typename Pick<Core::template TRANSPOSED_V<Elem>, Operands<HEAD_DIM, BLOCK_N>, KVTile>::type;
    static constexpr int BIAS_BYTES = Bias::template tile_bytes<BLOCK_M, BLOCK_N>();
    static constexpr u32 KEYS = QTile::BYTES;                          // STAGES K tiles
    static constexpr u32 VALUES = KEYS + STAGES * KVTile::BYTES;        // STAGES V tiles
    static constexpr u32 BIASES = VALUES + STAGES * KVTile::BYTES;      // STAGES bias tiles
    static constexpr u32 BARRIERS = BIASES + STAGES * BIAS_BYTES;       // the pipeline's barriers
    // The Q tile (later reused to stage O on its way out), aligned up as the core's tiles need (the dynamic base is
    // 16-aligned).
    static __device__ __forceinline__ S* q() {
        extern __shared__ uint4 smem_raw[];
        return reinterpret_cast<S*>(smem_raw) +
               (Core::SMEM_ALIGN ? (Core::SMEM_ALIGN - smem_addr(smem_raw) % Core::SMEM_ALIGN) % Core::SMEM_ALIGN
                                 : 0) / sizeof(S);
    }
};

// What the threads of a block do with one query tile: everything (every warp copies and computes), or, with a
// producer warpgroup, one role of the two.
enum FwdRole : int { ALL_WARPS, PRODUCER, CONSUMERS };

// Whether a producer warpgroup that splits float32 tiles keeps registers enough to unroll its passes.
template <typename Loads, bool SPLIT, int WARPS, int MIN_BLOCKS>
__host__ __device__ constexpr bool producer_unrolls() {
    if constexpr (Loads::SPECIALIZED && SPLIT) return Loads::template producer_unrolls<WARPS, MIN_BLOCKS>();
    else return false;
}

// One query tile of one (batch, head), `work` (QueryBlock: the block's grid position; a persistent block's
// current WorkItem). A persistent block's producer and consumers count alike, so that ring slots and barrier phases
// carry on from tile to tile: step0, the key-tile steps its pipeline took before this tile; q_loads, the Q tiles
// copied before this one. Returns this tile's key-tile steps.
template <typename Elem, int HEAD_DIM, int BLOCK_M, int BLOCK_N, int WARPS, int STAGES, int MIN_BLOCKS, typename Mask,
          typename Score, typename Bias, typename Rows, typename Drop, typename Split, typename Core, typename Loads,
          int SMEM_BYTES, FwdRole ROLE, typename Work>
__device__ __forceinline__ int fwd_tile(const AttnParams& p, const typename Loads::Maps& maps, const Work& work,
                                        int step0, int q_loads) {
    // Warps that compute (all, or all but a producer warpgroup's) and the threads that copy tiles (all, or the
    // producer's).
    constexpr int MATH_WARPS = WARPS - Loads::PRODUCER_WARPS;
    constexpr int MATH_THREADS = MATH_WARPS * 32;
    constexpr int COPY_THREADS = Loads::SPECIALIZED ? Loads::PRODUCER_WARPS * 32 : WARPS * 32;
    constexpr int ROWS_PER_WARP = BLOCK_M / MATH_WARPS;
    constexpr int M_TILES = ROWS_PER_WARP / 16;
    constexpr int N_TILES = BLOCK_N / 8;
    constexpr int D_TILES = HEAD_DIM / 8;
    // O += P V: float32 at "highest" sums each key tile's product fresh, in slices of PV_CHUNK n-tiles where all of
    // them would not fit a second accumulator (warp_gemm.cuh accumulate); a warpgroup product takes its whole width.
    constexpr int PV_FLOATS = 96;
    // (above head dim 192 slices of 8 floats; a bias beside a score modifier leaves no registers for them, and at
    // 224, whose 28 n-tiles slice in 2s or 4s, the sliced loop spilled on sm_80: sums in place there)
    constexpr int PV_WIDE = (Bias::ON && !Score::IDENTITY) || HEAD_DIM == 224 ? 0 : 8;
    constexpr int PV_CHUNK =
        Core::WARPGROUPS ? D_TILES : column_chunk<Elem, PV_FLOATS, M_TILES, D_TILES, HEAD_DIM, PV_WIDE>();
    static_assert(ROWS_PER_WARP % 16 == 0 && BLOCK_N % 16 == 0 && STAGES >= 2, "tile shape");
    static_assert(SMEM_BYTES == fwd_smem_bytes<Elem, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, Bias, Core, Loads>(),
                  "Python's smem formula");
    static_assert(!Core::WARPGROUPS || (ROWS_PER_WARP == 16 && WARPS % 4 == 0), "warpgroups of 4 warps x 16 rows");
    // A block mask (bias.cuh BlockMask) adds nothing to a stage but its walk entries.
    constexpr bool WALK_ONLY = Bias::ON && !Bias::ADDS && !Bias::CUTS;
    static_assert(!Loads::SPECIALIZED ||
                      (Core::WARPGROUPS && MIN_BLOCKS <= 2 && (!Bias::ON || WALK_ONLY || Bias::BULK)),
                  "a producer warpgroup: wgmma, one or two blocks an SM (each block's registers its own: "
                  "pipeline.cuh consumer_regs), stages filled by copies only");
    static_assert(!Bias::BULK || (Loads::SPECIALIZED && Loads::TMA && !Loads::PERSISTENT),
                  "a bias by bulk copies comes from the producer's thread (bulk_bias.cuh)");
    static_assert(!(Bias::ON && Rows::PACKED), "bias with packed rows");
    static_assert(!(Split::ON && Rows::PACKED), "split keys with packed rows");
    using Smem = FwdSmem<Elem, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, Bias, Core>;
    using S = typename Smem::S;
    using QTile = typename Smem::QTile;
    using KVTile = typename Smem::KVTile;
    using VTile = typename Smem::VTile;
    // Q_HELD: float32 "highest" on warpgroups at head dims up to 64 holds its Q tile's two parts in registers (64 at
    // head dim 64), so that S = Q K^T reads only K from shared memory (WarpgroupMma::qk_held).
    constexpr bool Q_HELD = Core::WARPGROUPS && QTile::SPLIT && !Loads::OVERLAP && HEAD_DIM <= 64;
    constexpr bool TRANSPOSED_V = Core::template TRANSPOSED_V<Elem>;
    static_assert(!TRANSPOSED_V || ((Loads::TMA || KVTile::SPLIT) && !Rows::PACKED && !Bias::ON && !Drop::ON),
                  "V^T (float32 on wgmma) comes by bulk copies of dense rows, without a bias, mask or dropout");
    // f32x3 on warpgroups: the producer's threads split what they copied (cp.async, not bulk copies, so that each
    // thread's own wait covers its part); each product waited for in place (P V's step sum in a fresh accumulator).
    // (Overlapped consumers, PvInFlight, are prepared: docs/wip/2026-11-28-highest-fwd-overlap.patch.)
    static_assert(!KVTile::SPLIT || (Loads::SPECIALIZED && !Loads::TMA && !Loads::OVERLAP && !Loads::PERSISTENT),
                  "split operands: a producer warpgroup's cp.async, products waited for in place");
    S* sQ = Smem::q();
    const u32 sQ_addr = smem_addr(sQ);
    const u32 sK_addr = sQ_addr + Smem::KEYS;
    const u32 sV_addr = sQ_addr + Smem::VALUES;
    const u32 sBias_addr = sQ_addr + Smem::BIASES;
    constexpr int BIAS_BYTES = Smem::BIAS_BYTES;
    const u32 bars = sQ_addr + Smem::BARRIERS;

    const int lane = threadIdx.x % 32;
    const int warp = static_cast<int>(threadIdx.x / 32) - Loads::PRODUCER_WARPS;  // among the warps that compute
    // Blocks further down carry more work under a causal mask; launching them first evens out the tail.
    const Split split(p, work.tile());
    const int m_block = Mask::MASKS ? split.query_tiles(work.tiles()) - 1 - split.query_tile(work.tile())
                                    : split.query_tile(work.tile());
    const int head = work.head(), batch = work.batch();
    const Seq seq = Rows::of(p, batch);
    const int m0 = m_block * BLOCK_M;
    if (Rows::PACKED && m0 >= seq.seqlen_q) return 0;  // packed batches: the grid covers the longest entry
    const S* k_bh = elems<Elem>(p.k) + row_offset(p.k_str, batch, kv_head_of(p, head), seq.k0);
    const S* v_bh = elems<Elem>(p.v) + row_offset(p.v_str, batch, kv_head_of(p, head), seq.k0);
    const int warp_row0 = warp * ROWS_PER_WARP;
    const int seqlen_k = seq.seqlen_k;
    const Mask mask(p, seq);
    const Score score(p, seq, batch, head);
    const Drop drop(p, batch, head);

    // Key tiles [first, end) hold every key these rows see; they are visited last-first, so the tiles that need
    // masking on the diagonal come first. A boolean mask's tile summary drops the tiles it hides wholly: step t
    // then takes the t-th tile holding a visible pair. Its walk entry (mask_tiles.cuh) comes with the stage's
    // tile; thread 0 walks to the next load's entry as it issues a load, while the other warps go on.
    using Tiles = typename Bias::Tiles;
    const Tiles tiles(p, false, batch, head, m_block);
    const int2 key_tiles = split.keys(mask.template key_tiles<BLOCK_M, BLOCK_N>(m0, seqlen_k));
    int n_tiles = key_tiles.y - key_tiles.x;
    if constexpr (Tiles::SKIPS) n_tiles = tiles.count(key_tiles.x, key_tiles.y);
    auto after = [&](int entry) { return tiles.last_entry((entry >> 1) - 1, key_tiles.x); };  // -1 stays -1

    // Step t's copies, by the threads that copy (entry: step t's walk entry, Tiles::SKIPS).
    auto key_tile = [&](int t, int entry) { return Tiles::SKIPS ? entry >> 1 : key_tiles.y - 1 - t; };
    // A producer's copy loops stay rolled (two passes at a time): it runs on few registers, but where it splits
    // float32 tiles beside one consumer warpgroup, which leaves it many (pipeline.cuh splitting_producer_regs).
    constexpr bool PRODUCER_UNROLLS = producer_unrolls<Loads, KVTile::SPLIT, WARPS, MIN_BLOCKS>();
    constexpr int COPY_UNROLL = Loads::SPECIALIZED && !PRODUCER_UNROLLS ? 2 : TileCopy<KVTile, COPY_THREADS>::PASSES;
    // Where such a producer splits K and V^T (float32 "highest" on warpgroups, one consumer warpgroup), it loads them
    // into its registers and splits them as it stores them: a copy into shared memory and its read back less (+2% at
    // head dim 128 on the H100; predicted up to 1.25x were the forward bound on shared memory's bandwidth, which it
    // is not: docs/performance.md, twenty-eighth session).
    constexpr bool HELD_SPLIT = KVTile::SPLIT && PRODUCER_UNROLLS && TRANSPOSED_V && !Loads::PERSISTENT;
    // (Step t of this tile is step step0 + t of the block's pipeline: its ring slot.)
    auto load_keys = [&](int t, int entry) {
        const int n0 = key_tile(t, entry) * BLOCK_N;
        load_tile_async<KVTile, COPY_THREADS, COPY_UNROLL>(sK_addr + (step0 + t) % STAGES * KVTile::BYTES,
                                                           k_bh + n0 * p.k_str.seq, p.k_str.seq, seqlen_k - n0,
                                                           p.head_dim);
    };
    // V^T staged (batch, K/V heads, head dim, keys padded to 32): rows of keys (computed where used: held at the
    // kernel's start, the two values cost the forward at head dim 64 1%)
    auto transposed_keys = [&] { return (p.seqlen_k + 31) / 32 * 32; };
    auto transposed_values = [&](int keys) {
        return elems<Elem>(p.v) + (static_cast<i64>(batch) * p.nheads_k + kv_head_of(p, head)) * p.head_dim * keys;
    };
    auto load_values = [&](int t, int entry) {
        const int n0 = key_tile(t, entry) * BLOCK_N;
        if constexpr (TRANSPOSED_V) {
            const int keys = transposed_keys();
            load_tile_async<VTile, COPY_THREADS, COPY_UNROLL>(sV_addr + (step0 + t) % STAGES * KVTile::BYTES,
                                                              transposed_values(keys) + n0, keys, p.head_dim,
                                                              keys - n0);
        } else {
            load_tile_async<KVTile, COPY_THREADS, COPY_UNROLL>(sV_addr + (step0 + t) % STAGES * KVTile::BYTES,
                                                               v_bh + n0 * p.v_str.seq, p.v_str.seq, seqlen_k - n0,
                                                               p.head_dim);
        }
    };
    auto load_kv = [&](int t, int entry) {
        const int n0 = key_tile(t, entry) * BLOCK_N, stage = t % STAGES;
        load_keys(t, entry);
        load_values(t, entry);
        if constexpr (Bias::ON)
            Bias::template load_tile<BLOCK_M, BLOCK_N, COPY_THREADS>(sBias_addr + stage * BIAS_BYTES, p, batch, head,
                                                                     m0, n0, seq.seqlen_q - m0, seqlen_k - n0, entry);
        if constexpr (Tiles::SKIPS) {
            Bias::template stash<BLOCK_N, 0>(sBias_addr + stage * BIAS_BYTES, entry);
            if (threadIdx.x == 0) Bias::template stash<BLOCK_N, 1>(sBias_addr + stage * BIAS_BYTES, after(entry));
        }
    };
    auto load_q = [&] {
        load_tile_async<QTile, COPY_THREADS, COPY_UNROLL>(
            sQ_addr, elems<Elem>(p.q) + row_offset(p.q_str, batch, head, seq.q0 + m0), p.q_str.seq, seq.seqlen_q - m0,
            p.head_dim);
    };
    int first_entry = Tiles::SKIPS ? tiles.last_entry(key_tiles.y - 1, key_tiles.x) : 0;

    float acc[M_TILES][D_TILES][4] = {};
    OnlineSoftmax<M_TILES> softmax;
    softmax.init();
    // logits = Score(S + bias) where the mask shows them, -inf elsewhere (padding keys too, so that they never
    // enter the softmax sum).
    float logit_offset[M_TILES][2];  // logits = s + logit_offset along each row (score_mod.cuh apply_score_mod_rows)
    auto to_logits = [&](float (&s)[M_TILES][N_TILES][4], int t, int entry) {
        const int n0 = key_tile(t, entry) * BLOCK_N;
        if constexpr (Bias::ON)
            Bias::template apply<false, BLOCK_M, BLOCK_N, true>(s, sBias_addr + (step0 + t) % STAGES * BIAS_BYTES,
                                                                warp_row0, 0, lane, p, entry);
        apply_score_mod_rows<Bias::ON>(score, s, m0 + warp_row0, n0, lane, logit_offset);
        mask_fragment<BLOCK_M, BLOCK_N, false, Core::WARPGROUPS>(mask, s, m0 + warp_row0, n0, lane, m0, n0, seqlen_k);
    };

    if constexpr (Loads::SPECIALIZED) {
        // A producer warpgroup copies. With OVERLAP each consumer warpgroup overlaps its softmax with its own
        // products: step t issues S_t = Q K_t^T and O += P_{t-1} V_{t-1}, waits for S_t only, computes P_t while
        // the second product runs, then waits for it and rescales O. K_t's slot is released once S_t is in
        // registers, V_{t-1}'s once O has it.
        static_assert((!Bias::ON || ((WALK_ONLY || Bias::BULK) && Loads::TMA)) && !Drop::ON,
                      "a producer's stages hold K and V only (with bulk copies, also a block mask's walk entry: its "
                      "one thread's stores are released by its arrival; or a bias's tile, copied with the keys); "
                      "dropout spills the overlap");
        // A block mask's walk: the producer's thread finds step t's key tile, stashes its entry in the stage's
        // bias slot before the arrival that publishes the key tile, and the consumers read it once they have
        // acquired that tile (before releasing it: the slot's next entry waits for that release).
        auto stash_of = [&](int t) { return sBias_addr + (step0 + t) % STAGES * BIAS_BYTES; };
        using L = Loads;
        constexpr int KEYS = L::KEYS, VALUES = L::VALUES;
        // Step t of this tile is step step0 + t of the block's pipeline: its ring slot and barrier phase.
        auto sK_of = [&](int t) { return sK_addr + (step0 + t) % STAGES * KVTile::BYTES; };
        auto sV_of = [&](int t) { return sV_addr + (step0 + t) % STAGES * KVTile::BYTES; };
        if constexpr (ROLE == PRODUCER) {  // copies only
            // Q: with the first key tile; a persistent block's, once the consumers have stored the previous tile's
            // output from sQ, on barriers of its own (so that the first key tiles can come in before). Without a
            // key tile nothing waits for Q, and the consumers stage their (zero) output in sQ at once: Q must not
            // be copied then.
            if constexpr (L::TMA) {  // one thread issues every bulk copy
                // Packed rows: the maps describe one (1, total, heads, dim) array, where an entry's rows start at
                // seq.q0 and seq.k0; a box at the entry's end reads the next entry's first rows (zeros past the
                // array): query rows past the entry are computed and never stored, keys past it are hidden
                // (mask_fragment) and their values zeroed before use (the consumers, before their first product).
                const int q_row = seq.q0 + m0, k_row = seq.k0, map_batch = Rows::PACKED ? 0 : batch;
                const int kv_head = kv_head_of(p, head);
                int entry = first_entry;
                for (int t = 0; t < n_tiles; ++t) {
                    const int n0 = key_tile(t, entry) * BLOCK_N;
                    L::template reserve<STAGES>(bars, KEYS, step0 + t);
                    if constexpr (Tiles::SKIPS) Bias::template stash<BLOCK_N, 0>(stash_of(t), entry);
                    const bool q_too = t == 0 && !L::PERSISTENT;
                    u32 bytes = KVTile::BYTES + (q_too ? QTile::BYTES : 0);
                    if constexpr (Bias::BULK) bytes += Bias::template copy_bytes<BLOCK_M, BLOCK_N>(p, entry);
                    const u32 keys_landed = L::template expect<STAGES>(bars, KEYS, step0 + t, bytes);
                    if (q_too) tma_load_tile<QTile>(sQ_addr, maps.q, q_row, head, map_batch, keys_landed);
                    tma_load_tile<KVTile>(sK_of(t), maps.k, k_row + n0, kv_head, map_batch, keys_landed);
                    if constexpr (Bias::BULK)  // the bias's (mask's) tile rides on the key tile's barrier
                        Bias::template copy<BLOCK_M, BLOCK_N>(stash_of(t), maps.bias, p, batch, head, m0, n0,
                                                              keys_landed, entry);
                    if (L::PERSISTENT && t == 0) {
                        L::template reserve_q<STAGES>(bars, q_loads);
                        tma_load_tile<QTile>(sQ_addr, maps.q, q_row, head, map_batch,
                                             L::template expect_q<STAGES>(bars, QTile::BYTES));
                    }
                    L::template reserve<STAGES>(bars, VALUES, step0 + t);
                    const u32 values_landed = L::template expect<STAGES>(bars, VALUES, step0 + t, VTile::BYTES);
                    if constexpr (TRANSPOSED_V)  // V^T: its columns are the keys
                        tma_load_tile_cols<VTile>(sV_of(t), maps.v, n0, kv_head, map_batch, values_landed);
                    else
                        tma_load_tile<KVTile>(sV_of(t), maps.v, k_row + n0, kv_head, map_batch, values_landed);
                    if constexpr (Tiles::SKIPS) entry = after(entry);
                }
                return n_tiles;
            }
            auto at = [&](u32 addr) { return reinterpret_cast<float*>(sQ) + (addr - sQ_addr) / 4; };
            if constexpr (HELD_SPLIT) {
                // K and V^T through the producer's registers: tile t + 1's loads are in flight while tile t waits
                // for its ring slots and is split into them (HeldChunks; Q, once, by copy and split as below)
                using HeldK = HeldChunks<KVTile, COPY_THREADS>;
                using HeldV = HeldChunks<VTile, COPY_THREADS>;
                const int keys = transposed_keys();
                const S* v_transposed = transposed_values(keys);
                auto fetch = [&](int t, HeldK& k_chunks, HeldV& v_chunks) {
                    const int n0 = key_tile(t, 0) * BLOCK_N;
                    k_chunks.load(k_bh + n0 * p.k_str.seq, p.k_str.seq, seqlen_k - n0, p.head_dim);
                    v_chunks.load(v_transposed + n0, keys, p.head_dim, keys - n0);
                };
                HeldK k_now, k_next;
                HeldV v_now, v_next;
                if (n_tiles > 0) fetch(0, k_now, v_now);
                for (int t = 0; t < n_tiles; ++t) {
                    if (t + 1 < n_tiles) fetch(t + 1, k_next, v_next);
                    L::template reserve<STAGES>(bars, KEYS, step0 + t);
                    if (t == 0) {
                        load_q();
                        cp_async_commit();
                        cp_async_wait<0>();
                        split_copied_tile<QTile, COPY_THREADS, 2>(at(sQ_addr));
                    }
                    k_now.store_split(at(sK_of(t)));
                    L::template publish_stored<STAGES>(bars, KEYS, step0 + t);
                    L::template reserve<STAGES>(bars, VALUES, step0 + t);
                    v_now.store_split(at(sV_of(t)));
                    L::template publish_stored<STAGES>(bars, VALUES, step0 + t);
                    k_now = k_next, v_now = v_next;
                }
                return n_tiles;
            }
            for (int t = 0; t < n_tiles; ++t) {
                L::template reserve<STAGES>(bars, KEYS, step0 + t);
                if (t == 0 && !L::PERSISTENT) load_q();
                load_keys(t, 0);
                if constexpr (KVTile::SPLIT) {  // each thread splits what it copied once it landed, then arrives
                    cp_async_commit();
                    L::template reserve<STAGES>(bars, VALUES, step0 + t);
                    load_values(t, 0);
                    cp_async_commit();
                    cp_async_wait<1>();  // Q and K_t
                    if (t == 0) split_copied_tile<QTile, COPY_THREADS, 2>(at(sQ_addr));
                    split_copied_tile<KVTile, COPY_THREADS, COPY_UNROLL>(at(sK_of(t)));
                    L::template publish_stored<STAGES>(bars, KEYS, step0 + t);
                    cp_async_wait<0>();
                    split_copied_tile<VTile, COPY_THREADS, COPY_UNROLL>(at(sV_of(t)));
                    L::template publish_stored<STAGES>(bars, VALUES, step0 + t);
                    continue;
                }
                L::template publish<STAGES>(bars, KEYS, step0 + t);
                if (L::PERSISTENT && t == 0) {
                    L::template reserve_q<STAGES>(bars, q_loads);
                    load_q();
                    L::template publish_q<STAGES>(bars);
                }
                L::template reserve<STAGES>(bars, VALUES, step0 + t);
                load_values(t, 0);
                L::template publish<STAGES>(bars, VALUES, step0 + t);
            }
            return n_tiles;
        }
        // Consumers. A persistent block's Q tile has barriers of its own.
        if constexpr (Bias::BULK)
            Bias::template prepare_rows<M_TILES, STAGES>(p, sBias_addr, BIAS_BYTES, batch, head, m0, warp_row0,
                                                         seq.seqlen_q, lane);
        if (L::PERSISTENT && n_tiles > 0) {  // sQ goes back to the producer only now (pipeline.cuh reserve_q)
            L::template free_q<STAGES>(bars, lane);
            L::template acquire_q<STAGES>(bars, q_loads);
        }

        // Step t's scores, once S_t = Q K_t^T has landed in s: K_t's slot goes back to the producer (once a bias's
        // tile in it has been added), s becomes P_t (m_i, l_i updated); returns whether O must be rescaled (by
        // alpha) before P_t V_t joins it.
        float alpha[M_TILES][2];
        auto scores_to_p = [&](float (&s)[M_TILES][N_TILES][4], int t, int entry) {
            fence_fragment(s[0]);
            if constexpr (!Bias::BULK) L::template release<STAGES>(bars, KEYS, step0 + t, lane);
            to_logits(s, t, entry);
            if constexpr (Bias::BULK) L::template release<STAGES>(bars, KEYS, step0 + t, lane);
            return softmax.template step<Score::ROW_OFFSETS>(s, alpha, p.scale_log2, logit_offset);
        };
        // Packed rows by bulk copies: the entry's last key tile (the first step) holds the next entry's first rows
        // past its end, whose probabilities are 0 but whose values need not be finite (0 x inf is NaN). Every
        // consumer thread zeroes a share of them, and the tensor cores' proxy sees the zeros before any product
        // reads the tile. Done before the first product, where the consumer warps wait together for Q anyway:
        // at the first step's P V, the barrier held every warpgroup until the last had its first scores, and
        // the packed forward ran 23% longer than the dense one on the same work at head dim 64 (H100).
        if constexpr (Rows::PACKED && L::TMA) {
            const int valid = seqlen_k - key_tile(0, 0) * BLOCK_N;
            if (n_tiles > 0 && valid < BLOCK_N) {  // block-uniform
                L::template acquire<STAGES>(bars, VALUES, step0);  // (waited for again at the product: at once)
                zero_rows_from<KVTile, MATH_THREADS>(sV_of(0), valid, threadIdx.x - L::PRODUCER_WARPS * 32);
                async_proxy_fence();
                L::template sync_consumers<MATH_THREADS>();
            }
        }
        // Step t's walk entry (a block mask's), read once its key tile is acquired, by lane 0 for its warp: the
        // lane that releases the slot (release: __syncwarp, then lane 0 arrives) is then the one that read it, so
        // its arrival alone orders the read before the producer's next stash there. (Read by every lane, the
        // order held through __syncwarp, which compute-sanitizer's racecheck does not follow: it reported the
        // other lanes' reads against the next stash wherever a block mask's walk reused a slot.)
        auto entry_of = [&](int t) {
            if constexpr (Tiles::SKIPS) {
                int entry = 0;
                if (lane == 0) entry = Bias::template stashed<BLOCK_N, 0>(stash_of(t));
                return __shfl_sync(0xffffffffu, entry, 0);
            } else {
                return 0;
            }
        };
        u32 pf[M_TILES][BLOCK_N / Mma<Elem>::K_STEP][4];  // P, the register operand of O += P V
        if constexpr (!L::OVERLAP) {  // each product waited for in place; the two warpgroups overlap each other
            u32 q_hi[1][Q_HELD ? HEAD_DIM / 8 : 1][4], q_lo[1][Q_HELD ? HEAD_DIM / 8 : 1][4];  // (Q_HELD)
            for (int t = 0; t < n_tiles; ++t) {
                float s[M_TILES][N_TILES][4];
                L::template acquire<STAGES>(bars, KEYS, step0 + t);
                const int entry = entry_of(t);
                if constexpr (Q_HELD) {
                    if (t == 0) load_held_rows<QTile, HEAD_DIM>(q_hi, q_lo, sQ_addr, warp_row0, lane);  // split by now
                    Core::template qk_held<Elem, HEAD_DIM, KVTile>(s, q_hi, q_lo, sK_of(t));
                } else {
                    Core::template qk<Elem, HEAD_DIM, QTile, KVTile>(s, sQ_addr, warp_row0, sK_of(t), lane);
                }
                if (scores_to_p(s, t, entry)) softmax.rescale(acc, alpha);
                accum_to_a_frags<Elem>(pf, s);
                L::template acquire<STAGES>(bars, VALUES, step0 + t);
                accumulate<Elem, PV_FLOATS, PV_CHUNK>(acc, [&](float (&c)[M_TILES][PV_CHUNK][4], int nt0) {
                    Core::template pv<Elem, BLOCK_N, VTile>(c, pf, sV_of(t), lane, nt0);
                });
                L::template release<STAGES>(bars, VALUES, step0 + t, lane);
            }
        }
        if constexpr (L::OVERLAP) {
            // The first step, peeled so that every product issued in the loop below is waited for on every path
            // (ptxas serializes the products when a path could leave one in flight: C7514).
            PvInFlight<Elem, BLOCK_N, VTile, D_TILES> pv(pf);  // O += P_{t-1} V_{t-1}
            if (n_tiles > 0) {
                float s[M_TILES][N_TILES][4];
                L::template acquire<STAGES>(bars, KEYS, step0);
                const int entry = entry_of(0);
                Core::template qk<Elem, HEAD_DIM, QTile, KVTile>(s, sQ_addr, warp_row0, sK_of(0), lane);
                scores_to_p(s, 0, entry);  // O is still 0: nothing to rescale
                pv.set_p(s);
            }
            for (int t = 1; t < n_tiles; ++t) {
                float s[M_TILES][N_TILES][4];
                L::template acquire<STAGES>(bars, KEYS, step0 + t);
                const int entry = entry_of(t);
                QkSum<N_TILES, PANEL_PAIRED<KVTile>> qk;  // (16-bit: into s; f32x3: K's parts, folded once landed)
                qk.template issue<Elem, HEAD_DIM, QTile, KVTile, QTile::SPLIT>(s, sQ_addr, warp_row0, sK_of(t));
                L::template acquire<STAGES>(bars, VALUES, step0 + t - 1);
                pv.issue(acc, sV_of(t - 1));
                Core::template wait<1>();  // S_t has landed; O += P_{t-1} V_{t-1} may still run
                if constexpr (PANEL_PAIRED<KVTile>) qk.landed(s);
                const bool rescales = scores_to_p(s, t, entry);
                Core::template wait<0>();
                pv.landed(acc);
                L::template release<STAGES>(bars, VALUES, step0 + t - 1, lane);
                if (rescales) softmax.rescale(acc, alpha);
                pv.set_p(s);
            }
            if (n_tiles > 0) {  // O += P_last V_last
                L::template acquire<STAGES>(bars, VALUES, step0 + n_tiles - 1);
                pv.run(acc, sV_of(n_tiles - 1), lane);
                L::template release<STAGES>(bars, VALUES, step0 + n_tiles - 1, lane);
            }
        }
    } else {
        load_q();
        fill_pipeline<STAGES, Tiles::SKIPS>(n_tiles, first_entry, load_kv, after);

        for (int t = 0; t < n_tiles; ++t) {
            cp_async_wait<STAGES - 2>();
            Core::tiles_landed();
            __syncthreads();  // tile t visible to all warps; every warp is done with the stage refilled below
            int entry = 1;  // 2 * key tile + partial (a mask's walk)
            if constexpr (Tiles::SKIPS)
                entry = Bias::template stashed<BLOCK_N, 0>(sBias_addr + t % STAGES * BIAS_BYTES);
            if (t + STAGES - 1 < n_tiles) {
                int next = 0;
                if constexpr (Tiles::SKIPS)
                    next = Bias::template stashed<BLOCK_N, 1>(sBias_addr + (t + STAGES - 2) % STAGES * BIAS_BYTES);
                load_kv(t + STAGES - 1, next);
            }
            cp_async_commit();

            const int n0 = key_tile(t, entry) * BLOCK_N;
            const auto kept = drop.template kept<false, M_TILES, N_TILES>(m0 + warp_row0, n0, lane);  // dropout.cuh
            // S = Q K^T, then logits
            float s[M_TILES][N_TILES][4] = {};
            // (the small terms first but with the band mask, where the 128x64 tile at head dim 32 spilled 300 bytes;
            // score tiles of at most 32 floats a thread above head dim 32)
            constexpr bool SMALL_FIRST =
                small_terms_first<Score, Bias, Drop, Rows, HEAD_DIM, M_TILES * N_TILES * 4, 32>() && !Mask::MASKS;
            Core::template qk<Elem, HEAD_DIM, QTile, KVTile, SMALL_FIRST>(s, sQ_addr, warp_row0,
                                                                          sK_addr + t % STAGES * KVTile::BYTES, lane);
            to_logits(s, t, entry);

            // m_i, l_i, acc <- online softmax step; s now holds P. Dropout zeroes dropped entries after l_i has
            // summed them all; kept ones are divided by the keep probability with 1 / l_i at the end.
            softmax.template update<Score::ROW_OFFSETS>(s, acc, p.scale_log2, logit_offset);
            drop_fragment(kept, s);

            // acc += P V
            u32 pf[M_TILES][BLOCK_N / Mma<Elem>::K_STEP][4];
            accum_to_a_frags<Elem>(pf, s);
            accumulate<Elem, PV_FLOATS, PV_CHUNK>(acc, [&](float (&c)[M_TILES][PV_CHUNK][4], int nt0) {
                Core::template pv<Elem, BLOCK_N, KVTile>(c, pf, sV_addr + t % STAGES * KVTile::BYTES, lane, nt0);
            });
        }
    }

    // O = acc / l_i, staged through shared memory (sQ) for 16-byte coalesced stores; LSE per row. With split keys,
    // this split's O and LSE go to the fp32 partials (split_kv.cuh) instead.
    if constexpr (!Loads::SPECIALIZED) {  // (a warpgroup's wgmma read only its own rows of sQ, which it overwrites)
        cp_async_wait<0>();
        __syncthreads();
    }
    softmax.finish();
    float row_scale[M_TILES][2];
    if constexpr (Split::ON) {
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int r = 0; r < 2; ++r) row_scale[mt][r] = softmax.inv_l(mt, r) * drop.scale();
        write_split_partials(p, split, batch, head, m0 + warp_row0, acc, row_scale, softmax, lane);
        return n_tiles;
    }
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            row_scale[mt][r] = softmax.inv_l(mt, r) * drop.scale();
            const int row = m0 + warp_row0 + 16 * mt + lane / 4 + 8 * r;
            if (lane % 4 == 0 && row < seq.seqlen_q)
                p.lse[Rows::lse_offset(p, seq, batch, head, row)] = softmax.lse(mt, r, p.scale_log2);
        }
    stage_accum_in_smem<Elem, QTile>(sQ, warp_row0, acc, row_scale, lane);
    if constexpr (Loads::SPECIALIZED) Loads::template sync_consumers<MATH_THREADS>();
    else __syncthreads();
    store_tile<QTile, MATH_THREADS, WARPS * 32 - MATH_THREADS>(
        elems<Elem>(p.out) + row_offset(p.o_str, batch, head, seq.q0 + m0), sQ, p.o_str.seq, seq.seqlen_q - m0,
        p.head_dim);
    return n_tiles;
}

// A persistent block's query tiles: the grid's blocks take the (query tile, head, batch) work items in turn, block
// b the items b, b + gridDim.x, ... Without a mask every tile costs the same: query tiles fastest (a head's K and
// V stay in L2 while its tiles run). Under a mask (causal, windows), tile costs differ: tiles slowest, so that each
// round of gridDim.x items holds tiles of one or two sizes (fwd_tile visits tile 0 as the last query tile, the
// longest under a causal mask: the longest round comes first), and the blocks finish their rounds together; in
// the other order a block's items were whichever sizes fell to it (H100, causal, persistent / one block a tile:
// 0.55-0.95 in that order, 0.69-1.01 in this one).
template <bool BY_TILE>
struct WorkItem {
    int tile_, tiles_, head_, batch_;
    __device__ __forceinline__ WorkItem(const AttnParams& p, int tiles, int item)
        : tile_(BY_TILE ? item / (p.nheads * p.batch) : item % tiles), tiles_(tiles),
          head_(BY_TILE ? item % p.nheads : item / tiles % p.nheads),
          batch_(BY_TILE ? item / p.nheads % p.batch : item / tiles / p.nheads) {}
    __device__ __forceinline__ int tile() const { return tile_; }
    __device__ __forceinline__ int tiles() const { return tiles_; }
    __device__ __forceinline__ int head() const { return head_; }
    __device__ __forceinline__ int batch() const { return batch_; }
};

// The block's query tiles, one role's part of each: its grid position's tile, or (persistent) its work items b,
// b + gridDim.x, ..., counting the pipeline's steps and Q copies alike in every role.
template <FwdRole ROLE, typename Elem, int HEAD_DIM, int BLOCK_M, int BLOCK_N, int WARPS, int STAGES, int MIN_BLOCKS,
          typename Mask, typename Score, typename Bias, typename Rows, typename Drop, typename Split, typename Core,
          typename Loads, int SMEM_BYTES>
__device__ __forceinline__ void fwd_tiles(const AttnParams& p, const typename Loads::Maps& maps) {
#define CF_FWD_TILE fwd_tile<Elem, HEAD_DIM, BLOCK_M, BLOCK_N, WARPS, STAGES, MIN_BLOCKS, Mask, Score, Bias, Rows, \
                             Drop, Split, Core, Loads, SMEM_BYTES, ROLE>
    if constexpr (!Loads::PERSISTENT) {
        CF_FWD_TILE(p, maps, QueryBlock<Bias::ADDS>{}, 0, 0);
    } else {
        static_assert(!Rows::PACKED && !Bias::ADDS, "persistent blocks: dense batches' (tile, head, batch) order");
        const int tiles = (p.seqlen_q + BLOCK_M - 1) / BLOCK_M * p.num_splits;  // the grid's x extent unpersisted
        const int items = tiles * p.nheads * p.batch;
        int steps = 0, q_loads = 0;
        for (int item = blockIdx.x; item < items; item += gridDim.x) {
            // The consumers stage each tile's output in sQ and store it from there: every consumer warp is done
            // with the last tile's before any stages the next one's. (Between two tiles with keys the Q copy
            // orders them already, through the producer's barriers and a bulk copy, a chain that racecheck reports
            // as hazards; a keyless tile has no Q copy at all. The Q copy holds every consumer warp back until all
            // are done anyway.)
            if constexpr (ROLE == CONSUMERS)
                if (item != blockIdx.x) Loads::template sync_consumers<(WARPS - Loads::PRODUCER_WARPS) * 32>();
            const int taken = CF_FWD_TILE(p, maps, WorkItem<Mask::MASKS>(p, tiles, item), steps, q_loads);
            steps += taken;
            q_loads += taken > 0;
        }
    }
#undef CF_FWD_TILE
}

template <typename Elem = f16, int HEAD_DIM = 128, int BLOCK_M = 128, int BLOCK_N = 32, int WARPS = 4,
          int STAGES = 2, int MIN_BLOCKS = 2, typename Mask = NoMask, typename Score = ScoreMod<>,
          typename Bias = NoBias, typename Rows = DenseRows, typename Drop = NoDropout, typename Split = OneSplit,
          typename Core = WarpMma, typename Loads = AllWarpsLoad,
          int SMEM_BYTES = fwd_smem_bytes<Elem, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, Bias, Core, Loads>()>
__global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS)
flash_fwd_kernel(const AttnParams p, const __grid_constant__ typename Loads::Maps maps) {
#define CF_FWD_TILES(ROLE) fwd_tiles<ROLE, Elem, HEAD_DIM, BLOCK_M, BLOCK_N, WARPS, STAGES, MIN_BLOCKS, Mask, Score, \
                                     Bias, Rows, Drop, Split, Core, Loads, SMEM_BYTES>
    if constexpr (!Loads::SPECIALIZED) {
        CF_FWD_TILES(ALL_WARPS)(p, maps);
    } else {
        // A producer warpgroup and consumer warpgroups (pipeline.cuh): the barriers are set up once, then each
        // role takes its part of the block's query tiles (fwd_tiles).
        using L = Loads;
        constexpr int MATH_WARPS = WARPS - L::PRODUCER_WARPS;
        using Smem = FwdSmem<Elem, HEAD_DIM, BLOCK_M, BLOCK_N, STAGES, Bias, Core>;
        const u32 bars = smem_addr(Smem::q()) + Smem::BARRIERS;
        L::template init<STAGES, MATH_WARPS>(bars);
        __syncthreads();
        if (threadIdx.x < L::PRODUCER_WARPS * 32) {
            if constexpr (Smem::KVTile::SPLIT) L::template as_splitting_producer<WARPS, MIN_BLOCKS>();
            else L::as_producer();
            if (L::TMA && threadIdx.x != 0) return;  // one thread issues the bulk copies
            CF_FWD_TILES(PRODUCER)(p, maps);
            if constexpr (!L::TMA) cp_async_wait<0>();  // leave with no copy in flight
            return;
        }
        L::template as_consumer<WARPS, MIN_BLOCKS>();
        CF_FWD_TILES(CONSUMERS)(p, maps);
    }
#undef CF_FWD_TILES
}

}  // namespace cf

#ifndef CUPYFLASH_RUNTIME  // a standalone build (nvcc -Xptxas -v) gets the default instance to report on
template __global__ void cf::flash_fwd_kernel<>(const cf::AttnParams, const cf::NoTensorMaps);
#endif
