// Additive bias policies: logit += bias[batch, head, query, key] / softmax_scale, in the raw units of score_mod.cuh,
// so that the softmax's exp2 sees scaled score + bias. It is added before the score policy: under softcap the
// bias is inside the cap, as FlexAttention's score_mod order gives; -inf hides a pair, also under the cap.
//
// The bias is any strided array broadcast to (batch, nheads, seqlen_q, seqlen_k): Python passes stride 0 for its
// broadcast dims and keys either contiguous (bias_key_step 1, rows padded so whole 16-byte chunks stay inside the
// allocation) or broadcast (bias_key_step 0). Each step's BLOCK_M x BLOCK_N tile is copied to shared memory with
// the step's other tiles, so global reads are coalesced whatever the kernel's fragment layout; fragments read it
// back as queries x keys (forward, dQ) or keys x queries (dK/dV).
//
// A boolean mask is read the same way, as a 0 / -inf bias one byte per pair (TileBias<mask8>), from its own params
// fields; with an additive bias beside it (MaskedBias) each stage holds both tiles, and the mask's tile summary
// decides which tiles are visited at all and in which the mask is read.
#pragma once
#include "mma_sm80.cuh"
#include "params.cuh"
#include "mask_tiles.cuh"
#include "warp_gemm.cuh"

namespace cf {

// dbias for policies that compute none: nothing to accumulate or store.
struct NoBiasGrad {
    template <typename... A>
    __device__ __forceinline__ void step(const A&...) {}
    template <typename... A>
    __device__ __forceinline__ void flush(const A&...) {}
};

// ADDS: the policy adds bias values (not only a mask's hiding): the forward and dQ grids take batches fastest
// (coords.cuh QueryBlock). BULK: its tiles come by bulk tensor copies from a producer thread (bulk_bias.cuh).
struct NoBias {
    static constexpr bool ON = false, GRAD = false, ADDS = false, CUTS = false, BULK = false;
    using Tiles = AllTiles;
    template <int KEY_TILES, int QUERY_TILES>
    using Grad = NoBiasGrad;
    template <int ROWS, int COLS>
    __host__ __device__ static constexpr int tile_bytes() { return 0; }
};

// Bias storage: float, or 16-bit f16 / bf16 (the Elem tags) converted as the tensor-core code converts them.
template <typename T> struct BiasValue {
    static constexpr int BYTES = 2;
    static __device__ __forceinline__ float2 pair(u32 addr) { return Mma<T>::unpack(lds_u32(addr)); }
    static __device__ __forceinline__ float one(u32 addr) { return Mma<T>::unpack(lds_u16(addr)).x; }
};
template <> struct BiasValue<float> {
    static constexpr int BYTES = 4;
    static __device__ __forceinline__ float2 pair(u32 addr) {
        float2 v;
        asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(addr));
        return v;
    }
    static __device__ __forceinline__ float one(u32 addr) { return __uint_as_float(lds_u32(addr)); }
};

// Where a tile's values come from: the bias's params fields, or the mask's. A mask's values need no unit (0 / -inf).
struct BiasFields {
    static __device__ __forceinline__ const void* data(const AttnParams& p) { return p.bias; }
    static __device__ __forceinline__ const Strides& strides(const AttnParams& p) { return p.bias_str; }
    static __device__ __forceinline__ int key_step(const AttnParams& p) { return p.bias_key_step; }
    static __device__ __forceinline__ float unit(const AttnParams& p) { return p.bias_unit; }
};
struct MaskFields {
    static __device__ __forceinline__ const void* data(const AttnParams& p) { return p.mask; }
    static __device__ __forceinline__ const Strides& strides(const AttnParams& p) { return p.mask_str; }
    static __device__ __forceinline__ int key_step(const AttnParams& p) { return p.mask_key_step; }
    static __device__ __forceinline__ float unit(const AttnParams&) { return 1.f; }
};

template <int KEY_TILES, int QUERY_TILES> struct BiasGrad;

// A boolean mask as a bias: one byte per pair, nonzero = visible (bias 0), zero = hidden (bias -inf). Its tile
// summary lets the kernels skip tiles it hides wholly and read it only where it crosses a tile (mask_tiles.cuh).
struct mask8 {};
template <typename T> struct TilesOf { using type = AllTiles; using Fields = BiasFields; };
template <> struct TilesOf<mask8> { using type = SummarizedTiles; using Fields = MaskFields; };
template <> struct BiasValue<mask8> {
    static constexpr int BYTES = 1;
    static __device__ __forceinline__ float of(u32 byte) { return byte ? 0.f : neg_inf(); }
    static __device__ __forceinline__ float2 pair(u32 addr) {
        const u32 two = lds_u16(addr);
        return make_float2(of(two & 0xffu), of(two >> 8));
    }
    static __device__ __forceinline__ float one(u32 addr) {
        u32 v;
        asm volatile("{ .reg .u16 b; ld.shared.u8 b, [%1]; cvt.u32.u16 %0, b; }\n" : "=r"(v) : "r"(addr));
        return of(v);
    }
};

// Two 16-bit bias values as floats. bf16 by one shl and one and, in inline PTX: the same values as Mma<bf16>::unpack,
// whose C++ shifts ptxas scheduled into 40-88 bytes of spill on the wgmma head-dim-64 lead, and one instruction
// fewer a pair than cvt.f32.bf16, whose high half became a PRMT and a shift in SASS.
template <typename T>
__device__ __forceinline__ float2 widen_bias_pair(u32 v) {
    if constexpr (Mma<T>::IS_BF16) {
        u32 lo, hi;
        asm("{ shl.b32 %0, %2, 16; and.b32 %1, %2, 0xffff0000; }\n" : "=r"(lo), "=r"(hi) : "r"(v));
        return make_float2(__uint_as_float(lo), __uint_as_float(hi));
    } else {
        return Mma<T>::unpack(v);
    }
}

// s += bias * unit for a forward fragment (rows are queries) of 16-bit bias values in shared memory: ldmatrix hands
// each lane exactly its accumulator pairs, four 8x8 matrices (rows +8 for odd ones, columns +8 for the upper two)
// per instruction instead of one pair per load. address(row, col): where the 8 values of that fragment-relative row
// start, col a multiple of 8 (the tile's layout: padded rows, or bulk_bias.cuh's swizzled panels).
template <typename T, int ROW_TILES, int COL_TILES, typename Address>
__device__ __forceinline__ void add_bias_x4(float (&s)[ROW_TILES][COL_TILES][4], float unit, int lane,
                                            const Address& address) {
    static_assert(COL_TILES % 2 == 0, "pairs of n8 tiles");
    const int lane_row = (lane & 7) + ((lane >> 3) & 1) * 8, lane_col = (lane >> 4) * 8;
    auto add = [&](float& x, float& y, u32 v) {
        const float2 b = widen_bias_pair<T>(v);
        x += b.x * unit;
        y += b.y * unit;
    };
    #pragma unroll
    for (int mt = 0; mt < ROW_TILES; ++mt)
        #pragma unroll
        for (int nt = 0; nt < COL_TILES; nt += 2) {
            u32 v[4];
            ldmatrix_x4(v, address(16 * mt + lane_row, 8 * nt + lane_col));
            add(s[mt][nt][0], s[mt][nt][1], v[0]);
            add(s[mt][nt][2], s[mt][nt][3], v[1]);
            add(s[mt][nt + 1][0], s[mt][nt + 1][1], v[2]);
            add(s[mt][nt + 1][2], s[mt][nt + 1][3], v[3]);
        }
}

// s += bias * unit where one row of 16-bit values serves every query (a bias broadcast over queries, e.g. a key
// bias (B, 1, 1, Sk)): each ldmatrix hands a lane the column pairs of four n8 tiles (its eight row addresses all
// name the one row), widened once and added to every row of the fragment, instead of once per row as
// add_bias_x4 would. row_col(col): where the 8 values at fragment-relative column col start, col a multiple of 8.
template <typename T, int ROW_TILES, int COL_TILES, typename Address>
__device__ __forceinline__ void add_bias_row_x4(float (&s)[ROW_TILES][COL_TILES][4], float unit, int lane,
                                                const Address& row_col) {
    static_assert(COL_TILES % 4 == 0, "quads of n8 tiles");
    #pragma unroll
    for (int nt = 0; nt < COL_TILES; nt += 4) {
        u32 v[4];
        ldmatrix_x4(v, row_col(8 * (nt + lane / 8)));
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 b = widen_bias_pair<T>(v[i]);
            #pragma unroll
            for (int mt = 0; mt < ROW_TILES; ++mt)
                #pragma unroll
                for (int r = 0; r < 2; ++r) {  // fmaf: one FFMA a score (ptxas made fp16's b * unit a shared
                    // FMUL and then an FADD a score)
                    s[mt][nt + i][2 * r] = fmaf(b.x, unit, s[mt][nt + i][2 * r]);
                    s[mt][nt + i][2 * r + 1] = fmaf(b.y, unit, s[mt][nt + i][2 * r + 1]);
                }
        }
    }
}

// GRAD_: the dK/dV kernel also writes the bias's gradient (BiasGrad).
//
// The kernels pass every call a step's walk entry (mask_tiles.cuh; 1 without a summary): a mask's tile is loaded
// and applied only where the mask cuts the tile (entry & 1), a bias's in every tile visited.
template <typename T, bool GRAD_ = false>
struct TileBias {
    static constexpr bool ON = true, GRAD = GRAD_, CUTS = true, BULK = false;
    static constexpr bool ADDS = !TilesOf<T>::type::SKIPS;  // a bias; a mask8 tile (its summary skips) only hides
    template <int KEY_TILES, int QUERY_TILES>
    using Grad = typename Pick<GRAD, BiasGrad<KEY_TILES, QUERY_TILES>, NoBiasGrad>::type;
    using Value = BiasValue<T>;
    using Tiles = typename TilesOf<T>::type;
    using Fields = typename TilesOf<T>::Fields;
    static_assert(!(GRAD && Tiles::SKIPS), "a mask has no gradient");
    static constexpr int BYTES = Value::BYTES;  // per element
    static constexpr int CHUNK = 16 / BYTES;     // elements per 16-byte copy
    // Rows padded by one chunk, like SmemTile: fragment reads of neighbouring rows fall in different banks.
    template <int COLS>
    __host__ __device__ static constexpr int stride() { return COLS + CHUNK; }
    template <int ROWS, int COLS>
    __host__ __device__ static constexpr int tile_bytes() { return ROWS * stride<COLS>() * BYTES; }

    // Walk entries (mask_tiles.cuh) kept with a pipeline stage's tile in the padding of its rows, which no copy
    // writes and no fragment reads: ROW 0 holds the entry of the tile loaded into the stage, ROW 1 the entry of
    // the load after it. Thread 0 writes them; the pipeline's __syncthreads orders the writes before the reads. The
    // math reads them back a step or two later instead of holding them in registers, which the kernels lack.
    template <int COLS, int ROW>
    static __device__ __forceinline__ void stash(u32 tile, int entry) {
        if (threadIdx.x == 0)
            asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(tile + (ROW * stride<COLS>() + COLS) * BYTES), "r"(entry));
    }
    template <int COLS, int ROW>
    static __device__ __forceinline__ int stashed(u32 tile) {
        return static_cast<int>(lds_u32(tile + (ROW * stride<COLS>() + COLS) * BYTES));
    }

    // The layout of a ROWS x COLS tile as 16-bit columns, for load_tile_async: rows of COLS * BYTES bytes, each
    // padded by one 16-byte chunk like SmemTile's.
    template <int ROWS, int COLS>
    struct Words {
        using Storage = u16;
        static constexpr int ROW_COUNT = ROWS, CHUNKS_PER_ROW = COLS * BYTES / 16, CHUNK = 8;
        static __device__ __forceinline__ u32 byte_offset(int row, int col) {
            return static_cast<u32>(row * stride<COLS>() * BYTES + 2 * col);
        }
    };

    // Queries [q0, q0 + ROWS) x keys [k0, k0 + COLS) of (batch, head) into the tile at smem; queries >= rows_valid
    // and keys >= cols_valid read as 0 (padding: masked or never stored). A bias broadcast over queries fills row
    // 0 only, which every query reads (apply): ROWS copies of one row would put every block of the grid on the
    // same few bytes of L2 at once (measured: a (B, 1, 1, S) key bias ran at 0.23-0.70x plain).
    template <int ROWS, int COLS, int THREADS>
    static __device__ __forceinline__ void load_tile(u32 smem, const AttnParams& p, int batch, int head, int q0,
                                                     int k0, int rows_valid, int cols_valid, int entry) {
        if (Tiles::SKIPS && !(entry & 1)) return;  // the mask shows the whole tile: not read
        const Strides& str = Fields::strides(p);
        const char* base = static_cast<const char*>(Fields::data(p)) +
                           (batch * str.batch + head * str.head + q0 * str.seq) * BYTES;
        const i64 row_stride = str.seq * BYTES;  // bytes
        const int rows = row_stride != 0 ? ROWS : 1;
        if (Fields::key_step(p) != 0) {  // 16-byte asynchronous copies, waited for with the step's other tiles
            // The copy of a 16-bit tile (smem_tile.cuh: one running pointer per thread), on the tile's bytes read as
            // 16-bit columns; no copy writes the padding chunk. A bias broadcast over queries copies its one row
            // (zero-filling the other rows instead: key-bias forwards 2-8% slower at head dim 128, H100).
            static_assert(COLS * BYTES % 16 == 0, "whole chunks per tile row");
            const u16* first = reinterpret_cast<const u16*>(base + static_cast<i64>(k0) * BYTES);
            const int cols = (cols_valid * BYTES + 1) / 2;
            if (row_stride != 0)
                load_tile_async<Words<ROWS, COLS>, THREADS>(smem, first, row_stride / 2, rows_valid, cols);
            else
                load_tile_async<Words<1, COLS>, THREADS>(smem, first, 0, rows_valid, cols);
        } else {  // one value per query row: plain loads and stores, visible after the step's __syncthreads
            for (int i = threadIdx.x; i < rows * COLS; i += THREADS) {
                const int r = i / COLS, c = i % COLS;
                const bool valid = r < rows_valid && c < cols_valid;
                const u32 at = smem + (r * stride<COLS>() + c) * BYTES;
                if constexpr (BYTES == 4) {
                    const u32 v = valid ? *reinterpret_cast<const u32*>(base + r * row_stride) : 0u;
                    asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(at), "r"(v));
                } else if constexpr (BYTES == 1) {
                    const u32 v = valid ? *reinterpret_cast<const unsigned char*>(base + r * row_stride) : 0u;
                    asm volatile("{ .reg .u16 b; cvt.u16.u32 b, %1; st.shared.u8 [%0], b; }\n" :: "r"(at), "r"(v));
                } else {
                    using u16v = unsigned short;
                    const u16v v = valid ? *reinterpret_cast<const u16v*>(base + r * row_stride) : u16v(0);
                    asm volatile("st.shared.b16 [%0], %1;\n" :: "r"(at), "h"(v));
                }
            }
        }
    }

    // The distance between query rows of a tile: 0 where the values are broadcast over queries (row 0 serves all).
    template <int COLS>
    static __device__ __forceinline__ int pitch(const AttnParams& p) {
        return Fields::strides(p).seq != 0 ? stride<COLS>() : 0;
    }
    // The values of the accumulator elements (row, col) and (row, col + 1) of a fragment (tile-relative; rows are
    // queries, or keys with ROWS_ARE_KEYS: the tile is queries x keys, so (key, query) sits at [query][key]).
    template <bool ROWS_ARE_KEYS>
    static __device__ __forceinline__ float2 pair(u32 tile, int pitch, int row, int col) {
        if constexpr (ROWS_ARE_KEYS)
            return make_float2(Value::one(tile + (col * pitch + row) * BYTES),
                               Value::one(tile + ((col + 1) * pitch + row) * BYTES));
        else
            return Value::pair(tile + (row * pitch + col) * BYTES);
    }

    // s = bias * unit (ADD: s += bias * unit) for a warp's accumulator fragment whose first row and column
    // (tile-relative) are row0 and col0. The 16-bit backward kernels start S from the bias and accumulate Q K^T onto
    // it; the forward, and float32's "highest" backward (whose truncated tensor-core sums would err relative to the
    // bias's size), add it after the product. Each is the choice without register spills at every tile (compile
    // check): at the edge of the register file the allocation of the two orders differs.
    template <bool ROWS_ARE_KEYS, int ROWS_OF_TILE, int COLS_OF_TILE, bool ADD, int ROW_TILES, int COL_TILES>
    static __device__ __forceinline__ void apply(float (&s)[ROW_TILES][COL_TILES][4], u32 tile, int row0, int col0,
                                               int lane, const AttnParams& p, int entry) {
        if (Tiles::SKIPS && !(entry & 1)) return;  // the mask shows the whole tile
        const int at = pitch<COLS_OF_TILE>(p);
        const float unit = Fields::unit(p);
        auto set = [&](float& x, float& y, float2 b) {
            if constexpr (ADD) {
                x += b.x * unit;
                y += b.y * unit;
            } else {
                x = b.x * unit;
                y = b.y * unit;
            }
        };
        if constexpr (ADD && !ROWS_ARE_KEYS && BYTES == 2 && COL_TILES % 2 == 0) {
            // The forward's 16-bit values by ldmatrix (add_bias_x4). Row addresses are 16-byte aligned: rows are
            // whole chunks apart, columns 8 elements. (The dQ kernel, which starts S from the bias, keeps the pairwise
            // loads: with ldmatrix its 128 x 32 tile at head dim 128 spills on sm_90.)
            if constexpr (COL_TILES % 4 == 0) {
                if (at == 0) {  // one row serves every query: each value widened once for all of the warp's rows
                    add_bias_row_x4<T>(s, unit, lane, [&](int col) { return tile + (col0 + col) * BYTES; });
                    return;
                }
            }
            add_bias_x4<T>(s, unit, lane, [&](int row, int col) {
                return tile + ((row0 + row) * at + col0 + col) * BYTES;
            });
            return;
        }
        for_each_pair(s, row0, col0, lane, [&](float& x, float& y, int row, int col) {
            set(x, y, pair<ROWS_ARE_KEYS>(tile, at, row, col));
        });
    }
};

// A boolean mask that cuts no tile of the kernel's tiling (block-sparse: each tile wholly visible or wholly
// hidden; Python chooses it only where the mask's uniform blocks are whole multiples of the tiles). Its tile
// summary says which tiles to visit and nothing else of it is read, so a stage holds only the two walk entries
// (stash) and the loop is the plain one plus the walk.
struct BlockMask {
    static constexpr bool ON = true, GRAD = false, CUTS = false, ADDS = false, BULK = false;
    template <int KEY_TILES, int QUERY_TILES>
    using Grad = NoBiasGrad;
    using Tiles = SummarizedTiles;
    template <int ROWS, int COLS>
    __host__ __device__ static constexpr int tile_bytes() { return 16; }  // two entries, 16-byte aligned stages
    template <int COLS, int ROW>
    static __device__ __forceinline__ void stash(u32 tile, int entry) {
        if (threadIdx.x == 0) asm volatile("st.shared.b32 [%0], %1;\n" :: "r"(tile + ROW * 4), "r"(entry));
    }
    template <int COLS, int ROW>
    static __device__ __forceinline__ int stashed(u32 tile) { return static_cast<int>(lds_u32(tile + ROW * 4)); }
    template <int ROWS, int COLS, int THREADS>
    static __device__ __forceinline__ void load_tile(u32, const AttnParams&, int, int, int, int, int, int, int) {}
    template <bool ROWS_ARE_KEYS, int ROWS_OF_TILE, int COLS_OF_TILE, bool ADD, int ROW_TILES, int COL_TILES>
    static __device__ __forceinline__ void apply(float (&)[ROW_TILES][COL_TILES][4], u32, int, int, int,
                                               const AttnParams&, int) {}
};

// An additive bias and a boolean mask together: each stage holds the mask's tile, then the bias's. The mask's
// summary picks the tiles visited; the bias is read in each of them, the mask (Hidden: a mask8 tile, or nothing
// for a BlockMask) only where it cuts the tile, and hides its pairs by adding -inf after the bias. Walk entries
// ride in the mask tile's row padding, as alone.
template <typename T, bool GRAD_ = false, typename Hidden_ = TileBias<mask8>>
struct MaskedBias {
    using Values = TileBias<T, GRAD_>;
    using Hidden = Hidden_;
    static constexpr bool ON = true, GRAD = GRAD_, ADDS = true, CUTS = Hidden::CUTS, BULK = false;
    template <int KEY_TILES, int QUERY_TILES>
    using Grad = typename Values::template Grad<KEY_TILES, QUERY_TILES>;
    using Tiles = typename Hidden::Tiles;
    template <int ROWS, int COLS>
    __host__ __device__ static constexpr int tile_bytes() {
        return Hidden::template tile_bytes<ROWS, COLS>() + Values::template tile_bytes<ROWS, COLS>();
    }
    template <int COLS, int ROW>
    static __device__ __forceinline__ void stash(u32 tile, int entry) { Hidden::template stash<COLS, ROW>(tile, entry); }
    template <int COLS, int ROW>
    static __device__ __forceinline__ int stashed(u32 tile) { return Hidden::template stashed<COLS, ROW>(tile); }

    template <int ROWS, int COLS, int THREADS>
    static __device__ __forceinline__ void load_tile(u32 smem, const AttnParams& p, int batch, int head, int q0,
                                                     int k0, int rows_valid, int cols_valid, int entry) {
        Values::template load_tile<ROWS, COLS, THREADS>(smem + Hidden::template tile_bytes<ROWS, COLS>(), p, batch,
                                                        head, q0, k0, rows_valid, cols_valid, entry);
        Hidden::template load_tile<ROWS, COLS, THREADS>(smem, p, batch, head, q0, k0, rows_valid, cols_valid, entry);
    }
    // One pass over the fragment where the mask is read (bias and mask values added together: two passes spill the
    // forward's 128 x 32 tile at head dim 128 on sm_80), the bias's own pass where it is not.
    template <bool ROWS_ARE_KEYS, int ROWS_OF_TILE, int COLS_OF_TILE, bool ADD, int ROW_TILES, int COL_TILES>
    static __device__ __forceinline__ void apply(float (&s)[ROW_TILES][COL_TILES][4], u32 tile, int row0, int col0,
                                               int lane, const AttnParams& p, int entry) {
        const u32 values = tile + Hidden::template tile_bytes<ROWS_OF_TILE, COLS_OF_TILE>();
        if constexpr (!Hidden::CUTS) {  // a block mask: the bias alone, in every tile visited
            Values::template apply<ROWS_ARE_KEYS, ROWS_OF_TILE, COLS_OF_TILE, ADD>(s, values, row0, col0, lane, p, 1);
        } else if (!(entry & 1) || Values::BYTES == 4) {
            Values::template apply<ROWS_ARE_KEYS, ROWS_OF_TILE, COLS_OF_TILE, ADD>(s, values, row0, col0, lane, p, 1);
            Hidden::template apply<ROWS_ARE_KEYS, ROWS_OF_TILE, COLS_OF_TILE, true>(s, tile, row0, col0, lane, p, entry);
        } else {
            const int values_at = Values::template pitch<COLS_OF_TILE>(p);
            const int hidden_at = Hidden::template pitch<COLS_OF_TILE>(p);
            const float unit = Values::Fields::unit(p);
            for_each_pair(s, row0, col0, lane, [&](float& x, float& y, int row, int col) {
                const float2 b = Values::template pair<ROWS_ARE_KEYS>(values, values_at, row, col);
                const float2 m = Hidden::template pair<ROWS_ARE_KEYS>(tile, hidden_at, row, col);
                if constexpr (ADD) {
                    x += b.x * unit + m.x;
                    y += b.y * unit + m.y;
                } else {
                    x = b.x * unit + m.x;
                    y = b.y * unit + m.y;
                }
            });
        }
    }
};

// The bias's gradient, dbias = dS (the bias enters the softmax like the scaled score), from the dK/dV kernel's dS^T
// fragments (rows keys, columns queries) into an fp32 partial array that Python sums over the bias's broadcast
// dims afterwards: params.dbias with element strides dbias_str (batch, row, head), columns contiguous. Every
// element is written by one thread of one block (no atomics: deterministic). params.dbias_sums 4 (a bias of full
// queries and keys broadcast over batches or heads, and no determinism asked): dbias itself, with stride 0 along
// its broadcast batches or heads, into which every block adds its dS with atomics (no batch x heads x S^2 partial
// to write, read back and sum). params.dbias_sums bit 0: the bias
// is broadcast over queries, and each warp keeps per-key sums over a head's query tiles, stored after the head's
// last tile visited (flush) in row `query_split` (the warp's share of the queries, one of D_SPLIT); bit 1: broadcast over keys, and
// sums over the warp's keys go to column `key_group` (one per 16 * KEY_TILES keys). Neither: dS itself, row =
// query, column = key. Padding rows and columns hold dS = 0 (masked keys, zero-filled queries) and are not stored;
// nor are the tiles a mask skips (Python zero-fills the partial).
template <int KEY_TILES, int QUERY_TILES>
struct BiasGrad {
    float key_sums[KEY_TILES][2] = {};
    float total = 0.f;

    __device__ __forceinline__ float* rows(const AttnParams& p, int batch, int head) const {
        return p.dbias + batch * p.dbias_str.batch + head * p.dbias_str.head;
    }

    // dS element by element: written, or added into a buffer that the bias's broadcast batches or heads share.
    template <bool ADD>
    __device__ __forceinline__ void each(const float (&ds)[KEY_TILES][QUERY_TILES][4], float* out, i64 row_stride,
                                         int key0, int query0, int seqlen_q, int seqlen_k, int lane) {
        #pragma unroll
        for (int kt = 0; kt < KEY_TILES; ++kt)
            #pragma unroll
            for (int qt = 0; qt < QUERY_TILES; ++qt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = key0 + 16 * kt + lane / 4 + 8 * (e / 2);
                    const int query = query0 + 8 * qt + 2 * (lane % 4) + e % 2;
                    if (key < seqlen_k && query < seqlen_q) {
                        float* at = out + query * row_stride + key;
                        if constexpr (ADD)
                            asm volatile("red.global.add.f32 [%0], %1;\n" :: "l"(at), "f"(ds[kt][qt][e]) : "memory");
                        else
                            *at = ds[kt][qt][e];
                    }
                }
    }

    __device__ __forceinline__ void step(const float (&ds)[KEY_TILES][QUERY_TILES][4], const AttnParams& p,
                                         int batch, int head, int key0, int query0, int seqlen_q, int seqlen_k,
                                         int key_group, int lane) {
        const int sums = p.dbias_sums;
        if (sums == 0) {
            each<false>(ds, rows(p, batch, head), p.dbias_str.seq, key0, query0, seqlen_q, seqlen_k, lane);
        } else if (sums == 4) {
            each<true>(ds, rows(p, batch, head), p.dbias_str.seq, key0, query0, seqlen_q, seqlen_k, lane);
        } else if (sums == 2) {  // per query: the warp's keys summed (lanes lane / 4 hold the key rows)
            float* out = rows(p, batch, head) + key_group;
            #pragma unroll
            for (int qt = 0; qt < QUERY_TILES; ++qt)
                #pragma unroll
                for (int c = 0; c < 2; ++c) {
                    float v = 0.f;
                    #pragma unroll
                    for (int kt = 0; kt < KEY_TILES; ++kt) v += ds[kt][qt][c] + ds[kt][qt][2 + c];
                    v += __shfl_xor_sync(0xffffffffu, v, 4);
                    v += __shfl_xor_sync(0xffffffffu, v, 8);
                    v += __shfl_xor_sync(0xffffffffu, v, 16);
                    const int query = query0 + 8 * qt + 2 * lane + c;
                    if (lane < 4 && query < seqlen_q) out[query * p.dbias_str.seq] = v;
                }
        } else {  // summed over queries: accumulated until the head's last query tile (flush)
            #pragma unroll
            for (int kt = 0; kt < KEY_TILES; ++kt)
                #pragma unroll
                for (int qt = 0; qt < QUERY_TILES; ++qt)
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        if (sums == 1)
                            key_sums[kt][e / 2] += ds[kt][qt][e];
                        else
                            total += ds[kt][qt][e];
                    }
        }
    }

    __device__ __forceinline__ void flush(const AttnParams& p, int batch, int head, int key0, int seqlen_k,
                                          int key_group, int query_split, int lane) {
        const int sums = p.dbias_sums;
        float* out = rows(p, batch, head) + query_split * p.dbias_str.seq;
        if (sums == 1) {
            #pragma unroll
            for (int kt = 0; kt < KEY_TILES; ++kt)
                #pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const float v = quad_sum(key_sums[kt][r]);  // lanes lane % 4 hold the query columns
                    const int key = key0 + 16 * kt + lane / 4 + 8 * r;
                    if (lane % 4 == 0 && key < seqlen_k) out[key] = v;
                    key_sums[kt][r] = 0.f;
                }
        } else if (sums == 3) {
            float v = total;
            #pragma unroll
            for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
            if (lane == 0) out[key_group] = v;
            total = 0.f;
        }
    }
};

}  // namespace cf
