// How key tiles reach shared memory in the forward kernel: the Loads policy.
//
// AllWarpsLoad (every family): every warp copies tiles with cp.async and computes; one __syncthreads a key tile
// hands a stage from the copies to the products, so all warps move in step.
//
// ProducerWarpgroup (sm_90a): warpgroup 0 only copies, the other warpgroups only compute. K and V tiles each have a
// ring of STAGES slots, each slot guarded by two mbarriers: `full` (its copies have landed) and `empty` (every
// consumer warp is done with it). Consumers wait on the slots' barriers, not on each other, so one warpgroup's
// softmax can run while another's products use the tensor cores. The producer gives registers back (setmaxnreg)
// for the consumers' S, P and O fragments. Its copies are cp.async by all 128 threads, or (TMA) bulk tensor copies
// issued by one thread, which the copy engine writes straight into the swizzled layout and counts in bytes on the
// slot's barrier.
#pragma once
#include "mma_sm80.cuh"
#include "params.cuh"

namespace cf {

// ---- mbarrier (PTX ISA "Parallel Synchronization and Communication Instructions: mbarrier")
__device__ __forceinline__ void mbarrier_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
}
// One arrival, with release semantics: this thread's earlier shared-memory writes are visible to a waiter.
__device__ __forceinline__ void mbarrier_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(bar) : "memory");
}
// This thread's arrival, made once its cp.async copies issued so far have landed (.noinc: the arrival is one of
// the count the barrier was initialised with).
__device__ __forceinline__ void mbarrier_arrive_after_copies(u32 bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" :: "r"(bar) : "memory");
}
// This thread's arrival, and `bytes` more to come from bulk copies before the phase can complete.
__device__ __forceinline__ void mbarrier_arrive_expect_bytes(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}
// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n" : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}

// ---- bulk tensor copies (PTX ISA "cp.async.bulk.tensor"), sm_90
// A box of a 4-D tensor map (cuda_src/params.cuh TensorMap) at coordinates (c0 innermost .. c3) into shared memory
// at `dst`, counted in bytes on mbarrier `bar`. Coordinates past the tensor's extents fill zeros.
__device__ __forceinline__ void tma_load_4d(u32 dst, const TensorMap& map, int c0, int c1, int c2, int c3, u32 bar) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
                 :: "r"(dst), "l"(reinterpret_cast<unsigned long long>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
                    "r"(bar)
                 : "memory");
}

// Rows [row0, row0 + Tile::ROW_COUNT) of (head, batch) into a SwizzledTile (wgmma.cuh): one box of 64 columns a
// panel, the map's box being 64 x ROW_COUNT with the 128-byte swizzle (cupyflash/_tma.py encodes it so).
template <typename Tile>
__device__ __forceinline__ void tma_load_tile(u32 dst, const TensorMap& map, int row0, int head, int batch, u32 bar) {
    #pragma unroll
    for (int panel = 0; panel < Tile::BYTES / Tile::PANEL_BYTES; ++panel)
        tma_load_4d(dst + panel * Tile::PANEL_BYTES, map, panel * Tile::PANEL_COLS, row0, head, batch, bar);
}

// A V^T tile (wgmma.cuh TRANSPOSED_V: rows the head dim, columns keys col0..) of (head, batch): one box of
// Tile::PANEL_COLS keys x every row a panel, the map's rows being the head dim (V^T staged as (batch, head dim,
// heads, keys)).
template <typename Tile>
__device__ __forceinline__ void tma_load_tile_cols(u32 dst, const TensorMap& map, int col0, int head, int batch,
                                                   u32 bar) {
    #pragma unroll
    for (int panel = 0; panel < Tile::BYTES / Tile::PANEL_BYTES; ++panel)
        tma_load_4d(dst + panel * Tile::PANEL_BYTES, map, col0 + panel * Tile::PANEL_COLS, 0, head, batch, bar);
}

template <bool TMA> struct MapsOf { using type = NoTensorMaps; };
template <> struct MapsOf<true> { using type = TensorMaps; };

struct AllWarpsLoad {
    using Maps = NoTensorMaps;  // the forward kernel's second argument (params.cuh)
    static constexpr bool SPECIALIZED = false, OVERLAP = false, TMA = false, PERSISTENT = false;
    static constexpr int PRODUCER_WARPS = 0;
    template <int STAGES>
    __host__ __device__ static constexpr int barrier_bytes() { return 0; }
};

// PRODUCER_REGS: the producer's registers after setmaxnreg (its copies need few); the consumers take the rest of
// the register file of a block that occupies the whole SM.
//
// K and V tiles have rings of their own (OPERANDS: KEYS, VALUES), so a key tile's slot is refilled once S = Q K^T
// has read it, while the values of the same step are still in use by O += P V. OVERLAP: the consumers overlap their
// softmax with their own products (cuda_src/flash_fwd.cu).
// TMA: one producer thread issues bulk tensor copies (params.cuh's tensor maps) instead of 128 threads' cp.async.
// PERSISTENT: the block takes one query tile after another (flash_fwd.cu WorkItem); its Q tile then has a `full` and
// an `empty` barrier of its own, so that the next tile's keys come in while the consumers store the last output
// from sQ.
template <bool OVERLAP_ = true, bool TMA_ = false, bool PERSISTENT_ = false, int PRODUCER_REGS = 40>
struct ProducerWarpgroup {
    static constexpr bool SPECIALIZED = true, OVERLAP = OVERLAP_, TMA = TMA_, PERSISTENT = PERSISTENT_;
    using Maps = typename MapsOf<TMA>::type;  // the forward kernel's second argument (params.cuh)
    static constexpr int PRODUCER_WARPS = 4;
    static constexpr int KEYS = 0, VALUES = 1, OPERANDS = 2;
    template <int STAGES>
    __host__ __device__ static constexpr int barrier_bytes() {  // full, empty; Q's two
        return 2 * OPERANDS * 8 * STAGES + (PERSISTENT ? 16 : 0);
    }

    // WARPS warps start with the launch bound's share of the 64K registers (BLOCKS blocks an SM; rounded down to a
    // multiple of 8, at most 255); the producer warpgroup gives up all but PRODUCER_REGS, shared among the consumer
    // warpgroups of its block (setmaxnreg moves registers within a block).
    template <int WARPS, int BLOCKS = 1>
    __host__ __device__ static constexpr int entry_regs() {
        return (65536 / (BLOCKS * WARPS * 32) > 255 ? 255 : 65536 / (BLOCKS * WARPS * 32)) / 8 * 8;
    }
    template <int WARPS, int BLOCKS = 1>
    __host__ __device__ static constexpr int consumer_regs() {
        constexpr int share =
            ((WARPS / 4) * entry_regs<WARPS, BLOCKS>() - PRODUCER_REGS) / (WARPS / 4 - 1) / 8 * 8;
        return share > 240 ? 240 : share;
    }
    // The registers a producer that splits float32 tiles keeps (mma_tf32.cuh split_copied_tile, its passes unrolled
    // where it keeps enough: producer_unrolls): what the consumers' capped share leaves of the block's, up to theirs;
    // PRODUCER_REGS where the consumers take the rest (three warpgroups: 40). With one consumer warpgroup (float32
    // "highest" at head dim 128) 240: its two-pass splits of K and V^T kept the consumers waiting for keys.
    template <int WARPS, int BLOCKS = 1>
    __host__ __device__ static constexpr int splitting_producer_regs() {
        constexpr int left =
            (WARPS / 4) * entry_regs<WARPS, BLOCKS>() - (WARPS / 4 - 1) * consumer_regs<WARPS, BLOCKS>();
        return (left > 240 ? 240 : left < PRODUCER_REGS ? PRODUCER_REGS : left) / 8 * 8;
    }
    template <int WARPS, int BLOCKS = 1>
    __host__ __device__ static constexpr bool producer_unrolls() {
        return splitting_producer_regs<WARPS, BLOCKS>() >= 128;
    }
    static __device__ __forceinline__ void as_producer() {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(PRODUCER_REGS));
    }
    // (as_producer for a splitting producer: kept at entry_regs where that is all it gets)
    template <int WARPS, int BLOCKS = 1>
    static __device__ __forceinline__ void as_splitting_producer() {
        constexpr int REGS = splitting_producer_regs<WARPS, BLOCKS>();
        if constexpr (REGS < entry_regs<WARPS, BLOCKS>())
            asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(REGS));
    }
    template <int WARPS, int BLOCKS = 1>
    static __device__ __forceinline__ void as_consumer() {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(consumer_regs<WARPS, BLOCKS>()));
    }

    // Barrier words after the tiles: full[operand][stage], then empty[operand][stage].
    template <int STAGES>
    static __device__ __forceinline__ u32 full(u32 bars, int operand, int stage) {
        return bars + 8 * (operand * STAGES + stage);
    }
    template <int STAGES>
    static __device__ __forceinline__ u32 empty(u32 bars, int operand, int stage) {
        return bars + 8 * ((OPERANDS + operand) * STAGES + stage);
    }
    template <int STAGES>
    static __device__ __forceinline__ u32 q_full(u32 bars) { return bars + 8 * 2 * OPERANDS * STAGES; }
    template <int STAGES>
    static __device__ __forceinline__ u32 q_empty(u32 bars) { return q_full<STAGES>(bars) + 8; }

    // One thread sets the barriers up before the block splits into roles (the caller's __syncthreads follows).
    // full: one arrival per producer thread when its copies have landed (with TMA: the issuing thread's, and the
    // bytes); empty: one per consumer warp.
    template <int STAGES, int CONSUMER_WARPS>
    static __device__ __forceinline__ void init(u32 bars) {
        if (threadIdx.x == 0) {
            for (int operand = 0; operand < OPERANDS; ++operand)
                for (int s = 0; s < STAGES; ++s) {
                    mbarrier_init(full<STAGES>(bars, operand, s), TMA ? 1 : PRODUCER_WARPS * 32);
                    mbarrier_init(empty<STAGES>(bars, operand, s), CONSUMER_WARPS);
                }
            if (PERSISTENT) {
                mbarrier_init(q_full<STAGES>(bars), TMA ? 1 : PRODUCER_WARPS * 32);
                mbarrier_init(q_empty<STAGES>(bars), CONSUMER_WARPS);
            }
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
    }
    // Producer, before filling step t's slot: the consumers have released what it held STAGES steps ago.
    template <int STAGES>
    static __device__ __forceinline__ void reserve(u32 bars, int operand, int t) {
        if (t >= STAGES) mbarrier_wait(empty<STAGES>(bars, operand, t % STAGES), (t / STAGES - 1) & 1);
    }
    // Producer, after issuing step t's copies. Only copies are published: a stage filled by plain stores too (a
    // bias read one value per row, a mask's walk entries) would need a releasing arrival as well.
    template <int STAGES>
    static __device__ __forceinline__ void publish(u32 bars, int operand, int t) {
        mbarrier_arrive_after_copies(full<STAGES>(bars, operand, t % STAGES));
    }
    // Producer thread, once its own copies of step t have landed and it has written over them (f32x3's operands
    // split where they landed, mma_tf32.cuh split_copied_tile): a plain arrival, which releases its stores.
    template <int STAGES>
    static __device__ __forceinline__ void publish_stored(u32 bars, int operand, int t) {
        mbarrier_arrive(full<STAGES>(bars, operand, t % STAGES));
    }
    // TMA producer, before issuing step t's bulk copies: their byte count, announced with its arrival. Returns the
    // barrier the copies count on.
    template <int STAGES>
    static __device__ __forceinline__ u32 expect(u32 bars, int operand, int t, u32 bytes) {
        const u32 bar = full<STAGES>(bars, operand, t % STAGES);
        mbarrier_arrive_expect_bytes(bar, bytes);
        return bar;
    }
    // Consumer, before reading step t's tile. cp.async wrote it through the generic proxy and wgmma reads it
    // through the async proxy, so a proxy fence follows the wait; bulk copies write through the async proxy.
    template <int STAGES>
    static __device__ __forceinline__ void acquire(u32 bars, int operand, int t) {
        mbarrier_wait(full<STAGES>(bars, operand, t % STAGES), (t / STAGES) & 1);
        if constexpr (!TMA) async_proxy_fence();
    }
    // Consumer warp, once its products have read step t's tile.
    template <int STAGES>
    static __device__ __forceinline__ void release(u32 bars, int operand, int t, int lane) {
        __syncwarp();
        if (lane == 0) mbarrier_arrive(empty<STAGES>(bars, operand, t % STAGES));
    }
    // Persistent blocks' Q tile: copy number L (from 0, one per tile with keys) may land in sQ once every consumer
    // warp has arrived on q_empty L + 1 times (phase L), the last right before it waits for that copy
    // (free_q, then acquire_q): by then it is done with everything it did in sQ before (the last Q read, the
    // outputs of the tiles since, keyless ones included, staged and stored). One arrival per copy on both sides
    // keeps the two at most one phase apart, so that a parity names the phase (a keyless tile between two with
    // keys must not add a phase of its own: the producer, which skips keyless tiles, would then wait on a parity
    // two phases old and overwrite sQ in use).
    template <int STAGES>
    static __device__ __forceinline__ void reserve_q(u32 bars, int q_loads) {  // producer, before copy q_loads
        mbarrier_wait(q_empty<STAGES>(bars), q_loads & 1);
    }
    template <int STAGES>
    static __device__ __forceinline__ u32 expect_q(u32 bars, u32 bytes) {  // TMA
        mbarrier_arrive_expect_bytes(q_full<STAGES>(bars), bytes);
        return q_full<STAGES>(bars);
    }
    template <int STAGES>
    static __device__ __forceinline__ void publish_q(u32 bars) {  // cp.async
        mbarrier_arrive_after_copies(q_full<STAGES>(bars));
    }
    // Consumer warp, before waiting for Q copy number q_loads: its plain loads and stores in sQ come before the
    // copy (through the async proxy with bulk copies: hence the proxy fence).
    template <int STAGES>
    static __device__ __forceinline__ void free_q(u32 bars, int lane) {
        if constexpr (TMA) async_proxy_fence();
        __syncwarp();
        if (lane == 0) mbarrier_arrive(q_empty<STAGES>(bars));
    }
    template <int STAGES>
    static __device__ __forceinline__ void acquire_q(u32 bars, int q_loads) {
        mbarrier_wait(q_full<STAGES>(bars), q_loads & 1);
        if constexpr (!TMA) async_proxy_fence();
    }
    // All consumer threads (the producer has left): bar.sync with a named barrier other than __syncthreads' 0.
    template <int CONSUMER_THREADS>
    static __device__ __forceinline__ void sync_consumers() {
        asm volatile("bar.sync 1, %0;\n" :: "n"(CONSUMER_THREADS) : "memory");
    }
};

}  // namespace cf
