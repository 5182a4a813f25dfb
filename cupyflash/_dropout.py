"""Dropout: which (query, key) pairs a call keeps, and the generator that hands out its random states.

A call with ``dropout_p > 0`` keeps pair (i, j) of (batch b, head h) iff a 32-bit Philox4x32-10 word is below
``threshold = round((1 - dropout_p) * 2^32)``; kept probabilities are multiplied by ``2^32 / threshold``, the
inverse of the keep probability actually used, so the output is unbiased. The word is a pure function of the
call's state (seed, offset) and of (b, h, i, j) — no mask is stored: the backward regenerates it. Pairs are numbered
so that one Philox call serves the four pairs {i, i + 8} x {j, j + 8} (i, j with bit 3 clear), which is exactly
what one thread of an m16n8 tensor-core fragment holds, whether its rows are queries (forward, dQ) or keys (dK/dV):
cuda_src/dropout.cuh is the device side of ``DropoutState.keep`` below. Within a packed (varlen) batch, b is the
sequence's index and i, j count from its first row.
"""
from __future__ import annotations

import numbers
import secrets
import threading
from dataclasses import dataclass

import numpy as np

from ._philox import philox4x32_10

_WORD = 2**32


def keep_threshold(p: float) -> int:
    """Words below this keep their pair: round((1 - p) * 2^32), within [1, 2^32 - 1]."""
    return min(max(round((1.0 - p) * _WORD), 1), _WORD - 1)


def keep_scale(p: float) -> float:
    """What a kept probability is multiplied by: 1 / the keep probability used (keep_threshold / 2^32)."""
    return _WORD / keep_threshold(p)


@dataclass(frozen=True)
class DropoutState:
    """One call's dropout: its probability and random state."""

    p: float
    seed: int
    offset: int

    @property
    def threshold(self) -> int:
        return keep_threshold(self.p)

    @property
    def scale(self) -> float:
        """keep_scale (the kernels take it rounded to float32)."""
        return keep_scale(self.p)

    @property
    def key(self) -> tuple:
        return self.seed % _WORD, self.seed // _WORD

    def keep(self, batches, nheads: int, seqlen_q: int, seqlen_k: int, xp=np):
        """Bool (len(batches), nheads, seqlen_q, seqlen_k): the pairs kept; ``batches`` the batch indices (for
        a packed batch: the sequences') the rows belong to."""
        batches = np.asarray(batches, dtype=np.int64).reshape(-1)
        rows, cols = -(-seqlen_q // 16) * 16, -(-seqlen_k // 16) * 16
        stream = (xp.asarray(batches)[:, None] * nheads + xp.arange(nheads)).astype(xp.uint32)
        # the counters' first two words: the groups i // 16 * 8 + i % 8 (and j's), one per pair {i, i + 8}
        x = xp.arange(rows // 2, dtype=xp.uint32)[None, None, :, None]
        y = xp.arange(cols // 2, dtype=xp.uint32)[None, None, None, :]
        words = philox4x32_10((x, y, stream[:, :, None, None], self.offset), self.key, xp)
        threshold = xp.uint32(self.threshold)
        kept = xp.empty((len(batches), nheads, rows // 16, 2, 8, cols // 16, 2, 8), dtype=bool)
        for row_bit in (0, 1):  # word (i / 8 % 2) * 2 + (j / 8 % 2) of pair group (i, j)
            for col_bit in (0, 1):
                word = words[2 * row_bit + col_bit].reshape(len(batches), nheads, rows // 16, 8, cols // 16, 8)
                kept[:, :, :, row_bit, :, :, col_bit, :] = word < threshold
        return kept.reshape(len(batches), nheads, rows, cols)[:, :, :seqlen_q, :seqlen_k]

    def multiplier(self, batches, nheads: int, seqlen_q: int, seqlen_k: int, xp=np, dtype="float64"):
        """(len(batches), nheads, seqlen_q, seqlen_k): ``scale`` where kept, 0 where dropped."""
        return xp.where(self.keep(batches, nheads, seqlen_q, seqlen_k, xp), self.scale, 0.0).astype(dtype)


class Generator:
    """Hands out dropout states: one seed and offsets 0, 1, 2, ... (mod 2^32), so that successive calls drop
    different pairs and a generator seeded alike repeats them. Thread-safe."""

    def __init__(self, seed: int | None = None):
        self._lock = threading.Lock()
        self.manual_seed(secrets.randbits(64) if seed is None else seed)

    def manual_seed(self, seed: int) -> "Generator":
        """Restart at ``seed`` (an int in [0, 2^64)), offset 0."""
        check_seed(seed)
        with self._lock:
            self.seed, self.offset = int(seed), 0
        return self

    def next_state(self) -> tuple:
        """The next (seed, offset) pair."""
        with self._lock:
            state = (self.seed, self.offset)
            self.offset = (self.offset + 1) % _WORD
        return state

    def __repr__(self):
        return f"cupyflash.Generator(seed={self.seed}, offset={self.offset})"


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"a dropout seed must be an int in [0, 2^64); got {seed!r}")


def check_rng_state(rng_state) -> tuple:
    """(seed, offset) as ints, or a clear error."""
    if not isinstance(rng_state, (tuple, list)) or len(rng_state) != 2:
        raise TypeError(f"rng_state must be a (seed, offset) pair of ints (as Generator.next_state() returns); got "
                        f"{rng_state!r}")
    seed, offset = rng_state
    check_seed(seed)
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or not 0 <= offset < _WORD:
        raise ValueError(f"rng_state's offset must be an int in [0, 2^32); got {offset!r}")
    return int(seed), int(offset)


#: The generator calls with dropout draw from unless given ``rng_state`` or ``generator``; seeded from the
#: operating system's entropy at import.
default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Re-seed :data:`default_generator` (offset 0), so that the calls after it drop the same pairs each run."""
    return default_generator.manual_seed(seed)


def resolve(dropout_p: float, rng_state=None, generator=None, *, backward: bool = False) -> DropoutState | None:
    """The call's dropout (None without): ``rng_state`` as given, else the next state of ``generator`` (default:
    :data:`default_generator`). A backward must be given the forward's ``rng_state``."""
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(f"generator must be a cupyflash.Generator; got {type(generator).__name__}")
    if rng_state is not None and generator is not None:
        raise ValueError("pass rng_state (one exact state) or generator (to draw one from), not both")
    if rng_state is not None:
        rng_state = check_rng_state(rng_state)  # also without dropout: a malformed state is a mistake either way
    if not dropout_p:
        return None
    if rng_state is None:
        if backward:
            raise ValueError(f"dropout_p={dropout_p}: the backward needs the forward's rng_state=(seed, offset), to "
                             f"regenerate the pairs it dropped (draw one with cupyflash.Generator.next_state() and "
                             f"pass it to both, or use flash_attn_vjp)")
        rng_state = (generator or default_generator).next_state()  # valid by construction
    seed, offset = rng_state
    return DropoutState(float(dropout_p), seed, offset)
