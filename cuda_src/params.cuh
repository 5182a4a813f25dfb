// The one argument of every cupyflash kernel, passed by value. Its Python mirror is cupyflash/_params.py
// (FIELDS, in this order); a CPU test compiles offsetof/sizeof checks of every field, so the two cannot drift.
#pragma once
#include "mma_sm80.cuh"

namespace cf {

struct Strides {  // in elements; the head dim is contiguous
    i64 batch, seq, head;
};

struct AttnParams {
    // Device pointers first, then the dropout state: Python refreshes all of them per call with one write.
    // q, k, v, out, dout, dq, dk, dv hold the kernel's element type (mma_sm80.cuh elems<Elem> reads them).
    const void* q;
    const void* k;
    const void* v;
    void* out;
    float* lse;                 // (batch, nheads, seqlen_q), natural log
    const void* dout;
    float* lse2;                // backward: lse in log2 units, rows of row_pitch floats per (batch, head)
    float* delta;               // backward: rowsum(dO o O), same rows
    float* dq_accum;            // backward: fp32 (batch, seqlen_q, nheads, head_dim) for atomic dQ, or null
    void* dq;
    void* dk;
    void* dv;
    const float* alibi_slopes;  // ScoreMod<_, true>: slope of (batch, head) at batch * alibi_batch_stride + head
    float* dkv_partial;         // backward, kv_splits > 1: fp32 partial dK, then dV (coords.cuh dkv_partial_offset)
    const int* cu_seqlens_q;    // PackedRows (varlen): batch + 1 row offsets into q, out and lse
    const int* cu_seqlens_k;    //   ... and into k, v
    const void* bias;           // TileBias<T>: T (batch, nheads, seqlen_q, seqlen_k) broadcast by bias_str (bias.cuh)
    float* dbias;               // TileBias<T, true>: the dK/dV kernel's fp32 partial dbias (bias.cuh BiasGrad)
    const uint2* mask_tiles_q;  // SummarizedTiles: a boolean mask's tile summary by query tiles (mask_tiles.cuh)
    const uint2* mask_tiles_k;  //   ... and by key tiles (dK/dV kernel)
    const void* mask;           // TileBias<mask8>, MaskedBias: bool (batch, nheads, seqlen_q, seqlen_k) by mask_str
    float* o_partial;           // KeySplits: fp32 (num_splits, batch, nheads, seqlen_q, head_dim) outputs per split
    float* lse_partial;         //   ... and their (num_splits, batch, nheads, seqlen_q) lse (split_kv.cuh)
    // Per call too, written with the pointers: Dropout's state (dropout.cuh; offset < 2^32).
    unsigned long long dropout_seed, dropout_offset;

    Strides q_str, k_str, v_str, o_str, do_str, dq_str, dk_str, dv_str;
    Strides bias_str;           // bias: batch, query row (seq) and head strides, 0 where broadcast
    Strides dbias_str;          // dbias partial: batch, row and head strides
    Strides mask_tiles_q_str, mask_tiles_k_str;  // tile summaries: batch, row tile and head strides in words
    Strides mask_str;           // mask: as bias_str
    i64 alibi_batch_stride;     // 0 when one slope vector serves every batch
    unsigned long long heads_per_kv_magic;  // coords.cuh division_magic(heads_per_kv), computed by Python
    int* status;                // PackedRows: set to 1 by a block whose offsets needed clamping (host memory)

    int batch, nheads, nheads_k, heads_per_kv, seqlen_q, seqlen_k, head_dim;
    int row_pitch;
    int total_q;                // PackedRows: rows of q (lse is (nheads, total_q))
    // dK/dV kernel: the query heads sharing a K/V head are spread over kv_splits blocks, heads_per_split each.
    int kv_splits, heads_per_split;
    // BandMask: key j is visible to query i iff -window_left <= j - i - (seqlen_k - seqlen_q) <= window_right.
    // Python stores seqlen_k for an unbounded left side and seqlen_q for an unbounded right side, which cover
    // every pair, so the kernels need no "unbounded" case and no arithmetic can overflow.
    int window_left, window_right;
    int bias_key_step;          // 1: keys contiguous; 0: one value per query row (broadcast over keys)
    int dbias_sums;             // BiasGrad: bit 0 sums over queries, bit 1 over keys; 4 adds with atomics
    int num_splits;             // KeySplits: the key tiles of each query tile are spread over this many blocks

    float scale_log2;           // logit (raw units, see score_mod.cuh) -> exp2 argument
    float softmax_scale;        // d(scaled score) / d(q.k): applied to dQ and dK
    float softcap;              // ScoreMod<true, _>: logit = softcap * tanh(q.k * softcap_scale)
    float softcap_scale;        // softmax_scale / softcap
    float alibi_unit;           // ALiBi slopes are in scaled-score units; this converts them to raw logit units
    float bias_unit;            // the same for the bias: 1 / softmax_scale
    int mask_key_step;          // the mask's bias_key_step
    unsigned dropout_threshold;  // Dropout: a pair is kept iff its Philox word is below this
    float dropout_scale;        // Dropout: 2^32 / dropout_threshold, what kept probabilities are multiplied by
    int total_k;                // PackedRows: rows of k and v (last: the fields before keep their offsets)
};

// A tensor map for bulk tensor copies (TMA): cuTensorMapEncodeTiled's opaque 128 bytes, 64-byte aligned. Kernels
// read it in place, through the address of their __grid_constant__ parameter.
struct alignas(64) TensorMap {
    unsigned long long bits[16];
};

// The forward kernel's second argument, which its Loads policy chooses (pipeline.cuh): the tensor maps of q, k and
// v for bulk copies, as (head dim, rows, heads, batch) tensors in boxes of 64 columns x one tile's rows
// (cupyflash/_tma.py), or nothing. A struct of its own: 64-byte alignment in AttnParams changed the register
// allocation of other kernels (two dQ kernels spilled).
struct TensorMaps {
    TensorMap q, k, v;
    TensorMap bias;  // an additive 16-bit bias's (bulk_bias.cuh), keys innermost; unused without one
};
struct NoTensorMaps {};

}  // namespace cf
