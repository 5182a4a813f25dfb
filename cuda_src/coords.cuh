// Coordinates: the one place that turns (batch, head, row) into element offsets. Query heads map to their K/V head
// here (grouped-query attention: heads_per_kv consecutive query heads share one K/V head).
#pragma once
#include "params.cuh"

namespace cf {

// Row `row` of (batch, head) in a (batch, seqlen, heads, head_dim) tensor with element strides s.
__device__ __forceinline__ i64 row_offset(const Strides& s, int batch, int head, int row) {
    return batch * s.batch + head * s.head + static_cast<i64>(row) * s.seq;
}

__device__ __forceinline__ int kv_head_of(const AttnParams& p, int head) { return head / p.heads_per_kv; }

// lse: a contiguous (batch, nheads, seqlen_q) array.
__device__ __forceinline__ i64 lse_offset(const AttnParams& p, int batch, int head, int row) {
    return (static_cast<i64>(batch) * p.nheads + head) * p.seqlen_q + row;
}

// lse2 and delta: one row of row_pitch floats per (batch, head) (a multiple of 4, for 16-byte copies).
__device__ __forceinline__ i64 row_values_offset(const AttnParams& p, int batch, int head) {
    return (static_cast<i64>(batch) * p.nheads + head) * p.row_pitch;
}

// The fp32 dQ accumulator: a contiguous (batch, seqlen_q, nheads, head_dim) array.
__device__ __forceinline__ i64 dq_accum_offset(const AttnParams& p, int batch, int head, int row) {
    return ((static_cast<i64>(batch) * p.seqlen_q + row) * p.nheads + head) * p.head_dim;
}

}  // namespace cf
