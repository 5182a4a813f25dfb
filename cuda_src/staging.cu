// Staging copies for head dims that are not a multiple of 8. The attention kernels move rows in 16-byte chunks, so
// such inputs are copied into a contiguous buffer whose head dim is zero-padded to the next multiple of 8, and the
// results are copied back at the caller's width. One kernel does both directions: it copies the (batch, seq, head)
// rows of src into dst, columns [0, dst_dim), zeros where src has no column (c >= src_dim). One warp per row, the
// lanes on consecutive columns; elements move as raw bits of Elem's storage (one instance per element size would do;
// the Elem parameter keeps the kernel naming uniform).
#include "mma_tf32.cuh"

namespace cf {

template <typename Elem = f16>
__global__ void __launch_bounds__(128) flash_copy_rows_kernel(const typename Mma<Elem>::Storage* src,
                                                              typename Mma<Elem>::Storage* dst, i64 rows, int seqlen,
                                                              int nheads, i64 src_batch, i64 src_seq, i64 src_head,
                                                              i64 dst_batch, i64 dst_seq, i64 dst_head, int src_dim,
                                                              int dst_dim) {
    const i64 row = static_cast<i64>(blockIdx.x) * 4 + threadIdx.x / 32;  // (batch * seqlen + seq) * nheads + head
    if (row >= rows) return;
    const int head = row % nheads;
    const i64 batch_seq = row / nheads;
    const int seq = batch_seq % seqlen;
    const i64 batch = batch_seq / seqlen;
    using S = typename Mma<Elem>::Storage;
    const S* in = src + batch * src_batch + seq * src_seq + head * src_head;
    S* out = dst + batch * dst_batch + seq * dst_seq + head * dst_head;
    for (int c = threadIdx.x % 32; c < dst_dim; c += 32) out[c] = c < src_dim ? in[c] : S(0);
}

}  // namespace cf
