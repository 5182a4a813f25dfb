// dbias from the dK/dV kernel's fp32 partial (bias.cuh BiasGrad): the (batch, nheads, rows, cols) partial summed over
// the dims the bias broadcasts, into the bias's own shape. Each dbias element walks the partial entries it sums in a
// fixed order, so the result is deterministic. Blocks are few and long-lived (a grid-stride loop over dbias rows)
// and move 16 bytes per load where rows allow: with a block per 256 elements, block launches bounded this kernel
// (H200, 8.6 GB partial: 26 ms, and 22 ms for cupy.sum, where the memory allows about 3). The Elem parameter only
// keeps the kernel naming uniform.
#include "mma_tf32.cuh"

namespace cf {

__device__ __forceinline__ void add4(float4& a, const float4& b) {
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
}

template <typename Elem = f16>
__global__ void __launch_bounds__(256) flash_dbias_sum_kernel(const float* partial, float* dbias, int batch,
                                                              int heads, int rows, int cols, int summed) {
    // summed: bit 0 batch, bit 1 heads, bit 2 rows, bit 3 columns; dbias keeps the others at their size, these at 1
    const int kept_rows = summed & 4 ? 1 : rows, kept_heads = summed & 2 ? 1 : heads;
    const int out_rows = (summed & 1 ? 1 : batch) * kept_heads * kept_rows;
    const int n_batch = summed & 1 ? batch : 1, n_heads = summed & 2 ? heads : 1, n_rows = summed & 4 ? rows : 1;
    const i64 head_stride = static_cast<i64>(rows) * cols, batch_stride = heads * head_stride;
    auto first = [&](int row) {  // the first partial row dbias row `row` sums
        const int r = row % kept_rows, h = row / kept_rows % kept_heads, b = row / kept_rows / kept_heads;
        return partial + b * batch_stride + h * head_stride + static_cast<i64>(r) * cols;
    };
    auto offset = [&](int b, int h, int r) { return b * batch_stride + h * head_stride + static_cast<i64>(r) * cols; };
    if (summed & 8) {  // columns summed too: a thread per dbias row, over its runs of columns
        for (int row = blockIdx.x * 256 + threadIdx.x; row < out_rows; row += gridDim.x * 256) {
            const float* base = first(row);
            float sum = 0.f;
            for (int b = 0; b < n_batch; ++b)
                for (int h = 0; h < n_heads; ++h)
                    for (int r = 0; r < n_rows; ++r)
                        for (int c = 0; c < cols; ++c) sum += base[offset(b, h, r) + c];
            dbias[row] = sum;
        }
        return;
    }
    for (int row = blockIdx.x; row < out_rows; row += gridDim.x) {  // a block per dbias row, threads on columns
        const float* base = first(row);
        float* out = dbias + static_cast<i64>(row) * cols;
        if (cols % 4 == 0) {  // rows of whole float4s (the partial and dbias are fresh allocations: aligned)
            // two float4s per thread and pass, so that more loads are in flight
            for (int c = 4 * threadIdx.x; c < cols; c += 8 * 256) {
                const bool second = c + 4 * 256 < cols;
                float4 sum = make_float4(0.f, 0.f, 0.f, 0.f), sum2 = sum;
                for (int b = 0; b < n_batch; ++b)
                    for (int h = 0; h < n_heads; ++h)
                        for (int r = 0; r < n_rows; ++r) {
                            const float* at = base + offset(b, h, r) + c;
                            add4(sum, *reinterpret_cast<const float4*>(at));
                            if (second) add4(sum2, *reinterpret_cast<const float4*>(at + 4 * 256));
                        }
                *reinterpret_cast<float4*>(out + c) = sum;
                if (second) *reinterpret_cast<float4*>(out + c + 4 * 256) = sum2;
            }
        } else {
            for (int c = threadIdx.x; c < cols; c += 256) {
                float sum = 0.f;
                for (int b = 0; b < n_batch; ++b)
                    for (int h = 0; h < n_heads; ++h)
                        for (int r = 0; r < n_rows; ++r) sum += base[offset(b, h, r) + c];
                out[c] = sum;
            }
        }
    }
}

}  // namespace cf
