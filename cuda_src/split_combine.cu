// Split-KV's second kernel: merges the num_splits partial outputs and lse of each (batch, head, query row) written
// by the forward kernel's KeySplits policy (split_kv.cuh) into out and lse. One warp per row; dense rows.
#include "mma_sm80.cuh"
#include "mma_tf32.cuh"
#include "params.cuh"

namespace cf {

template <typename Elem>
__global__ void __launch_bounds__(128) flash_split_combine_kernel(const AttnParams p) {
    using S = typename Mma<Elem>::Storage;
    const i64 rows = static_cast<i64>(p.batch) * p.nheads * p.seqlen_q;
    const i64 r = static_cast<i64>(blockIdx.x) * 4 + threadIdx.x / 32;  // (batch * nheads + head) * seqlen_q + row
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const int row = static_cast<int>(r % p.seqlen_q);
    const int head = static_cast<int>(r / p.seqlen_q % p.nheads);
    const int batch = static_cast<int>(r / p.seqlen_q / p.nheads);
    const i64 split_stride = rows;  // partial rows of one split

    // lse = m + log(sum_s exp(lse_s - m)) with m the largest lse_s; -inf when no split saw a key.
    float m = neg_inf();
    for (int s = lane; s < p.num_splits; s += 32) m = fmaxf(m, p.lse_partial[s * split_stride + r]);
    #pragma unroll
    for (int o = 16; o; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float sum = 0.f;
    if (m != neg_inf())
        for (int s = lane; s < p.num_splits; s += 32) sum += __expf(p.lse_partial[s * split_stride + r] - m);
    #pragma unroll
    for (int o = 16; o; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float lse = m == neg_inf() ? neg_inf() : m + __logf(sum);

    // O = sum_s exp(lse_s - lse) O_s, two columns per lane per pass
    S* out = elems<Elem>(p.out) + batch * p.o_str.batch + row * p.o_str.seq + head * p.o_str.head;
    for (int col = 2 * lane; col < p.head_dim; col += 64) {
        float x = 0.f, y = 0.f;
        if (m != neg_inf())
            for (int s = 0; s < p.num_splits; ++s) {
                const float w = __expf(p.lse_partial[s * split_stride + r] - lse);
                const float2 o = *reinterpret_cast<const float2*>(p.o_partial + (s * split_stride + r) * p.head_dim
                                                                  + col);
                x += w * o.x;
                y += w * o.y;
            }
        Mma<Elem>::store_pair(out + col, x, y);
    }
    if (lane == 0) p.lse[r] = lse;
}

}  // namespace cf

#ifndef CUPYFLASH_RUNTIME
template __global__ void cf::flash_split_combine_kernel<cf::f16>(const cf::AttnParams);
#endif
