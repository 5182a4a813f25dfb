// How key tiles reach shared memory in the forward kernel: the Loads policy.
//
// AllWarpsLoad (every family): every warp copies tiles with cp.async and computes; one __syncthreads a key tile
// hands a stage from the copies to the products, so all warps move in step.
//
// ProducerWarpgroup (sm_90a): warpgroup 0 only copies, the other warpgroups only compute. A ring of STAGES stages,
// each guarded by two mbarriers: `full` (the stage's copies have landed) and `empty` (every consumer warp is done
// with it). Consumers wait on their own stage's barrier, not on each other, so one warpgroup's softmax can run
// while another's products use the tensor cores. The producer gives registers back (setmaxnreg) for the consumers'
// S, P and O fragments.
#pragma once
#include "mma_sm80.cuh"

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
// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n" : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}

struct AllWarpsLoad {
    static constexpr bool SPECIALIZED = false;
    static constexpr int PRODUCER_WARPS = 0;
    template <int STAGES>
    __host__ __device__ static constexpr int barrier_bytes() { return 0; }
};

// PRODUCER_REGS: the producer's registers after setmaxnreg (its copies need few); the consumers take the rest of
// the register file of a block that occupies the whole SM.
template <int PRODUCER_REGS = 56>
struct ProducerWarpgroup {
    static constexpr bool SPECIALIZED = true;
    static constexpr int PRODUCER_WARPS = 4;
    template <int STAGES>
    __host__ __device__ static constexpr int barrier_bytes() { return 16 * STAGES; }  // full and empty, 8 bytes each

    // WARPS warps start with the launch bound's share of the 64K registers (rounded down to a multiple of 8, at
    // most 255); the producer warpgroup gives up all but PRODUCER_REGS, shared among the consumer warpgroups.
    template <int WARPS>
    __host__ __device__ static constexpr int entry_regs() { return (65536 / (WARPS * 32) > 255 ? 255 : 65536 / (WARPS * 32)) / 8 * 8; }
    template <int WARPS>
    __host__ __device__ static constexpr int consumer_regs() {
        return ((WARPS / 4) * entry_regs<WARPS>() - PRODUCER_REGS) / (WARPS / 4 - 1) / 8 * 8 > 240
                   ? 240
                   : ((WARPS / 4) * entry_regs<WARPS>() - PRODUCER_REGS) / (WARPS / 4 - 1) / 8 * 8;
    }
    static __device__ __forceinline__ void as_producer() {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(PRODUCER_REGS));
    }
    template <int WARPS>
    static __device__ __forceinline__ void as_consumer() {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(consumer_regs<WARPS>()));
    }

    // Barrier words after the tiles: full[s] at bars + 8 s, empty[s] at bars + 8 (STAGES + s).
    template <int STAGES>
    static __device__ __forceinline__ u32 full(u32 bars, int stage) { return bars + 8 * stage; }
    template <int STAGES>
    static __device__ __forceinline__ u32 empty(u32 bars, int stage) { return bars + 8 * (STAGES + stage); }

    // One thread sets the barriers up before the block splits into roles (the caller's __syncthreads follows).
    // full: one arrival per producer thread, when its copies have landed; empty: one per consumer warp.
    template <int STAGES, int CONSUMER_WARPS>
    static __device__ __forceinline__ void init(u32 bars) {
        if (threadIdx.x == 0) {
            for (int s = 0; s < STAGES; ++s) {
                mbarrier_init(full<STAGES>(bars, s), PRODUCER_WARPS * 32);
                mbarrier_init(empty<STAGES>(bars, s), CONSUMER_WARPS);
            }
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
    }
    // Producer, before filling step t's stage: the consumers have released what the stage held STAGES steps ago.
    template <int STAGES>
    static __device__ __forceinline__ void reserve(u32 bars, int t) {
        if (t >= STAGES) mbarrier_wait(empty<STAGES>(bars, t % STAGES), (t / STAGES - 1) & 1);
    }
    // Producer, after issuing step t's copies. Only copies are published: a stage filled by plain stores too (a
    // bias read one value per row, a mask's walk entries) would need a releasing arrival as well.
    template <int STAGES>
    static __device__ __forceinline__ void publish(u32 bars, int t) {
        mbarrier_arrive_after_copies(full<STAGES>(bars, t % STAGES));
    }
    // Consumer, before reading step t's stage.
    template <int STAGES>
    static __device__ __forceinline__ void acquire(u32 bars, int t) {
        mbarrier_wait(full<STAGES>(bars, t % STAGES), (t / STAGES) & 1);
    }
    // Consumer warp, once its products and reads of step t's stage are complete.
    template <int STAGES>
    static __device__ __forceinline__ void release(u32 bars, int t, int lane) {
        __syncwarp();
        if (lane == 0) mbarrier_arrive(empty<STAGES>(bars, t % STAGES));
    }
    // All consumer threads (the producer has left): bar.sync with a named barrier other than __syncthreads' 0.
    template <int CONSUMER_THREADS>
    static __device__ __forceinline__ void sync_consumers() {
        asm volatile("bar.sync 1, %0;\n" :: "n"(CONSUMER_THREADS) : "memory");
    }
};

}  // namespace cf
