// An additive 16-bit bias on the forward's bulk-copy producer tiles (sm_90a): the producer's one thread copies each
// step's BLOCK_M x BLOCK_N bias tile with the key tile, by a tensor map of the bias (params.cuh TensorMaps::bias,
// cupyflash/_tma.py), counted on the key tile's barrier; the consumers add it to S before they release that slot.
//
// The tile lands as the K tiles do: panels of 64 keys, 128-byte rows XOR-swizzled (SwizzledTile), which ldmatrix
// reads without bank conflicts. Broadcast dims are extent 1 in the map and read at coordinate 0; a bias broadcast
// over queries is copied as its one row, which every query reads. A bias broadcast over keys (one value a query
// row, constant along the keys) has nothing to copy: each consumer warp writes its rows' values into every stage
// once, before its first tile, and reads them from there.
#pragma once
#include "bias.cuh"
#include "pipeline.cuh"
#include "wgmma.cuh"

namespace cf {

template <typename T>  // f16 or bf16 (the Elem tags)
struct SwizzledBias {
    static constexpr bool ON = true, GRAD = false, ADDS = true, CUTS = false, BULK = true;
    template <int KEY_TILES, int QUERY_TILES>
    using Grad = NoBiasGrad;
    using Tiles = AllTiles;
    template <int ROWS, int COLS>
    using Tile = SwizzledTile<ROWS, COLS>;
    template <int ROWS, int COLS>
    __host__ __device__ static constexpr int tile_bytes() { return Tile<ROWS, COLS>::BYTES; }

    // Producer: the bytes step t's copy brings (the key tile's barrier expects them beside the key tile's), and
    // the copy itself (keys [k0, k0 + COLS) of queries [q0, q0 + ROWS), zeros past the bias's extents).
    template <int ROWS, int COLS>
    static __device__ __forceinline__ u32 copy_bytes(const AttnParams& p) {
        return p.bias_key_step == 0 ? 0u : static_cast<u32>((p.bias_str.seq != 0 ? ROWS : 1) * COLS * 2);
    }
    template <int ROWS, int COLS>
    static __device__ __forceinline__ void copy(u32 dst, const TensorMap& map, const AttnParams& p, int batch,
                                                int head, int q0, int k0, u32 bar) {
        if (p.bias_key_step == 0) return;
        const Strides& str = p.bias_str;
        #pragma unroll
        for (int panel = 0; panel < COLS / Tile<ROWS, COLS>::PANEL_COLS; ++panel)
            tma_load_4d(dst + panel * Tile<ROWS, COLS>::PANEL_BYTES, map, k0 + panel * Tile<ROWS, COLS>::PANEL_COLS,
                        str.seq != 0 ? q0 : 0, str.head != 0 ? head : 0, str.batch != 0 ? batch : 0, bar);
    }

    // Consumer warp, before its first tile: a bias broadcast over keys has its rows' values (queries q0 + row0 +
    // [0, 16 ROW_TILES), float, 0 past seqlen_q) written to the start of every stage's tile (`tiles`, stage s at
    // tiles + s * stage_bytes).
    template <int ROW_TILES, int STAGES>
    static __device__ __forceinline__ void prepare_rows(const AttnParams& p, u32 tiles, u32 stage_bytes, int batch,
                                                        int head, int q0, int row0, int seqlen_q, int lane) {
        if (p.bias_key_step != 0) return;
        const Strides& str = p.bias_str;
        const u16* base = static_cast<const u16*>(p.bias) + batch * str.batch + head * str.head;
        #pragma unroll
        for (int mt = 0; mt < ROW_TILES; ++mt)
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = row0 + 16 * mt + lane / 4 + 8 * r, query = q0 + row;
                const float v = query < seqlen_q ? Mma<T>::unpack(static_cast<u32>(base[query * str.seq])).x : 0.f;
                #pragma unroll
                for (int stage = 0; stage < STAGES; ++stage)
                    asm volatile("st.shared.f32 [%0], %1;\n" :: "r"(tiles + stage * stage_bytes + row * 4), "f"(v));
            }
        __syncwarp();
    }

    // s += bias * unit for a warp's fragment of the forward (rows queries, row0 and col0 tile-relative).
    template <bool ROWS_ARE_KEYS, int ROWS_OF_TILE, int COLS_OF_TILE, bool ADD, int ROW_TILES, int COL_TILES>
    static __device__ __forceinline__ void apply(float (&s)[ROW_TILES][COL_TILES][4], u32 tile, int row0, int col0,
                                               int lane, const AttnParams& p, int) {
        static_assert(!ROWS_ARE_KEYS && ADD, "the forward's fragments, added after the product");
        const float unit = p.bias_unit;
        if (p.bias_key_step == 0) {  // one value a row (prepare_rows)
            #pragma unroll
            for (int mt = 0; mt < ROW_TILES; ++mt)
                #pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float v;
                    asm volatile("ld.shared.f32 %0, [%1];\n"
                                 : "=f"(v) : "r"(tile + (row0 + 16 * mt + lane / 4 + 8 * r) * 4));
                    v *= unit;
                    #pragma unroll
                    for (int nt = 0; nt < COL_TILES; ++nt) {
                        s[mt][nt][2 * r] += v;
                        s[mt][nt][2 * r + 1] += v;
                    }
                }
            return;
        }
        const bool by_query = p.bias_str.seq != 0;  // else the one row copied serves every query
        add_bias_x4<T>(s, unit, lane, [&](int row, int col) {
            return tile + Tile<ROWS_OF_TILE, COLS_OF_TILE>::byte_offset(by_query ? row0 + row : 0, col0 + col);
        });
    }

    // The all-warps loop's copy hook: compiled with every forward kernel, never run with this policy (a producer's).
    template <int ROWS, int COLS, int THREADS>
    static __device__ __forceinline__ void load_tile(u32, const AttnParams&, int, int, int, int, int, int, int) {}
};

}  // namespace cf
