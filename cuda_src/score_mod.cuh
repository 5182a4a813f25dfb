// Score policies: raw score s = q.k (plus the bias, bias.cuh) -> logit, in "raw units" that the softmax multiplies
// by params.scale_log2 inside its exp2, and the chain rule back for dS.
//   plain:    logit = s                                  scale_log2 = softmax_scale * log2(e)
//   softcap:  logit = c * tanh(s * softmax_scale / c)    scale_log2 = log2(e)
//   ALiBi:    logit += -slope * |i + off - j| * unit     (unit converts the slope to the units above)
// softmax_scale times d(logit)/ds is what multiplies dS on its way to dQ and dK; the kernels apply softmax_scale
// once at the end, so grad_factor returns the rest (1 for plain and ALiBi, 1 - tanh^2 for softcap). With neither
// modifier the policy is the identity and the kernels compile to the fused scale-and-subtract of plain attention.
#pragma once
#include "coords.cuh"
#include "params.cuh"
#include "warp_gemm.cuh"

namespace cf {

__device__ __forceinline__ float tanh_approx(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// EXACT_TANH: the softcap's tanh from the math library (a few ulp) rather than the one-instruction approximation
// (about 2^-11 relative, below 16-bit rounding but far above float32's): float32 inputs at precision "highest".
template <bool SOFTCAP = false, bool ALIBI = false, bool EXACT_TANH = false>
struct ScoreMod {
    static constexpr bool IDENTITY = !SOFTCAP && !ALIBI;
    // Query-row tiles wholly on one side of the diagonal take ALiBi as a term a key and an offset a row, which the
    // softmax adds to its row max (apply_score_mod_rows below, online_softmax.cuh step).
    static constexpr bool ROW_OFFSETS = ALIBI;
    float cap, cap_inv, cap_scale;  // softcap
    float alibi_slope;     // -slope * unit of this (batch, head): a non-positive multiplier of the distance
    int off;

    __device__ __forceinline__ ScoreMod(const AttnParams& p, const Seq& seq, int batch, int head)
        : cap(p.softcap), cap_inv(0.f), cap_scale(p.softcap_scale), alibi_slope(0.f), off(seq.seqlen_k - seq.seqlen_q) {
        if constexpr (SOFTCAP) cap_inv = 1.f / p.softcap;
        if constexpr (ALIBI) alibi_slope = -p.alibi_slopes[batch * p.alibi_batch_stride + head] * p.alibi_unit;
    }

    // ALiBi's term from the distance query + off - key (or its absolute value), as a float.
    __device__ __forceinline__ float alibi(float query_minus_key) const {
        return alibi_slope * fabsf(query_minus_key);
    }

    // HIDDEN_IN: s may be -inf (a -inf bias), which must stay -inf through the cap rather than become -cap.
    template <bool HIDDEN_IN = false>
    __device__ __forceinline__ float capped(float s) const {
        if constexpr (SOFTCAP) {
            const float x = s * cap_scale;
            s = HIDDEN_IN && s == neg_inf() ? s : cap * (EXACT_TANH ? tanhf(x) : tanh_approx(x));
        }
        return s;
    }
    template <bool HIDDEN_IN = false>
    __device__ __forceinline__ float logit(float s, float query_minus_key) const {
        s = capped<HIDDEN_IN>(s);
        if constexpr (ALIBI) s += alibi(query_minus_key);
        return s;
    }

    // d(logit)/ds / softmax_scale, from the logit itself (masked logits, -inf, give 0 rather than NaN).
    __device__ __forceinline__ float grad_factor(float logit_value, int query, int key) const {
        if constexpr (SOFTCAP) {
            float t = logit_value;
            if constexpr (ALIBI) t -= alibi(static_cast<float>(abs(query + off - key)));
            t *= cap_inv;
            return 1.f - fminf(t * t, 1.f);
        } else {
            return 1.f;
        }
    }
};

// Raw scores -> logits for a warp's accumulator fragment (rows are queries, or keys with ROWS_ARE_KEYS); nothing
// at all for plain scores. With query rows (forward, dQ) ALiBi's distance is converted to float once per thread
// and tile and moved by each element's constant offset, rather than converted per element; the dK/dV kernel
// converts per element, because the extra live float spills its largest tiles (compile check).
template <bool ROWS_ARE_KEYS = false, bool HIDDEN_IN = false, typename Score, int ROW_TILES, int COL_TILES>
__device__ __forceinline__ void apply_score_mod(const Score& score, float (&s)[ROW_TILES][COL_TILES][4], int row0,
                                                int col0, int lane) {
    if constexpr (Score::IDENTITY) {
    } else if constexpr (ROWS_ARE_KEYS) {
        for_each_element(s, row0, col0, lane, [&](float& x, int key, int query) {
            x = score.template logit<HIDDEN_IN>(x, static_cast<float>(abs(query + score.off - key)));
        });
    } else {
        const float first = static_cast<float>(row0 + lane / 4 + score.off - col0 - 2 * (lane % 4));
        for_each_element_offset(s, [&](float& x, int dr, int dc) {
            x = score.template logit<HIDDEN_IN>(x, first + static_cast<float>(dr - dc));
        });
    }
}

// apply_score_mod for query rows (the forward), with ALiBi taken apart where it is linear: on a tile whose keys all
// lie on one side of every query row the warp holds (all but the one or two tiles a row block has on the
// diagonal), slope * |i + off - j| = side * slope * (i + off - col0 - 2 (lane % 4)) - side * slope * dc, with dc
// the element's constant column in the thread's fragment. The second term is one FFMA by an immediate a score; the
// first, constant along the thread's part of a row, goes to `offset` (logit = s + offset), which the softmax adds
// to the row max and subtracts in its exponent's constant instead (two instructions a score in the general form:
// the distance, then its FFMA). Tiles across the diagonal, and scores without ALiBi, get offset 0.
template <bool HIDDEN_IN = false, typename Score, int ROW_TILES, int COL_TILES>
__device__ __forceinline__ void apply_score_mod_rows(const Score& score, float (&s)[ROW_TILES][COL_TILES][4],
                                                     int row0, int col0, int lane, float (&offset)[ROW_TILES][2]) {
    #pragma unroll
    for (int mt = 0; mt < ROW_TILES; ++mt) offset[mt][0] = offset[mt][1] = 0.f;
    if constexpr (Score::ROW_OFFSETS) {
        const int first = row0 + score.off - col0;  // i + off - j of the warp's first row and the tile's first key
        const int side = first - (8 * COL_TILES - 1) >= 0 ? 1 : first + 16 * ROW_TILES - 1 <= 0 ? -1 : 0;
        if (side != 0) {  // warp-uniform
            const float slope = static_cast<float>(side) * score.alibi_slope, step = -slope;
            for_each_element_offset(s, [&](float& x, int, int dc) {
                x = score.template capped<HIDDEN_IN>(x);
                if (dc != 0) x = fmaf(step, static_cast<float>(dc), x);
            });
            const int distance = first + lane / 4 - 2 * (lane % 4);
            #pragma unroll
            for (int mt = 0; mt < ROW_TILES; ++mt)
                #pragma unroll
                for (int r = 0; r < 2; ++r) offset[mt][r] = slope * static_cast<float>(distance + 16 * mt + 8 * r);
            return;
        }
    }
    apply_score_mod<false, HIDDEN_IN>(score, s, row0, col0, lane);
}

}  // namespace cf
