// An additive 16-bit bias, or a boolean mask read in its tiles, on the forward's bulk-copy producer tiles (sm_90a):
// the producer's one thread copies each step's BLOCK_M x BLOCK_N tile of it with the key tile, by a tensor map of
// the array (params.cuh TensorMaps::bias, cupyflash/_tma.py), counted on the key tile's barrier; the consumers apply
// it to S before they release that slot. A mask's tile summary (mask_tiles.cuh) is walked by the same thread: a
// step's walk entry sits in its stage's header, and only the tiles the mask cuts are copied and read.
//
// A tile lands as the K tiles do: panels of 128-byte rows (64 bias values, 128 mask bytes) XOR-swizzled in 16-byte
// chunks by row (wgmma.cuh SwizzledTile), read without bank conflicts. Broadcast dims are extent 1 in the map and
// read at coordinate 0; one broadcast over queries is copied as its one row, which every query reads. One broadcast
// over keys (a value a query row, constant along the keys) has nothing to copy: each consumer warp writes its rows'
// values into every stage once, before its first tile, and reads them from there.
#pragma once
#include "bias.cuh"
#include "pipeline.cuh"

namespace cf {

template <typename T>  // f16 or bf16 (the Elem tags): an additive bias; mask8: a boolean mask
struct SwizzledBias {
    using Value = BiasValue<T>;
    using Fields = typename TilesOf<T>::Fields;
    using Tiles = typename TilesOf<T>::type;
    static constexpr bool MASK = Tiles::SKIPS;  // a mask: its summary decides which tiles are visited and read
    static constexpr bool ON = true, GRAD = false, ADDS = !MASK, CUTS = MASK, BULK = true;
    template <int KEY_TILES, int QUERY_TILES>
    using Grad = NoBiasGrad;
    static constexpr int BYTES = Value::BYTES, PANEL_COLS = 128 / BYTES;
    static constexpr int HEADER = MASK ? 1024 : 0;  // the walk entries; the tile after them stays 1024-aligned
    template <int ROWS, int COLS>
    __host__ __device__ static constexpr int tile_bytes() {
        static_assert(COLS % PANEL_COLS == 0 && ROWS % 8 == 0, "whole 128-byte panels of 8-row groups");
        return HEADER + ROWS * COLS * BYTES;
    }
    // Byte `byte` of tile row `row` (SwizzledTile's layout, for any element size).
    template <int ROWS>
    static __device__ __forceinline__ u32 byte_offset(int row, int byte) {
        return static_cast<u32>(HEADER + byte / 128 * ROWS * 128 + row * 128 + ((byte % 128 / 16) ^ (row % 8)) * 16 +
                                byte % 16);
    }

    // Walk entries of a mask (as BlockMask's): ROW 0 the stage's, ROW 1 the next load's (unused here).
    template <int COLS, int ROW>
    static __device__ __forceinline__ void stash(u32 tile, int entry) {
        if (threadIdx.x == 0) asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(tile + ROW * 4), "r"(entry));
    }
    template <int COLS, int ROW>
    static __device__ __forceinline__ int stashed(u32 tile) { return static_cast<int>(lds_u32(tile + ROW * 4)); }

    // Producer: the bytes step t's copy brings (the key tile's barrier expects them beside the key tile's), and the
    // copy itself (keys [k0, k0 + COLS) of queries [q0, q0 + ROWS), zeros past the array's extents); nothing for a
    // mask's tile it does not cut (entry: the step's walk entry).
    template <int ROWS, int COLS>
    static __device__ __forceinline__ u32 copy_bytes(const AttnParams& p, int entry) {
        if ((MASK && !(entry & 1)) || Fields::key_step(p) == 0) return 0u;
        return static_cast<u32>((Fields::strides(p).seq != 0 ? ROWS : 1) * COLS * BYTES);
    }
    template <int ROWS, int COLS>
    static __device__ __forceinline__ void copy(u32 dst, const TensorMap& map, const AttnParams& p, int batch,
                                                int head, int q0, int k0, u32 bar, int entry) {
        if ((MASK && !(entry & 1)) || Fields::key_step(p) == 0) return;
        const Strides& str = Fields::strides(p);
        #pragma unroll
        for (int panel = 0; panel < COLS / PANEL_COLS; ++panel)
            tma_load_4d(dst + HEADER + panel * ROWS * 128, map, k0 + panel * PANEL_COLS, str.seq != 0 ? q0 : 0,
                        str.head != 0 ? head : 0, str.batch != 0 ? batch : 0, bar);
    }

    // Consumer warp, before its first tile: an array broadcast over keys has its rows' values (queries q0 + row0 +
    // [0, 16 ROW_TILES): a bias's, or a mask's as 0 / -inf; 0 past seqlen_q) written as floats after the header of
    // every stage (`tiles`, stage s at tiles + s * stage_bytes).
    template <int ROW_TILES, int STAGES>
    static __device__ __forceinline__ void prepare_rows(const AttnParams& p, u32 tiles, u32 stage_bytes, int batch,
                                                        int head, int q0, int row0, int seqlen_q, int lane) {
        if (Fields::key_step(p) != 0) return;
        const Strides& str = Fields::strides(p);
        const char* base = static_cast<const char*>(Fields::data(p)) + (batch * str.batch + head * str.head) * BYTES;
        #pragma unroll
        for (int mt = 0; mt < ROW_TILES; ++mt)
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = row0 + 16 * mt + lane / 4 + 8 * r, query = q0 + row;
                float v = 0.f;
                if (query < seqlen_q) {
                    const char* at = base + query * str.seq * BYTES;
                    if constexpr (MASK) v = Value::of(*reinterpret_cast<const unsigned char*>(at));
                    else v = Mma<T>::unpack(*reinterpret_cast<const unsigned short*>(at)).x;
                }
                #pragma unroll
                for (int stage = 0; stage < STAGES; ++stage)
                    asm volatile("st.shared.f32 [%0], %1;\n" :: "r"(tiles + stage * stage_bytes + HEADER + row * 4),
                                 "f"(v));
            }
        __syncwarp();
    }

    // A warp's fragment of the forward (rows queries, row0 and col0 tile-relative): s += bias * unit, or a mask's
    // hidden pairs to -inf (only in the tiles it cuts).
    template <bool ROWS_ARE_KEYS, int ROWS_OF_TILE, int COLS_OF_TILE, bool ADD, int ROW_TILES, int COL_TILES>
    static __device__ __forceinline__ void apply(float (&s)[ROW_TILES][COL_TILES][4], u32 tile, int row0, int col0,
                                               int lane, const AttnParams& p, int entry) {
        static_assert(!ROWS_ARE_KEYS && ADD, "the forward's fragments, applied after the product");
        if (MASK && !(entry & 1)) return;  // the mask shows the whole tile
        const float unit = Fields::unit(p);
        if (Fields::key_step(p) == 0) {  // one value a row (prepare_rows)
            #pragma unroll
            for (int mt = 0; mt < ROW_TILES; ++mt)
                #pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float v;
                    asm volatile("ld.shared.f32 %0, [%1];\n"
                                 : "=f"(v) : "r"(tile + HEADER + (row0 + 16 * mt + lane / 4 + 8 * r) * 4));
                    v *= unit;
                    #pragma unroll
                    for (int nt = 0; nt < COL_TILES; ++nt) {
                        s[mt][nt][2 * r] += v;
                        s[mt][nt][2 * r + 1] += v;
                    }
                }
            return;
        }
        const bool by_query = Fields::strides(p).seq != 0;  // else the one row copied serves every query
        if constexpr (MASK) {
            for_each_pair(s, row0, col0, lane, [&](float& x, float& y, int row, int col) {
                const u32 two = lds_u16(tile + byte_offset<ROWS_OF_TILE>(by_query ? row : 0, col));
                x = two & 0xffu ? x : neg_inf();
                y = two >> 8 ? y : neg_inf();
            });
        } else if (!by_query) {  // the one row copied: each value widened once for all of the warp's rows
            if constexpr (COL_TILES % 4 == 0) {
                add_bias_row_x4<T>(s, unit, lane, [&](int col) {
                    return tile + byte_offset<ROWS_OF_TILE>(0, (col0 + col) * BYTES);
                });
            } else {
                add_bias_x4<T>(s, unit, lane, [&](int, int col) {
                    return tile + byte_offset<ROWS_OF_TILE>(0, (col0 + col) * BYTES);
                });
            }
        } else {
            add_bias_x4<T>(s, unit, lane, [&](int row, int col) {
                return tile + byte_offset<ROWS_OF_TILE>(row0 + row, (col0 + col) * BYTES);
            });
        }
    }

    // The all-warps loop's copy hook: compiled with every forward kernel, never run with this policy (a producer's).
    template <int ROWS, int COLS, int THREADS>
    static __device__ __forceinline__ void load_tile(u32, const AttnParams&, int, int, int, int, int, int, int) {}
};

}  // namespace cf
