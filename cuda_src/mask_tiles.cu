// A boolean mask's tile summary (layout in mask_tiles.cuh): one block per tile of block_rows x block_cols pairs of
// one (batch, head) of the mask's own data (grid: column tiles x heads, row tiles, batch), reduced with
// __syncthreads_or / _and. Rows and columns are queries and
// keys, or keys and queries (the caller swaps the strides and counts); byte strides, 0 where the mask broadcasts.
// The output words must be zero on entry: blocks set their bits with atomicOr. A mask broadcast along the
// columns (cols == 1) has one column tile of data, which stands for all col_tiles tiles of the summary row. The
// Elem parameter only keeps the kernel naming uniform.
#include "mma_tf32.cuh"

namespace cf {

template <typename Elem = f16>
__global__ void __launch_bounds__(256) flash_mask_tiles_kernel(const unsigned char* mask, u32* words,
                                                               i64 batch_stride, i64 head_stride, i64 row_stride,
                                                               i64 col_stride, int rows, int cols,
                                                               int block_rows, int block_cols, int col_tiles,
                                                               int words_per_row) {
    const int own_col_tiles = (cols + block_cols - 1) / block_cols;
    const int col_tile = blockIdx.x % own_col_tiles, head = blockIdx.x / own_col_tiles;
    const int row_tile = blockIdx.y, batch = blockIdx.z;
    const int r0 = row_tile * block_rows, c0 = col_tile * block_cols;
    const int n_rows = min(block_rows, rows - r0), n_cols = min(block_cols, cols - c0);
    const unsigned char* tile = mask + batch * batch_stride + head * head_stride + r0 * row_stride + c0 * col_stride;

    int any = 0, all = 1;
    const bool chunks = col_stride == 1 && n_cols % 16 == 0 && row_stride % 16 == 0 &&
                        reinterpret_cast<unsigned long long>(tile) % 16 == 0;
    if (chunks) {  // 16 bytes at a time; bools are 0 or 1, so a chunk is all True iff its words are 0x01010101
        const int per_row = n_cols / 16;
        for (int i = threadIdx.x; i < n_rows * per_row; i += blockDim.x) {
            const uint4 c = *reinterpret_cast<const uint4*>(tile + (i / per_row) * row_stride + i % per_row * 16);
            any |= (c.x | c.y | c.z | c.w) != 0;
            all &= (c.x & c.y & c.z & c.w) == 0x01010101u;
        }
    } else {
        for (int i = threadIdx.x; i < n_rows * n_cols; i += blockDim.x) {
            const bool v = tile[(i / n_cols) * row_stride + (i % n_cols) * col_stride] != 0;
            any |= v;
            all &= v;
        }
    }
    any = __syncthreads_or(any);
    all = __syncthreads_and(all);

    const int heads = gridDim.x / own_col_tiles;
    u32* row = words + 2 * ((static_cast<i64>(batch) * heads + head) * gridDim.y + row_tile) * words_per_row;
    if (own_col_tiles == 1) {  // this tile is every column tile of the row (broadcast columns, or just one tile)
        for (int w = threadIdx.x; w < words_per_row; w += blockDim.x) {
            const int left = col_tiles - 32 * w;
            const u32 bits = left >= 32 ? 0xffffffffu : (1u << left) - 1;
            row[2 * w] = any ? bits : 0u;
            row[2 * w + 1] = all ? bits : 0u;
        }
    } else if (threadIdx.x == 0) {
        const u32 bit = 1u << col_tile % 32;
        if (any) atomicOr(row + 2 * (col_tile / 32), bit);
        if (all) atomicOr(row + 2 * (col_tile / 32) + 1, bit);
    }
}

}  // namespace cf

#ifndef CUPYFLASH_RUNTIME  // a standalone build (nvcc -Xptxas -v) gets the default instance to report on
template __global__ void cf::flash_mask_tiles_kernel<>(const unsigned char*, cf::u32*, cf::i64, cf::i64, cf::i64,
                                                       cf::i64, int, int, int, int, int, int);
#endif
