"""Philox4x32-10 on NumPy or CuPy arrays: the host twin of cuda_src/philox.cuh (the generator dropout will use),
for references and tests. Each counter (four uint32 words) gives four uint32 words under a key (two words)."""
from __future__ import annotations

import numpy as np

M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # key schedule increments
_MASK = 0xFFFFFFFF


def _mulhilo(a, word, xp):
    """(high, low) 32-bit halves of the 64-bit product of the constant ``a`` and uint32 ``word``."""
    product = word.astype(xp.uint64) * xp.uint64(a)
    return (product >> xp.uint64(32)).astype(xp.uint32), (product & xp.uint64(_MASK)).astype(xp.uint32)


def philox4x32_10(counter, key, xp=np):
    """Four uint32 arrays (the words of the output) for ``counter``: four uint32 arrays (or ints) of one broadcast
    shape, and ``key``: two ints (or uint32 arrays)."""
    c = [xp.asarray(w, dtype=xp.uint32) for w in counter]
    c = list(xp.broadcast_arrays(*c))
    k0, k1 = (xp.asarray(w, dtype=xp.uint32) for w in key)
    for r in range(10):
        if r:
            k0 = (k0.astype(xp.uint64) + W0).astype(xp.uint32)
            k1 = (k1.astype(xp.uint64) + W1).astype(xp.uint32)
        hi0, lo0 = _mulhilo(M0, c[0], xp)
        hi1, lo1 = _mulhilo(M1, c[2], xp)
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
    return tuple(c)
