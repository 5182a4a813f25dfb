// Staging copies for head dims that are not a multiple of 8. The attention kernels move rows in 16-byte chunks, so
// such inputs are copied into a contiguous buffer whose head dim is zero-padded to the next multiple of 8, and the
// results are copied back at the caller's width. One kernel does both directions: it copies the (batch, seq, head)
// rows of src into dst, columns [0, dst_dim), zeros where src has no column (c >= src_dim). One warp per row, the
// lanes on consecutive columns; elements move as raw bits of Elem's storage (one instance per element size would do;
// the Elem parameter keeps the kernel naming uniform).
#include "mma_tf32.cuh"

namespace cf {

// This warp's (batch, seq, head) row of src into dst, columns [0, dst_dim): value(x) where src has the column, 0
// past src_dim. One warp a row, the lanes on consecutive columns.
template <typename T, typename Value>
__device__ __forceinline__ void copy_warp_row(const T* src, T* dst, i64 rows, int seqlen, int nheads, i64 src_batch,
                                              i64 src_seq, i64 src_head, i64 dst_batch, i64 dst_seq, i64 dst_head,
                                              int src_dim, int dst_dim, Value value) {
    const i64 row = static_cast<i64>(blockIdx.x) * 4 + threadIdx.x / 32;  // (batch * seqlen + seq) * nheads + head
    if (row >= rows) return;
    const int head = row % nheads;
    const i64 batch_seq = row / nheads;
    const int seq = batch_seq % seqlen;
    const i64 batch = batch_seq / seqlen;
    const T* in = src + batch * src_batch + seq * src_seq + head * src_head;
    T* out = dst + batch * dst_batch + seq * dst_seq + head * dst_head;
    for (int c = threadIdx.x % 32; c < dst_dim; c += 32) out[c] = c < src_dim ? value(in[c]) : T(0);
}

template <typename Elem = f16>
__global__ void __launch_bounds__(128) flash_copy_rows_kernel(const typename Mma<Elem>::Storage* src,
                                                              typename Mma<Elem>::Storage* dst, i64 rows, int seqlen,
                                                              int nheads, i64 src_batch, i64 src_seq, i64 src_head,
                                                              i64 dst_batch, i64 dst_seq, i64 dst_head, int src_dim,
                                                              int dst_dim) {
    using S = typename Mma<Elem>::Storage;
    copy_warp_row(src, dst, rows, seqlen, nheads, src_batch, src_seq, src_head, dst_batch, dst_seq, dst_head, src_dim,
                  dst_dim, [](S x) { return x; });
}

// float32 operands at precision "tf32" (mma_tf32.cuh Mma<tf32>), staged before the kernels: the tensor cores read a
// float's top bits as they are, so each value is rounded to TF32 here, once, to nearest with ties to even as a
// bulk copy through a TFLOAT32 map rounds (docs/measurements/2026-11-30-tma-tf32-rounding-probe.py), so that an
// operand gets the same bits whichever way it comes (Q, K, V, dO of the mma_tf32 kernels; Q and K of the wgmma
// forward where they are copied anyway, its TFLOAT32 maps round them otherwise). V of the wgmma forward
// (wgmma.cuh TRANSPOSED_V): transposed into V^T, (batch, head, dim, key) with keys_padded keys a row (a multiple of
// 32, zeros past seqlen; rounded at "tf32", as they are at "highest", whose kernel splits them), the keys of each
// group of 8 in the order P's registers hold them (0 2 4 6 1 3 5 7;
// warp_gemm.cuh accum_to_a_frags). A block moves a tile of 32 keys x 32 columns of one (batch, head) through shared
// memory, read along the head dim and written along the keys.
template <typename Elem = tf32>
__global__ void __launch_bounds__(128) flash_round_tf32_kernel(const float* src, float* dst, i64 rows, int seqlen,
                                                               int nheads, i64 src_batch, i64 src_seq,
                                                               i64 src_head, i64 dst_batch, i64 dst_seq,
                                                               i64 dst_head, int src_dim, int dst_dim) {
    copy_warp_row(src, dst, rows, seqlen, nheads, src_batch, src_seq, src_head, dst_batch, dst_seq, dst_head, src_dim,
                  dst_dim, [](float x) { return __uint_as_float(to_tf32_even(x)); });
}

// grid: (keys_padded / 32, ceil(dst_dim / 32), batch * nheads); keys_padded a multiple of 32; V^T contiguous,
// (batch, nheads, dst_dim, keys_padded).
template <typename Elem = tf32>
__global__ void __launch_bounds__(128) flash_transpose_values_kernel(const float* src, float* dst, int seqlen,
                                                                     int nheads, i64 src_batch, i64 src_seq,
                                                                     i64 src_head, int src_dim, int dst_dim,
                                                                     int keys_padded) {
    __shared__ float tile[32][33];  // [key][column], a column of padding against bank conflicts
    const int key0 = blockIdx.x * 32, col0 = blockIdx.y * 32;
    const int head = blockIdx.z % nheads, batch = blockIdx.z / nheads;
    const float* in = src + batch * src_batch + head * src_head;
    for (int i = threadIdx.x; i < 32 * 32; i += 128) {  // along the head dim
        const int key = key0 + i / 32, col = col0 + i % 32;
        const bool inside = key < seqlen && col < src_dim;
        const float x = inside ? in[key * src_seq + col] : 0.f;
        // (f32x3: as it is, split in the kernel)
        tile[i / 32][i % 32] = !ROUNDS_OPERANDS<Elem> ? x : inside ? __uint_as_float(to_tf32_even(x)) : 0.f;
    }
    __syncthreads();
    float* out = dst + ((static_cast<i64>(batch) * nheads + head) * dst_dim + col0) * keys_padded + key0;
    for (int i = threadIdx.x; i < 32 * 32; i += 128) {  // along the keys: position p holds key 8 (p / 8) + order
        const int col = i / 32, p = i % 32, q = p % 8;
        if (col0 + col < dst_dim)
            out[static_cast<i64>(col) * keys_padded + p] = tile[p - q + (q < 4 ? 2 * q : 2 * (q - 4) + 1)][col];
    }
}

}  // namespace cf
