// Online softmax over a warp's score fragments (FlashAttention-2): running row max m_i, running row sum l_i,
// and the rescaling of the output accumulator when the max grows. Scores stay in raw units; the softmax scale
// and log2(e) are folded into one multiplier so every exponential is a single ex2.
#pragma once
#include "mma_sm80.cuh"

namespace cf {

template <int M_TILES>
struct OnlineSoftmax {
    float m_i[M_TILES][2];  // running (near-)max of raw scores, per row this thread holds (lane/4, lane/4 + 8)
    float l_i[M_TILES][2];  // running sum of exp, partial over this thread's columns until finish()

    __device__ __forceinline__ void init() {
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int r = 0; r < 2; ++r) { m_i[mt][r] = neg_inf(); l_i[mt][r] = 0.f; }
    }

    // s <- p = exp2(s * scale_log2 - m_i * scale_log2), l_i <- alpha * l_i + rowsum(p), acc <- alpha * acc.
    //
    // m_i need not be the exact running max: any value works as long as acc and l_i use the same one, and
    // p = exp2(...) stays small. So m_i moves (and acc is rescaled by alpha = exp2((m_old - m_new) * scale_log2))
    // only when some row of the warp sees its max grow by more than RESCALE_LOG2 (p <= 2^8 otherwise, far
    // from overflow in fp16/bf16/fp32). After the first tile that is rare, which skips the D/8*4 multiplies per
    // row per tile that an unconditional rescale costs. The vote keeps the branch uniform across the warp.
    static constexpr float RESCALE_LOG2 = 8.f;

    template <bool OFFSETS = false, int N_TILES, int D_TILES>
    __device__ __forceinline__ void update(float (&s)[M_TILES][N_TILES][4], float (&acc)[M_TILES][D_TILES][4],
                                           float scale_log2, const float (&offset)[M_TILES][2]) {
        float alpha[M_TILES][2];
        if (step<OFFSETS>(s, alpha, scale_log2, offset)) rescale(acc, alpha);
    }

    // update() in two parts, for a caller whose acc is still being written by a product when the scores arrive:
    // step() moves m_i, scales l_i, turns s into p and returns whether acc must be multiplied by alpha, which
    // rescale() does once acc may be touched. (alpha is written only when step() returns true.) OFFSETS: the
    // logits are s + offset[mt][r], a constant along each row the thread holds (score_mod.cuh
    // apply_score_mod_rows), added to the row's max and taken out of its exponent's constant rather than added to
    // every score.
    template <bool OFFSETS = false, int N_TILES>
    __device__ __forceinline__ bool step(float (&s)[M_TILES][N_TILES][4], float (&alpha)[M_TILES][2],
                                         float scale_log2, const float (&offset)[M_TILES][2]) {
        float tile_max[M_TILES][2];
        bool grows = false;
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                float x = neg_inf();
                #pragma unroll
                for (int nt = 0; nt < N_TILES; ++nt) x = fmaxf(x, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
                if constexpr (OFFSETS) x += offset[mt][r];
                tile_max[mt][r] = quad_max(x);
                // Written so that m_i = -inf (nothing seen yet) with a finite tile max counts as growth.
                grows |= !((tile_max[mt][r] - m_i[mt][r]) * scale_log2 <= RESCALE_LOG2);
            }
        const bool rescales = __any_sync(0xffffffffu, grows);
        if (rescales) {
            #pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt)
                #pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const float m_new = fmaxf(m_i[mt][r], tile_max[mt][r]);
                    // m_new = -inf: nothing seen yet, acc and l_i are 0; alpha = 1 avoids (-inf) - (-inf).
                    alpha[mt][r] = m_new == neg_inf() ? 1.f : fast_exp2((m_i[mt][r] - m_new) * scale_log2);
                    m_i[mt][r] = m_new;
                    l_i[mt][r] *= alpha[mt][r];
                }
        }
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                // m = -inf (row fully masked so far): subtracting 0 gives p = exp2(-inf) = 0, not NaN.
                float m_scaled = m_i[mt][r];
                if constexpr (OFFSETS) m_scaled -= offset[mt][r];
                m_scaled = m_i[mt][r] == neg_inf() ? 0.f : m_scaled * scale_log2;
                float row_sum = 0.f;
                #pragma unroll
                for (int nt = 0; nt < N_TILES; ++nt)
                    #pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        float& x = s[mt][nt][2 * r + c];
                        x = fast_exp2(x * scale_log2 - m_scaled);
                        row_sum += x;
                    }
                l_i[mt][r] += row_sum;
            }
        return rescales;
    }

    template <int D_TILES>
    __device__ __forceinline__ static void rescale(float (&acc)[M_TILES][D_TILES][4], const float (&alpha)[M_TILES][2]) {
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int r = 0; r < 2; ++r)
                #pragma unroll
                for (int dt = 0; dt < D_TILES; ++dt) {
                    acc[mt][dt][2 * r] *= alpha[mt][r];
                    acc[mt][dt][2 * r + 1] *= alpha[mt][r];
                }
    }

    // Completes the row sums across the quad. Afterwards inv_l(mt, r) scales the output row and lse(...) is the
    // natural-log log-sum-exp of the scaled scores; a row that saw no key gets 0 and -inf.
    __device__ __forceinline__ void finish() {
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int r = 0; r < 2; ++r) l_i[mt][r] = quad_sum(l_i[mt][r]);
    }
    __device__ __forceinline__ float inv_l(int mt, int r) const {
        return l_i[mt][r] > 0.f ? 1.f / l_i[mt][r] : 0.f;
    }
    __device__ __forceinline__ float lse(int mt, int r, float scale_log2) const {
        constexpr float LN2 = 0.6931471805599453f;
        return l_i[mt][r] > 0.f ? (m_i[mt][r] * scale_log2 + log2f(l_i[mt][r])) * LN2 : neg_inf();
    }
};

}  // namespace cf
