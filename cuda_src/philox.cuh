// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a counter-based generator,
// four 32-bit words of randomness for each 128-bit counter under a 64-bit key, with no state to carry. Dropout
// will key it by the call's seed and number the counters by (batch, head, row, column block, offset), so that the
// backward regenerates the forward's mask instead of storing it. cupyflash/_philox.py is the same function on
// NumPy or CuPy arrays; tests/test_philox.py holds both to Random123's known answers and to each other.
#pragma once

namespace cf {

struct Philox4x32 {
    static constexpr unsigned M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // round multipliers
    static constexpr unsigned W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // key schedule (Weyl) increments

    static __device__ __forceinline__ uint4 round(uint4 c, uint2 k) {
        const unsigned hi0 = __umulhi(M0, c.x), lo0 = M0 * c.x;
        const unsigned hi1 = __umulhi(M1, c.z), lo1 = M1 * c.z;
        return make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }

    // Ten rounds, the key bumped between them.
    static __device__ __forceinline__ uint4 generate(uint4 counter, uint2 key) {
        #pragma unroll
        for (int r = 0; r < 10; ++r) {
            if (r > 0) key = make_uint2(key.x + W0, key.y + W1);
            counter = round(counter, key);
        }
        return counter;
    }
};

}  // namespace cf
