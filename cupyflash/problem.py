"""The frozen description of one attention call, built once by validation and passed API -> dispatch -> launch.

Only its small hashable :class:`Variant` part (dtype, mask kind, score modifiers) reaches kernel names and cache
keys; sizes and scalar values travel in the kernels' params struct.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

#: Mask kinds: every pair visible, or a diagonal band (causal, sliding windows; see cuda_src/mask.cuh).
MASKS = ("none", "band")
#: Row layouts: dense (batch, seqlen, heads, dim) batches, or packed variable-length batches (flash-attn's varlen
#: layout; see cuda_src/coords.cuh).
ROWS = ("dense", "packed")
#: Additive bias dtypes (cuda_src/bias.cuh), or "none".
BIASES = ("none", "float16", "bfloat16", "float32")
#: How float32 inputs are multiplied (cuda_src/mma_tf32.cuh): three TF32 passes (each operand held to 2^-22) or one
#: (about 1e-3 relative). 16-bit inputs have one way, precision "".
PRECISIONS = ("highest", "tf32")


@dataclass(frozen=True)
class Variant:
    """What a kernel instance is compiled for, beyond its tiles."""

    dtype: str             # "float16" | "bfloat16" | "float32"
    mask: str = "none"     # one of MASKS
    softcap: bool = False  # logits = softcap * tanh(scaled score / softcap)
    alibi: bool = False    # logits -= slope * |i + seqlen_k - seqlen_q - j|
    rows: str = "dense"    # one of ROWS
    bias: str = "none"     # the additive bias's dtype, or "none" (one of BIASES)
    dbias: bool = False    # the dK/dV kernel also computes the bias's gradient
    bool_mask: bool = False  # a boolean mask (read as a 0 / -inf bias, beside the additive one if any)
    mask_blocks: bool = False  # the boolean mask cuts no tile of the kernels' tiling: only its tile summary is read
    precision: str = ""    # float32: one of PRECISIONS; 16-bit dtypes: ""
    dropout: bool = False  # dropout_p > 0: probabilities dropped by a Philox stream (cuda_src/dropout.cuh)
    split_kv: bool = False  # forward: each query tile's keys spread over several blocks (cuda_src/split_kv.cuh)

    def __post_init__(self):
        if self.mask_blocks and not self.bool_mask:
            raise ValueError("Variant(mask_blocks=True) describes a boolean mask: bool_mask must be True too")
        if self.split_kv and (self.rows != "dense" or self.mask_blocks):
            raise ValueError("Variant(split_kv=True): split keys take dense rows without a block-sparse mask")
        if (self.precision in PRECISIONS) != (self.dtype == "float32"):
            raise ValueError(f"Variant: precision {self.precision!r} does not go with dtype {self.dtype}: float32 "
                             f"takes one of {PRECISIONS}, 16-bit dtypes ''")

    @property
    def plain_scores(self) -> bool:
        return not (self.softcap or self.alibi)


def variant_combinations(kind: str, dtypes, biases=BIASES, dropouts=(False,)):
    """Every Variant a kernel of ``kind`` can be asked for (precompile --variants, the picks sweep): each mask,
    softcap, ALiBi, row layout, bias dtype and boolean mask (read in the tiles it cuts, or block-sparse); no bias or
    mask with packed rows, dbias only in the dK/dV kernel and with a bias; without dropout unless ``dropouts`` says
    (it doubles the count)."""
    for dtype, mask, softcap, alibi, rows in itertools.product(dtypes, MASKS, (False, True), (False, True), ROWS):
        dense = rows == "dense"
        for bias, bool_mask in itertools.product(biases if dense else ("none",), (False, True) if dense else (False,)):
            for dbias, blocks in itertools.product((False, True) if bias != "none" and kind == "bwd" else (False,),
                                                   (False, True) if bool_mask else (False,)):
                for precision, dropout in itertools.product(precisions_of(dtype), dropouts):
                    yield Variant(dtype, mask, softcap, alibi, rows, bias, dbias, bool_mask, blocks, precision,
                                  dropout)


def precisions_of(dtype: str) -> tuple:
    """The precisions a dtype's kernels come in."""
    return PRECISIONS if dtype == "float32" else ("",)


@dataclass(frozen=True)
class BiasLayout:
    """How the kernels read an additive bias or a boolean mask broadcast to (batch, nheads, seqlen_q, seqlen_k)
    (cuda_src/bias.cuh)"""

    dtype: str
    itemsize: int
    dims: tuple          # (batch, heads, queries, keys) of its own data: 1 where broadcast (size 1 or stride 0)
    strides: tuple       # element strides (batch, heads, queries, keys) the kernels read; 0 where broadcast
    copy: bool = False   # its memory cannot feed 16-byte copies as is: a contiguous copy with padded rows per call
    given: tuple = ()    # its shape as the caller gave it (the gradient's shape)

    @property
    def key_step(self) -> int:
        """1: keys contiguous (16-byte copies); 0: one value per query row."""
        return 1 if self.dims[3] > 1 else 0


@dataclass(frozen=True)
class Problem:
    batch: int
    seqlen_q: int
    seqlen_k: int
    nheads: int
    nheads_k: int
    head_dim: int           # the caller's
    device: int
    softmax_scale: float
    causal: bool
    window: tuple           # (left, right) after flash-attn's normalisation: -1 unbounded, right = 0 when causal
    softcap: float          # 0: off
    alibi_batch_stride: int  # elements between batches of alibi_slopes; 0 for one shared (nheads,) vector
    variant: Variant
    total_q: int = 0        # packed rows: rows of q (seqlen_q and seqlen_k are then the longest entry's)
    total_k: int = 0        # ... and of k, v
    bias: BiasLayout | None = None  # how the kernels read the additive bias, if any
    mask: BiasLayout | None = None  # ... and the boolean mask
    dropout_p: float = 0.0  # the probability of dropping each attention probability (variant.dropout: > 0)

    @property
    def heads_per_kv(self) -> int:
        return self.nheads // self.nheads_k

    @property
    def padded_head_dim(self) -> int:
        """The head dim the kernels see: the caller's rounded up to a multiple of 8 (16-byte rows)."""
        return -(-self.head_dim // 8) * 8

    @property
    def empty(self) -> bool:
        return self.batch * self.nheads * self.seqlen_q == 0


def normalize_window(window, causal: bool, seqlen_q: int, seqlen_k: int) -> tuple:
    """flash-attn's rules: causal forces right = 0; a side that reaches past every key is unbounded (-1)."""
    left, right = window
    if causal:
        right = 0
    if left >= seqlen_k:
        left = -1
    if right >= seqlen_q and not causal:
        right = -1
    return left, right


def mask_kind(causal: bool, window: tuple) -> str:
    return "band" if causal or window != (-1, -1) else "none"


def kernel_window(problem: Problem) -> tuple:
    """(window_left, window_right) as the kernels take them: unbounded sides become covering values."""
    left, right = problem.window
    return (problem.seqlen_k if left < 0 else left, problem.seqlen_q if right < 0 else right)


LOG2E = 1.4426950408889634


def score_constants(problem: Problem) -> dict:
    """The params fields of the score policy (cuda_src/score_mod.cuh): logits in raw units times scale_log2."""
    scale = problem.softmax_scale
    # The bias joins the raw score before the cap: scale * (s + bias / scale) = scaled score + bias.
    if problem.softcap > 0:
        return dict(scale_log2=LOG2E, softmax_scale=scale, softcap=problem.softcap,
                    softcap_scale=scale / problem.softcap, alibi_unit=1.0, bias_unit=1.0 / scale)
    return dict(scale_log2=scale * LOG2E, softmax_scale=scale, softcap=0.0, softcap_scale=0.0,
                alibi_unit=1.0 / scale, bias_unit=1.0 / scale)


def default_softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
