// Coordinates: the one place that turns (batch, head, row) into element offsets. Query heads map to their K/V head
// here (grouped-query attention: heads_per_kv consecutive query heads share one K/V head).
#pragma once
#include "params.cuh"

namespace cf {

// Row `row` of (batch, head) in a (batch, seqlen, heads, head_dim) tensor with element strides s.
__device__ __forceinline__ i64 row_offset(const Strides& s, int batch, int head, int row) {
    return batch * s.batch + head * s.head + static_cast<i64>(row) * s.seq;
}

// n / d by multiplication, for divisors fixed per launch or per block: one 64 x 64 -> high-64 multiply and a
// select, where a division by a run-time int costs dozens of instructions (measured: a per-tile division slowed
// the forward by ~6%). magic = floor((2^64 - 1) / d) + 1; exact for 0 <= n, d < 2^31 (the error of magic is
// below 1, so n * error / 2^64 < 1 / d); d = 1 is the one divisor whose magic overflows.
__host__ __device__ __forceinline__ unsigned long long division_magic(int d) { return ~0ull / d + 1; }

__device__ __forceinline__ int divide(int n, int d, unsigned long long magic) {
    return d == 1 ? n : static_cast<int>(__umul64hi(static_cast<unsigned long long>(n), magic));
}

__device__ __forceinline__ int kv_head_of(const AttnParams& p, int head) {
    return divide(head, p.heads_per_kv, p.heads_per_kv_magic);
}

// One batch entry's rows. Dense batches: every entry has seqlen_q x seqlen_k rows at its batch offset. Packed
// variable-length batches (flash-attn's varlen layout): entry b owns rows cu_seqlens[b] .. cu_seqlens[b + 1] of
// (total, heads, head_dim) tensors, passed with batch stride 0, and lse is (nheads, total_q).
struct Seq {
    int q0, k0;  // the entry's first row in q (out, lse) and in k, v
    int seqlen_q, seqlen_k;
    bool packed;  // set by the layout's of(): a compile-time constant once inlined

    // seqlen_k - seqlen_q: the key index minus the query index along the aligned diagonal (mask.cuh). Dense
    // entries read it from the kernel parameter space at each use, as before packed rows existed: held in a
    // register instead, the causal dK/dV kernel at head dim 128 ran 4.5% slower (H100 and H200, seqlen 8192; the
    // forward at head dim 64 gained 2.5%, a trade not taken).
    __device__ __forceinline__ int diagonal_offset(const AttnParams& p) const {
        return packed ? seqlen_k - seqlen_q : p.seqlen_k - p.seqlen_q;
    }
};

// Per layout, where query `row` (counted from the entry's first row) of (batch, head) sits in lse, contiguous
// (batch, nheads, seqlen_q) or (nheads, total_q), and in the backward's fp32 dQ accumulator, contiguous
// (batch, seqlen_q, nheads, head_dim) or (total_q, nheads, head_dim).
struct DenseRows {
    static constexpr bool PACKED = false;  // the grid fits every entry exactly: no block past an entry's end
    static __device__ __forceinline__ Seq of(const AttnParams& p, int) { return {0, 0, p.seqlen_q, p.seqlen_k, false}; }
    static __device__ __forceinline__ i64 lse_offset(const AttnParams& p, const Seq&, int batch, int head,
                                                     int row) {
        return (static_cast<i64>(batch) * p.nheads + head) * p.seqlen_q + row;
    }
    static __device__ __forceinline__ i64 dq_accum_offset(const AttnParams& p, const Seq&, int batch, int head,
                                                          int row) {
        return ((static_cast<i64>(batch) * p.seqlen_q + row) * p.nheads + head) * p.head_dim;
    }
};

// The offsets are read as they are when the kernel runs. The host checks an offsets array on its first use
// (cupyflash/_offsets.py), without waiting for the GPU on later calls; an array rewritten since then may hold
// anything. So every block clamps its entry into the packed tensors and below the max_seqlens (bad offsets never
// reach past them) and, where that changed anything, sets p.status, which the next call raises.
struct PackedRows {
    static constexpr bool PACKED = true;
    static __device__ __forceinline__ Seq of(const AttnParams& p, int batch) {
        const int q0 = p.cu_seqlens_q[batch], q1 = p.cu_seqlens_q[batch + 1];
        const int k0 = p.cu_seqlens_k[batch], k1 = p.cu_seqlens_k[batch + 1];
        const int row_q = min(max(q0, 0), p.total_q), row_k = min(max(k0, 0), p.total_k);
        const int len_q = min(min(max(q1, row_q), p.total_q) - row_q, p.seqlen_q);
        const int len_k = min(min(max(k1, row_k), p.total_k) - row_k, p.seqlen_k);
        const bool first_starts = batch > 0 || (q0 == 0 && k0 == 0);
        const bool last_ends = batch + 1 < p.batch || (q1 == p.total_q && k1 == p.total_k);
        if (row_q != q0 || row_k != k0 || len_q != q1 - q0 || len_k != k1 - k0 || !first_starts || !last_ends)
            *p.status = 1;  // host memory, read by the next call (a plain store: any block's 1 will do)
        return {row_q, row_k, len_q, len_k, true};
    }
    static __device__ __forceinline__ i64 lse_offset(const AttnParams& p, const Seq& seq, int, int head, int row) {
        return static_cast<i64>(head) * p.total_q + seq.q0 + row;
    }
    static __device__ __forceinline__ i64 dq_accum_offset(const AttnParams& p, const Seq& seq, int, int head,
                                                          int row) {
        return (static_cast<i64>(seq.q0 + row) * p.nheads + head) * p.head_dim;
    }
};

// lse2 and delta: one row of row_pitch floats per (batch, head) (a multiple of 4, for 16-byte copies).
__device__ __forceinline__ i64 row_values_offset(const AttnParams& p, int batch, int head) {
    return (static_cast<i64>(batch) * p.nheads + head) * p.row_pitch;
}

// What a forward or dQ block works on, from its grid position: query tile, head and batch are blockIdx x, y, z; with
// BATCH_FIRST (the kernels that add a bias, bias.cuh ADDS; Python's _launch.query_grid lays the grid out to match)
// x, y, z are batch, query tile, head, so that consecutive blocks are the batches of one query tile: a bias shared
// by the batches is read from L2 by all of them at once. A compile-time choice: each coordinate stays one read of
// a special register, which the compiler may repeat rather than hold (a run-time choice held them in registers and
// spilled three large bias kernels).
template <bool BATCH_FIRST>
struct QueryBlock {
    static __device__ __forceinline__ int tile() { return BATCH_FIRST ? blockIdx.y : blockIdx.x; }
    static __device__ __forceinline__ int tiles() { return BATCH_FIRST ? gridDim.y : gridDim.x; }
    static __device__ __forceinline__ int head() { return BATCH_FIRST ? blockIdx.z : blockIdx.y; }
    static __device__ __forceinline__ int batch() { return BATCH_FIRST ? blockIdx.x : blockIdx.z; }
};

// What a dK/dV block works on, from its grid position: key tile, slot (kv_head * kv_splits + split) and batch are
// blockIdx x, y, z; with BATCH_FIRST (the kernels that write dbias) x, y, z are batch, key tile, slot, so that
// consecutive blocks are the batches of one key tile: a bias shared by the batches is read from L2 by all of them
// at once, and the atomics that sum its gradient over them meet in L2 rather than in device memory.
template <bool BATCH_FIRST>
struct KeyBlock {
    static __device__ __forceinline__ unsigned tile() { return BATCH_FIRST ? blockIdx.y : blockIdx.x; }
    static __device__ __forceinline__ unsigned slot() { return BATCH_FIRST ? blockIdx.z : blockIdx.y; }
    static __device__ __forceinline__ unsigned batch() { return BATCH_FIRST ? blockIdx.x : blockIdx.z; }
};

// The dK/dV kernel's fp32 partials (kv_splits > 1): a contiguous (batch, seqlen_k, nheads_k * kv_splits, head_dim)
// array for dK, indexed by the block's slot = kv_head * kv_splits + split (KeyBlock::slot), so one (batch, key,
// K/V head) row's partials lie side by side; dV's array follows dK's.
__device__ __forceinline__ i64 dkv_partial_size(const AttnParams& p) {
    return static_cast<i64>(p.batch) * p.seqlen_k * p.nheads_k * p.kv_splits * p.head_dim;
}

__device__ __forceinline__ i64 dkv_partial_offset(const AttnParams& p, int batch, int slot, int key) {
    return ((static_cast<i64>(batch) * p.seqlen_k + key) * p.nheads_k * p.kv_splits + slot) * p.head_dim;
}

}  // namespace cf
