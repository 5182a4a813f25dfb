"""Tile configurations and the dispatcher that picks one.

Everything here is pure Python (no CuPy), so the choice of tiles is unit-tested on machines without a GPU.
The kernels receive every field of a :class:`TileConfig` as a template argument; shared-memory use is computed
by the kernel family (cupyflash.families), which mirrors the kernel's allocation exactly, and the kernel checks
the number it is given. Table entries may carry a condition on the variant (:class:`When`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .families import BY_NAME as FAMILIES_BY_NAME, FAMILIES
from .problem import Variant

#: Head dims the kernels are instantiated for; a problem's head dim is padded up to the next one (the padding
#: columns are zero-filled on load and never stored).
KERNEL_HEAD_DIMS = (32, 64, 96, 128, 160, 192, 224, 256)
MAX_HEAD_DIM = KERNEL_HEAD_DIMS[-1]

#: Shared memory the driver reserves per resident block on sm_80 and later.
RESERVED_SMEM_PER_BLOCK = 1024


@dataclass(frozen=True)
class DeviceLimits:
    """What the dispatcher needs to know about a GPU (read once per device by ``cupyflash._device``)."""

    compute_capability: int  # major * 10 + minor, e.g. 90 for an H100
    smem_per_block_optin: int  # bytes a block may use after raising its dynamic limit
    smem_per_sm: int  # bytes per multiprocessor, all resident blocks together
    sm_count: int
    name: str = ""


@dataclass(frozen=True)
class TileConfig:
    """One kernel instance's tiling: BLOCK_M query rows x BLOCK_N keys per step, WARPS warps, a STAGES-deep
    K/V ring, and the residency it is tuned for (``blocks_per_sm``, also the kernel's launch bound)."""

    family: str
    block_m: int
    block_n: int
    warps: int
    stages: int = 2
    blocks_per_sm: int = 1
    d_split: int = 1  # backward dK/dV kernel only: warps sharing key rows, each with 1/d_split of the head dim
    #: forward only: warps of ``warps`` that only copy tiles (a producer warpgroup, cuda_src/pipeline.cuh), or 0
    #: when every warp copies and computes
    producer_warps: int = 0
    #: forward with a producer only: each consumer warpgroup overlaps its softmax with its own products
    overlap: bool = False
    #: forward with a producer only: it copies by bulk tensor copies (TMA, one thread) instead of cp.async
    tma: bool = False
    #: forward with a producer only: one block an SM takes query tiles in turn (dense batches), instead of a block a
    #: query tile
    persistent: bool = False

    def __str__(self) -> str:
        split = f"/d{self.d_split}" if self.d_split != 1 else ""
        producer = (f"/p{self.producer_warps}" + "o" * self.overlap + "t" * self.tma + "r" * self.persistent
                    if self.producer_warps else "")
        return (f"{self.family}:{self.block_m}x{self.block_n}/w{self.warps}/s{self.stages}"
                f"/b{self.blocks_per_sm}{split}{producer}")


#: The variant features a table entry can avoid (When.avoid), each true of a variant when: the band mask (causal
#: or a window) is on, softcap is, ALiBi is, rows are packed (variable-length), an additive bias is (any dtype, or
#: a float32 one), a boolean mask is read in the tiles it cuts ("mask"), a boolean mask cuts no tile and only its
#: tile summary is read ("block_mask"), the backward writes dbias, float32 runs at precision "tf32" or "highest",
#: dropout is on.
FEATURES = {
    "band": lambda v: v.mask != "none",
    "softcap": lambda v: v.softcap,
    "alibi": lambda v: v.alibi,
    "packed": lambda v: v.rows == "packed",
    "bias": lambda v: v.bias != "none",
    "fp32_bias": lambda v: v.bias == "float32",
    "mask": lambda v: v.bool_mask and not v.mask_blocks,
    "block_mask": lambda v: v.mask_blocks,
    "dbias": lambda v: v.dbias,
    "tf32": lambda v: v.precision == "tf32",
    "highest": lambda v: v.precision == "highest",
    "dropout": lambda v: v.dropout,
}
#: Features of the GPU rather than the variant: "sm80", compute capability below 9.0 (ptxas allocates registers
#: for sm_80 differently from sm_90: some combinations spill on one only). Without the device's limits (listing
#: every entry a variant may ever get) they count as absent.
ARCH_FEATURES = {"sm80": lambda limits: limits.compute_capability < 90}


@dataclass(frozen=True)
class When:
    """A table entry that only serves some variants: it is skipped for a variant that has every feature of one
    of ``avoid``'s combinations ("softcap" skips it under softcap, "softcap+alibi+bias" only when all three are
    on; feature names in FEATURES and ARCH_FEATURES). Each combination is one the CPU compile check found spilling
    registers at that tile, or whose tiles do not fit; the entry's comment says which. ``max_seqlen_q`` (> 0): the
    entry serves only problems of at most that many query rows (decode-shaped calls), where a tile of fewer rows
    computes less padding; candidates() still lists it, for forced configs."""

    config: TileConfig
    avoid: tuple[str, ...] = ()
    max_seqlen_q: int = 0

    def __post_init__(self):
        known = FEATURES.keys() | ARCH_FEATURES.keys()
        unknown = {f for combo in self.avoid for f in combo.split("+")} - known
        if unknown:
            raise ValueError(f"When.avoid: unknown features {sorted(unknown)}; known: {', '.join(sorted(known))}")

    def allows(self, variant: Variant | None, limits: DeviceLimits | None = None) -> bool:
        if variant is None:
            return True

        def has(feature):
            if feature in ARCH_FEATURES:
                return limits is not None and ARCH_FEATURES[feature](limits)
            return FEATURES[feature](variant)

        return not any(all(map(has, combo.split("+"))) for combo in self.avoid)


# Combinations that cost registers wherever the softcap, ALiBi and bias or mask values are all live at once.
_HEAVY = ("softcap+alibi+bias", "softcap+alibi+mask")
# A bias's or mask's tiles (a mask is read as a bias, and mostly spills where one does).
_BIASED = ("bias", "mask")


def _c(block_m, block_n, warps, stages=2, blocks_per_sm=1, d_split=1):
    return TileConfig("mma_sm80", block_m, block_n, warps, stages, blocks_per_sm, d_split)


def _t(block_m, block_n, warps, stages=2, blocks_per_sm=1, d_split=1):
    return TileConfig("mma_tf32", block_m, block_n, warps, stages, blocks_per_sm, d_split)


def _w(block_m, block_n, stages=2, producer=False, overlap=False, tma=False, persistent=False, blocks_per_sm=1):
    """A wgmma_sm90 forward tile: block_m / 64 warpgroups of 4 warps that copy and compute (at most 168 registers a
    thread with three), or (producer) those that compute and a producer warpgroup that copies (by cp.async, or by
    bulk tensor copies: tma), the consumers overlapping their softmax with their products or not (overlap); one
    block per SM (or, a producer's small tiles, blocks_per_sm = 2: one block's start and end overlap the other's
    products), for one query tile or (persistent) one after another."""
    return TileConfig("wgmma_sm90", block_m, block_n, block_m // 16 + 4 * producer, stages, blocks_per_sm,
                      producer_warps=4 * producer, overlap=overlap, tma=tma, persistent=persistent)


def _wt(block_m, block_n, overlap=False):
    """A wgmma_tf32 forward tile (float32 read as TF32): a producer warpgroup with bulk copies and block_m / 64
    consumer warpgroups, as _w's."""
    return replace(_w(block_m, block_n, producer=True, overlap=overlap, tma=True), family="wgmma_tf32")


def _wh(block_m, block_n, overlap=False):
    """A wgmma_tf32 forward tile for float32 at "highest": a producer warpgroup whose threads copy by cp.async and
    split what they copied in hi and lo parts (flash_fwd.cu), block_m / 64 consumer warpgroups, overlapping their
    softmax with their products or not (as _w's)."""
    return replace(_w(block_m, block_n, producer=True, overlap=overlap), family="wgmma_tf32")


def _bt(block_m, block_n, warps, stages=2):
    """A wgmma_tf32 dK/dV tile: block_n / 16 warps, each 16 key rows and every query of a step for S^T and dP^T, a
    warpgroup 64 keys of dK^T and dV^T (no head-dim split of the warp grid: d_split 1); or with four warps more, a
    helper warpgroup that copies and splits the steps' tiles and adds dQ meanwhile (flash_bwd.cu HELPER)."""
    return replace(_t(block_m, block_n, warps, stages), family="wgmma_tf32")


def _entry_config(entry) -> TileConfig:
    return entry.config if isinstance(entry, When) else entry


def _entry_allows(entry, variant, limits=None) -> bool:
    return entry.allows(variant, limits) if isinstance(entry, When) else True


#: select_config's seqlen_q when the problem's length is not known: entries for short query rows are passed over.
EVERY_LENGTH = -1


def _entry_serves_rows(entry, seqlen_q: int | None) -> bool:
    """Whether the entry serves a problem of ``seqlen_q`` query rows (EVERY_LENGTH: every entry; None: unknown)."""
    limit = entry.max_seqlen_q if isinstance(entry, When) else 0
    return not limit or seqlen_q == EVERY_LENGTH or (seqlen_q is not None and seqlen_q <= limit)


# Fallback tiles for small shared memory, appended to every head dim's list: 64x32 fits 99 KB at every head
# dim, 16x16 fits 48 KB at every head dim. Slow, but never "no kernel".
_SMALL = (_c(64, 32, 4), _c(16, 16, 1))
# float32: 16x16/1 warp up to head dim 128; above it one warp cannot cover a row of 16-byte chunks, 32x16/2 warps.
_TF32_SMALL, _TF32_WIDE_SMALL = (_t(16, 16, 1),), (_t(32, 16, 2),)

# A producer warpgroup (cuda_src/pipeline.cuh) copies K and V only: a bias's or mask's tiles take plain stores,
# which its barriers do not publish, and dropout spills the overlapped consumers at 128 x 128 (compile check).
_WS_AVOID = ("bias", "mask", "block_mask", "dropout")
# Bulk tensor copies take dense and packed rows (a box at an entry's end reads the next entry's first rows: the
# kernel hides those keys and zeroes their values, cuda_src/flash_fwd.cu: the producer's thread).
_WS_TMA_AVOID = _WS_AVOID
# With bulk copies the producer's one thread also walks a block-sparse mask's tile summary (a stage's walk entry
# rides beside its key tile, cuda_src/flash_fwd.cu): tiles that divide the mask's blocks take those.
_WS_TMA_BLOCKS_AVOID = tuple(f for f in _WS_TMA_AVOID if f != "block_mask")
# Bulk copies also bring a 16-bit additive bias's tiles, counted with the key tiles (cuda_src/bulk_bias.cuh), on the
# tiles whose stages fit a bias tile beside theirs in 227 KB and whose consumers hold its values without spilling
# (sm_90a compile check of every bias pick): at 64 the lead (187 KB; not with softcap, which spills it: 128x128
# then; bias.cuh widen_bias_pair keeps the others free of spills) and the decode tile, at 128 the lead (225 KB;
# 128x128 without overlap where the lead spills: the band mask with softcap, 4-16 bytes). A boolean mask read in
# the tiles it cuts comes the same way on 128-key tiles (a byte a pair, 128-key panels: 128x128 at 64, the lead at
# 128), its tile summary walked by the producer's thread. A float32 bias (twice the bytes), a bias with a boolean
# mask, and persistent tiles keep the all-warps tiles.
_WS_TMA_BIAS_AVOID = (tuple(f for f in _WS_TMA_AVOID if f not in ("bias", "mask"))
                      + ("fp32_bias", "bias+mask", "bias+block_mask"))
_WS_TMA_BIAS_BLOCKS_AVOID = tuple(f for f in _WS_TMA_BIAS_AVOID if f != "block_mask")

#: Forward candidates per kernel head dim, best first. Comments give the measurement or reason behind the
#: leading entry; later entries are what the dispatcher falls back to when shared memory is smaller.
FWD_TABLE: dict[tuple[str, int], tuple[TileConfig, ...]] = {
    # wgmma (sm_90a), warpgroups of 64 query rows. H100, bf16, 16k tokens, TFLOP/s at seqlen 2048 / 8192,
    # non-causal then causal (.prof sweeps, 2026-11-26/27; "p": a producer warpgroup and two consumers, "o": the
    # consumers overlap softmax and products). At 64: 128x192p 369 / 421, 280 / 403; 128x192o 359 / 424, 265 / 371;
    # 128x128p 357 / 415, 286 / 356; 192x192 (all warps copy) 344 / 401, 277 / 352. At 128: 128x128o 542 / 598,
    # 427 / 515; 128x128p 511 / 554, 411 / 527; 128x176p 526 / 580, 385 / 478; 192x128 469 / 511, 350 / 424. At
    # 192: 128x96p 467 / 506, 372 / 463; 128x96o 457 / 499, 272 / 452; 128x64p 434 / 466; 128x96 426 / 473. At
    # 256: 128x80p 609 / 633, 460 / 562; 128x64p 590 / 634, 460 / 559; 128x64o 573 / 622; 128x64 472 / 505.
    # Bulk tensor copies ("t", TMA; one probe run, same machine, cp.async -> TMA, 2k / 8k / 16k non-causal): at 64
    # 128x192p 378 / 453 / 430 -> 128x192pot 372 / 458 / 435 (causal 285 / 360 / 397 -> 301 / 411 / 464; 128x192pt
    # 351 / 431 / 433); at 128 128x128po 563 / 618 / 584 -> 625 / 694 / 640 (causal 442 / 519 / 545 -> 483 / 578 /
    # 646; 128x176pot 529 / 648 / 642); at 192 128x96p 453 / 493 / 472 -> 616 / 681 / 627 (128x64pt 591 / 640 /
    # 585); at 256 128x80p 609 / 664 / 615 -> 642 / 703 / 647, 128x64pot 697 / 745 / 736. Packed rows keep cp.async.
    # A second probe (another machine): at 64 192x128pt (three consumers) 459 / 538 / 512, causal 331 / 430 / 481,
    # against 128x192pot's 394 / 481 / 469, 302 / 423 / 478; at 192 128x96pot 669 / 747 / 703 against 128x96pt's
    # 615 / 690 / 682. Leading since the fifteenth session (bench, 2k-16k / cuDNN medians: 64 1.04 / 0.96
    # non-causal / causal, 192 1.07 / 1.09; docs/performance.md).
    # Persistent blocks ("r", one block an SM taking query tiles in turn) close each list, for forced configs: the
    # same tile launched one block a query tile ran faster (persistent / lead 0.89-1.05 non-causal, 0.55-0.95
    # causal, docs/measurements/2026-11-27-h100-persistent-probe.md).
    # Producer tiles avoid biases, masks and dropout (_WS_AVOID): those take the all-warps tiles after them. Three
    # warpgroups that copy and compute cap a thread at 168 registers: the combinations that spill them (picks
    # sweep, compile check) take two. Dropout takes at most 128 keys a tile (dropout.cuh KeptBits). A block-sparse
    # mask takes tiles of 128 rows, which divide the usual power-of-two blocks (its summary is read only where
    # tiles divide them). 128x64 serves what the larger tiles' shared memory does not fit (a bias's and a mask's
    # tiles beside them). At 64 it also takes boolean masks read in their tiles: tiles that divide a mask's
    # power-of-two blocks skip its empty ones (H100, bf16, forced tiles, time / plain at 2k / 8k, half of the
    # 128x128 blocks empty: 192x192 1.56 / 1.71, 192x128 1.20 / 1.27, 128x128 0.84 / 0.83, 128x64 0.77 / 0.79; a
    # dense random mask with no empty tile: 1.78 / 1.79 on 192x192, 1.79 / 2.02 on 128x64;
    # docs/measurements/2026-11-27-h100-mask-tile-probe.py). No small-memory fallbacks: every sm_90 GPU has 227 KB,
    # and a variant with no entry here runs on mma_sm80.
    # Decode-shaped calls (at most 64 query rows): one consumer warpgroup of 64 rows and a deeper ring. The
    # 192-row lead computes 192 rows per key tile for one query, work that outlasts the key tile's copy at head
    # dim 64 (H100, sixteenth session, K/V bandwidth where no split is needed: 2810-3083 GB/s against the lead's
    # 2501-2826, cuDNN 2891-3050). At head dim 128 the same tile lost to the lead (2905-3034 against 2987-3126):
    # no decode entry there.
    ("wgmma_sm90", 64): (When(_w(64, 128, stages=4, producer=True, tma=True), avoid=_WS_TMA_BIAS_AVOID,
                              max_seqlen_q=64),
                         # Short rows (at most 2048 query rows): 64x128 with overlapped consumers at two blocks an
                         # SM, where a block has few key tiles to visit and its fixed cost (start, Q, output) is a
                         # large share; the other block's products run meanwhile. H100, bf16, 16k tokens, against
                         # the lead (twentieth session, 2026-11-27-mask-overlap-probe.py; the eighteenth's
                         # two-blocks probe): non-causal 1k 1.13-1.18x its speed, 2k 1.00-1.01; causal 2k 1.06.
                         # Biases, masks read in their tiles, softcap and ALiBi keep their tiles (not measured on
                         # this one). Block-sparse masks run faster on it too (half of the 128x128 blocks empty:
                         # 0.55-0.57x plain at 1k, 0.60-0.61 at 2k, against 128x128's 0.65-0.67).
                         When(_w(64, 128, producer=True, overlap=True, tma=True, blocks_per_sm=2),
                              avoid=_WS_TMA_BLOCKS_AVOID + ("softcap", "alibi"), max_seqlen_q=2048),
                         # 16-bit biases on the lead, but not with softcap (8-20 bytes of spill, sm_90a)
                         When(_w(192, 128, producer=True, tma=True),
                              avoid=_WS_TMA_BIAS_AVOID + ("mask", "softcap+bias")),
                         When(_w(128, 192, producer=True, overlap=True, tma=True), avoid=_WS_TMA_AVOID),
                         When(_w(128, 128, producer=True, tma=True), avoid=_WS_TMA_BIAS_BLOCKS_AVOID),
                         When(_w(128, 192, producer=True), avoid=_WS_AVOID),
                         When(_w(192, 192), avoid=("dropout", "packed", "softcap", "block_mask", "mask")),
                         When(_w(192, 128), avoid=("dropout", "block_mask", "mask")),
                         When(_w(128, 128), avoid=("mask",)), _w(128, 64),
                         When(_w(128, 128, producer=True), avoid=_WS_AVOID),
                         When(_w(192, 128, producer=True, tma=True, persistent=True), avoid=_WS_TMA_AVOID)),
    ("wgmma_sm90", 128): (When(_w(128, 128, producer=True, overlap=True, tma=True),
                               avoid=_WS_TMA_BIAS_BLOCKS_AVOID + ("band+softcap+bias",)),
                          When(_w(128, 128, producer=True, tma=True), avoid=_WS_TMA_BIAS_AVOID),
                          When(_w(128, 128, producer=True, overlap=True), avoid=_WS_AVOID),
                          When(_w(192, 128), avoid=("softcap+alibi+packed", "dropout", "block_mask")),
                          _w(128, 128), _w(128, 64), When(_w(128, 128, producer=True), avoid=_WS_AVOID),
                          When(_w(128, 128, producer=True, overlap=True, tma=True, persistent=True),
                               avoid=_WS_TMA_AVOID)),
    ("wgmma_sm90", 192): (When(_w(128, 96, producer=True, overlap=True, tma=True), avoid=_WS_TMA_AVOID),
                          When(_w(128, 96, producer=True), avoid=_WS_AVOID), _w(128, 96), _w(128, 64),
                          When(_w(128, 96, producer=True, overlap=True, tma=True, persistent=True),
                               avoid=_WS_TMA_AVOID)),
    ("wgmma_sm90", 256): (When(_w(128, 64, producer=True, overlap=True, tma=True), avoid=_WS_TMA_AVOID),
                          When(_w(128, 80, producer=True), avoid=_WS_AVOID), _w(128, 64),
                          When(_w(128, 64, producer=True, overlap=True), avoid=_WS_AVOID),
                          When(_w(128, 64, producer=True, overlap=True, tma=True, persistent=True),
                               avoid=_WS_TMA_AVOID)),
    # float32 at precision "tf32" on TF32 wgmma (the operands staged: rounded, V transposed; cupyflash/_launch.py
    # Tf32Staging): 32-bit tiles take twice the shared memory, 128x128 at 64 (160 KB), 128x64 at 128 (193 KB). H100,
    # 16k tokens, against mma_tf32's forward (twenty-first session, 2026-11-29-tf32-wgmma-forward-probe.py): 1.04-1.74x
    # its speed at 64 non-causal, 1.46-2.31x at 128, 0.81x at 64 1k causal (the staging: half of the call at 1k).
    # The overlapped consumers come second, not measured (for the tuner).
    # "highest" (three passes a product on split tiles: twice the shared memory): 128x64 at 64, 64x32 (one consumer
    # warpgroup) at 128, whose Q tile in two parts takes 64 KB. H100, 16k tokens, 1k / 4k: 79-92 TFLOP/s at 64
    # (mma_tf32 56-59), 54-61 at 128 (mma_tf32 42 in the same session's bench).
    ("wgmma_tf32", 64): (When(_wt(128, 128), avoid=("highest",)),
                         When(_wt(128, 128, overlap=True), avoid=("highest",)), When(_wh(128, 64), avoid=("tf32",))),
    ("wgmma_tf32", 128): (When(_wt(128, 64), avoid=("highest",)),
                          When(_wt(128, 64, overlap=True), avoid=("highest",)), When(_wh(64, 32), avoid=("tf32",))),
    # H100, bf16, 16k tokens, seqlen 4096 (python -m cupyflash.tune, 2026-11-25): 128x128 ahead of 128x64 by
    # 1-10% at head dims 32 and 64.
    # At head dim 64, 128x128 spills with softcap and the band mask (compile check): softcap runs 128x64.
    # With a bias (its tile read into S) the 128-row tiles below spill where marked: those variants take the next.
    # A float32 bias with a mask spills 128x64 at 64 and 128x32 at 128 on sm_80 (compile check): it runs 64x32 and
    # 64x64 there. At 64 the dispatcher's picks also spill (python -m cupyflash._nvrtc --picks sm_90, sm_80) for
    # ALiBi with packed rows at 128x128 and for a float32 bias with softcap at 128x64 (those run 64x32); on sm_80
    # only, for a float32 bias with the band mask at 128x64 (8 bytes; it runs 64x32 there). A block-sparse mask
    # (its walk's few registers beside the plain loop) spills 128x128 with the band mask and ALiBi (sm_90 picks).
    # Dropout spills 128x128 at 32 and 64 (its kept bits and generator beside a 128-key score fragment, compile
    # check): it runs 128x64.
    ("mma_sm80", 32): (When(_c(128, 128, 4, blocks_per_sm=2), avoid=_BIASED + ("dropout",)),
                       _c(128, 64, 4, blocks_per_sm=2)) + _SMALL,
    ("mma_sm80", 64): (When(_c(128, 128, 4, blocks_per_sm=2),
                            avoid=("softcap", "alibi+packed", "band+alibi+block_mask", "dropout") + _BIASED),
                       When(_c(128, 64, 4, blocks_per_sm=2),
                            avoid=_HEAVY + ("fp32_bias+mask", "softcap+fp32_bias", "sm80+band+fp32_bias"))) + _SMALL,
    # 128x64 ahead of 128x32 by ~10%. The band mask with ALiBi and packed rows spills it on sm_90 (picks sweep), so
    # does softcap with a block-sparse mask (sm_90 with the band mask, sm_80 without), and dropout with packed rows
    # and the band mask (sm_90 picks sweep with dropout).
    ("mma_sm80", 96): (When(_c(128, 64, 4, blocks_per_sm=2),
                            avoid=("band+alibi+packed", "softcap+block_mask", "packed+dropout") + _BIASED),
                       _c(128, 32, 4, blocks_per_sm=2)) + _SMALL,
    # 128x32/4 warps ahead of 64x64 and 128x64/8 warps by 10-30%; 128x64/4 warps (FA2's choice) spills when
    # causal on sm_90 and measured no faster (323 vs 316 at 2k, 335 vs 346 at 4k), so it is left out.
    # (A float32 bias with a block-sparse mask spills 128x32 on sm_80 only, and so does the band mask with packed
    # rows and dropout: 4 bytes since the kernels clamp packed offsets, python -m cupyflash._nvrtc --picks.)
    ("mma_sm80", 128): (When(_c(128, 32, 4, blocks_per_sm=2),
                             avoid=_HEAVY + ("fp32_bias+mask", "sm80+fp32_bias+block_mask",
                                             "sm80+band+packed+dropout")),
                        _c(64, 64, 4, blocks_per_sm=2), _c(128, 64, 8)) + _SMALL,
    # 128x64/8 warps and 64x64/4 warps within 5% of each other at 160; 128x64/8 ahead by 10-25% above.
    ("mma_sm80", 160): (_c(128, 64, 8), _c(64, 64, 4)) + _SMALL,
    ("mma_sm80", 192): (_c(128, 64, 8), _c(64, 64, 4)) + _SMALL,
    ("mma_sm80", 224): (_c(128, 64, 8), _c(64, 64, 4)) + _SMALL,
    ("mma_sm80", 256): (_c(128, 64, 8), _c(64, 64, 4)) + _SMALL,
    # float32 (TF32 products): tiles of 4-byte elements; first choices by shared memory (227 KB on the H100). H100,
    # seqlen 4096, 16k tokens ("highest" / "tf32" TFLOP/s): at 64, 128x64 57.7 / 144.9, 64x64 43.2 / 106.1; at 128,
    # 128x32 47.3 / 129.3, 64x32 43.5 / 105.6, 64x64 35.2 / 83.9. Above 128 not measured.
    **{("mma_tf32", kd): (_t(128, 64, 4, blocks_per_sm=2), _t(64, 64, 4)) + _TF32_SMALL for kd in (32, 64)},
    # "highest" sums P V one key tile at a time (mma_tf32.cuh SUM_PER_TILE): a second accumulator that spills 128x32
    # at 96 and 128 (compile check); it runs 64x32 (ahead of 64x64 before that change).
    **{("mma_tf32", kd): (When(_t(128, 32, 4), avoid=("highest",)), When(_t(64, 64, 4), avoid=("highest",)),
                          _t(64, 32, 4)) + _TF32_SMALL for kd in (96, 128)},
    **{("mma_tf32", kd): (_t(64, 32, 4),) + _TF32_WIDE_SMALL for kd in (160, 192, 224, 256)},
}


# Backward, dK/dV kernel (flash_bwd_dkdv_kernel): block_n keys per block, block_m queries per step. Warps form a
# (warps / d_split) x d_split grid: each owns block_n / (warps / d_split) key rows (32 in the leading entries) and
# 1/d_split of the step's queries (for S^T, dP^T) and of the head dim (for dK, dV); the head dim split keeps dK and
# dV within the registers. 32x16/w2 fits 99 KB at every head dim, 32x64/w4 does up to head dim 128.
# H100, bf16, 16k tokens, seqlen 4096 (scratch sweep, 2026-11-25), TFLOP/s with atomic dQ: head dim 32: 128x128
# 181, 64x64/b2 174, 64x128 160; 64: 128x128 236, 64x128 208, 64x64/b2 209; 96: 64x128 229, 64x64/b2 204;
# 128: 64x128 254, 32x128 217. At 160, 64x128 spills.
_BWD_SMALL = (_c(32, 16, 2, d_split=2),)
_TF32_BWD_SMALL = (_t(32, 16, 2, d_split=2),)
_BWD_96_AVOID = ("dbias", "fp32_bias+mask", "sm80+softcap+fp32_bias+block_mask", "sm80+dropout",
                 "softcap+alibi+dropout")
_BWD_MID = (_c(32, 64, 4, d_split=2),)
# The 8-warp float32 tiles of "highest" serve plain scores, the band mask, softcap and ALiBi only (compile-checked).
_TF32_BWD_WIDE_AVOID = ("bias", "mask", "block_mask", "dropout", "packed")
# float32 at head dims 32 and 64, 96 and 128 (BWD_TABLE's comment)
_TF32_BWD_NARROW = (When(_t(64, 64, 4, d_split=2), avoid=("tf32",)), _t(32, 64, 4, d_split=2)) + _TF32_BWD_SMALL
_TF32_BWD_MID = (When(_t(32, 64, 4, d_split=2), avoid=("block_mask+dbias", "softcap+alibi+packed", "highest")),
                 _t(32, 32, 4, d_split=2)) + _TF32_BWD_SMALL
BWD_TABLE: dict[tuple[str, int], tuple[TileConfig, ...]] = {
    # With a bias, 128x128 does not fit 227 KB (and spills): biased variants take the next entry. A boolean mask's
    # tiles (a byte per pair) fit. At 64, packed rows with the band mask and softcap spill it on sm_90 (picks sweep);
    # so does dropout at 32 and 64 (compile check), and at 64x64 with softcap, ALiBi, a bias and dropout (picks).
    **{("mma_sm80", kd): (When(_c(128, 128, 8, d_split=2),
                               avoid=("bias", "dropout") + (("band+softcap+packed",) if kd == 64 else ())),
                          When(_c(64, 64, 4, blocks_per_sm=2, d_split=2), avoid=("softcap+alibi+bias+dropout",)),
                          _c(64, 128, 8, d_split=2)) + _BWD_MID + _BWD_SMALL
       for kd in (32, 64)},
    # With dbias both spill at head dim 96 (compile check): it runs 32x64. So does a float32 bias with a mask (by 4
    # bytes on sm_90), and dropout on sm_80 (with softcap, ALiBi and packed rows, 8 bytes).
    # With softcap, a float32 bias and a block-sparse mask 64x64 spills on sm_80 only (picks sweep).
    ("mma_sm80", 96): (When(_c(64, 128, 8, d_split=2), avoid=_BWD_96_AVOID),
                       When(_c(64, 64, 4, blocks_per_sm=2, d_split=2), avoid=_BWD_96_AVOID))
    + _BWD_MID + _BWD_SMALL,
    # Packed rows and biases spill at 64x128 (compile check): they run 32x128. Boolean masks do not, except with the
    # band mask and softcap (sm_90 picks sweep); nor does dropout, except with ALiBi (compile check, picks sweep).
    ("mma_sm80", 128): (When(_c(64, 128, 8, d_split=2),
                             avoid=("packed", "bias", "band+softcap+mask", "alibi+dropout")),
                        _c(32, 128, 8, d_split=2))
    + _BWD_MID
    + _BWD_SMALL,
    ("mma_sm80", 160): (_c(64, 64, 8, d_split=2),) + _BWD_SMALL,
    ("mma_sm80", 192): (_c(64, 64, 8, d_split=4),) + _BWD_SMALL,
    ("mma_sm80", 224): (_c(64, 64, 8, d_split=2),) + _BWD_SMALL,
    ("mma_sm80", 256): (_c(64, 64, 8, d_split=4),) + _BWD_SMALL,
    # float32: first choices by shared memory. 32x16/w2 fits 99 KB up to head dim 128. Each warp holds dK and dV
    # for key_tiles x head_dim / 2 columns: 32x64 spills from head dim 160 (compile check), and at 128 with a
    # block-sparse mask and dbias, or softcap, ALiBi and packed rows: those run 32x32. H100, seqlen 4096, 16k
    # tokens, atomic dQ (docs/performance.md, tenth session): at 64, 64x64 39.4 TFLOP/s and 32x64 38.2 "highest",
    # 86.0 and 97.9 "tf32" (which takes 32x64); at 128, 32x64 37.0 / 82.3 ahead of 32x32 35.1 / 71.9. "highest"
    # sums dK and dV one query tile at a time (mma_tf32.cuh SUM_PER_TILE), which spills 32x64 at 128: 32x32 there.
    # "highest" at 64 (twenty-second session, 2026-11-30-h100-s22-fp32-bwd-depth-sweep.md): 32x128 with 8 warps
    # 40.8-42.8 TFLOP/s against 64x64's 37.9-39.7 (1k-4k); a third stage adds nothing (either tile, either
    # precision). Compile-checked as the 128 entry below, with the same variants; at 32 the dQ product cannot split
    # 32 columns over 8 warps in n16 pairs.
    ("mma_tf32", 32): _TF32_BWD_NARROW,
    ("mma_tf32", 64): (When(_t(32, 128, 8, d_split=2), avoid=("tf32",) + _TF32_BWD_WIDE_AVOID),) + _TF32_BWD_NARROW,
    ("mma_tf32", 96): _TF32_BWD_MID,
    # "highest" at 128 (twenty-second session, 2026-11-30-h100-s22-fp32-bwd-tile-sweep.md, atomic dQ, 1k-4k): 16x128
    # with 8 warps (each warp 16 key rows and the whole head dim of dK and dV) 37.3-39.1 TFLOP/s against 32x32's
    # 34.4-35.5; at "tf32" it runs 73-88 against 32x64's 77-95. Compile-checked (sm_90, no spills) with the band mask,
    # softcap and ALiBi; biases, masks, dropout and packed rows keep 32x32 (not compiled on it). Its 190 KB do not
    # fit an A100. At 96 the dQ product cannot split 96 columns over 8 warps in n16 pairs.
    ("mma_tf32", 128): (When(_t(16, 128, 8), avoid=("tf32",) + _TF32_BWD_WIDE_AVOID),)
    + _TF32_BWD_MID,
    # "tf32" on wgmma (families.py WgmmaTf32Family): a warp owns 16 key rows and every query of a step for S^T and
    # dP^T, a warpgroup 64 keys of dK^T and dV^T. H100, backward TFLOP/s at 1k / 2k / 4k (twenty-third session,
    # docs/measurements/2026-12-01-h100-s23-tf32-bwd-probe-*.md): at 64, 32x64/w4 106 / 120 / 125, 64x64/w4
    # 102 / 119 / 127, 32x128/w8 102 / 116 / 121; at 128, 32x128/w8 (two warpgroups, 226 KB) 120 / 138 / 154 against
    # 32x64/w4's 96 / 110 / 119.
    # "highest" at 64 with a helper warpgroup (four warps more: the step's loads, splits and dQ beside the products).
    ("wgmma_tf32", 64): (When(_bt(32, 64, 8), avoid=("tf32",)), _bt(32, 64, 4)),
    # "highest" at 128: split tiles fit at 16 queries a step (226 KB), one warpgroup; H100, twenty-fifth session
    # (2026-11-27-highest-bwd-128-probe.py): 1.09-1.20x mma_tf32's 16x128/w8 at 1k-4k, dK and dV errors 2-3x lower.
    # With a helper warpgroup (16x64, 8 warps: P^T and dS^T in the 64-byte swizzle make room for its dS tiles):
    # 1.22-1.37x the 4-warp tile at 1k-8k, causal too (H100, twenty-seventh session, 2026-11-27-h100-s27-*).
    ("wgmma_tf32", 128): (_bt(32, 128, 8), _bt(32, 64, 4), When(_bt(16, 64, 8), avoid=("tf32",)),
                          When(_bt(16, 64, 4), avoid=("tf32",))),
    **{("mma_tf32", kd): (_t(32, 32, 4, d_split=2),) + _TF32_BWD_SMALL for kd in (160, 192, 224)},
    # At 256 every tile spills with softcap, ALiBi, a float32 bias with its gradient and a mask at once (48 bytes,
    # compile check: dK and dV alone take 128 registers a thread); that combination has no kernel (NoConfigFits).
    ("mma_tf32", 256): tuple(When(c, avoid=("softcap+alibi+fp32_bias+mask+dbias",))
                             for c in (_t(32, 32, 4, d_split=2),) + _TF32_BWD_SMALL),
}

# Backward, dQ kernel (flash_bwd_dq_kernel): the forward's shape, block_m queries per block.
_BWD_DQ_SMALL = (_c(16, 16, 1),)
# H100, bf16, 16k tokens (scratch sweep 2026-11-25): at head dim 128, 128x32/4 warps led 64x64 by 10% (226 vs 204
# TFLOP/s backward at 2k, 252 vs 231 at 8k); at 64, 128x64/4 warps led 64x64 by 7%.
# At head dim 64, 128x64 spills with softcap and the band mask, and with a bias, on sm_80 (compile check): those
# run 64x64 there; so does dropout on sm_80 (4 bytes).
BWD_DQ_TABLE: dict[tuple[str, int], tuple[TileConfig, ...]] = {
    ("mma_sm80", 32): (When(_c(128, 64, 4, blocks_per_sm=2), avoid=_HEAVY), _c(64, 64, 4, blocks_per_sm=2))
    + _BWD_DQ_SMALL,
    # (The band mask with ALiBi and packed rows spills 128x64 on sm_80 by 8 bytes since the kernels clamp packed
    # offsets: python -m cupyflash._nvrtc --picks.)
    ("mma_sm80", 64): (When(_c(128, 64, 4, blocks_per_sm=2),
                            avoid=("softcap", "sm80+dropout", "sm80+band+alibi+packed") + _BIASED),
                       _c(64, 64, 4, blocks_per_sm=2)) + _BWD_DQ_SMALL,
    # The band mask with a bias and softcap or ALiBi spills 128x32 on sm_80 (picks sweep): those run 64x64, on the
    # H100 too (made general when the CI compile set compiled the H100's picks for sm_80; each arch compiles its
    # own picks since the ninth session, so this could become sm_80 only after a GPU run of the H100's 128x32).
    # So do softcap or ALiBi with a bias and a block-sparse mask, also without the band mask, and ALiBi with a
    # float32 bias (sm_80 only; the last found by the ninth session's sweep, present before it).
    ("mma_sm80", 96): (When(_c(128, 32, 4, blocks_per_sm=2),
                            avoid=("band+softcap+bias", "band+alibi+bias", "sm80+softcap+bias+block_mask",
                                   "sm80+alibi+bias+block_mask", "sm80+alibi+fp32_bias", "softcap+alibi+bias+dropout")),
                       _c(64, 64, 4, blocks_per_sm=2)) + _BWD_DQ_SMALL,
    # Packed rows, boolean masks, a float32 bias, and a bias with softcap or ALiBi spill at 128x32 here (compile
    # check and sm_90 picks sweep): they run 64x64. A 16-bit bias alone stays.
    ("mma_sm80", 128): (When(_c(128, 32, 4, blocks_per_sm=2),
                             avoid=("packed", "mask", "fp32_bias", "softcap+bias", "alibi+bias")),
                        _c(64, 64, 4, blocks_per_sm=2))
    + _BWD_DQ_SMALL,
    # At 256, the band mask with a float32 bias and a block-sparse mask spills 64x32 by 4 bytes on sm_80 only (picks
    # sweep), and so does the band mask with softcap, ALiBi and a bias since bias tiles take the K/V copy (12
    # bytes): 16x16 there.
    **{("mma_sm80", kd): (When(_c(64, 32, 4), avoid=("sm80+band+fp32_bias+block_mask", "sm80+band+softcap+alibi+bias")
                               if kd == 256 else ()),)
       + _BWD_DQ_SMALL for kd in (160, 192, 224, 256)},
    # float32: first choices by shared memory, not measured yet. A block-sparse mask with a bias spills 64x32 at
    # 128 and 32x32 at 160 by a few bytes (compile check): those take the next entry. So, at 256, does the band mask
    # with softcap, ALiBi, packed rows and dropout (8 bytes on sm_90, since "tf32" operands are no longer rounded as
    # they load; the only one of the float32 picks with softcap and ALiBi, with and without biases, sm_80 and sm_90).
    **{("mma_tf32", kd): (_t(64, 64, 4, blocks_per_sm=2), _t(64, 32, 4)) + _TF32_SMALL for kd in (32, 64)},
    **{("mma_tf32", kd): (When(_t(64, 32, 4), avoid=("bias+block_mask",)),
                          When(_t(32, 32, 2), avoid=("bias+block_mask",))) + _TF32_SMALL for kd in (96, 128)},
    **{("mma_tf32", kd): (When(_t(32, 32, 2), avoid=("bias+block_mask",)
                               + (("band+softcap+alibi+packed+dropout",) if kd == 256 else ())),) + _TF32_WIDE_SMALL
       for kd in (160, 192, 224, 256)},
}

#: Whether dQ goes through fp32 atomics in the dK/dV kernel (True) or through the separate dQ kernel (False), when
#: the caller does not ask for determinism and the problem is large enough (see use_atomic_dq). H100, same sweep,
#: atomic vs separate: 254 vs 250 TFLOP/s at head dim 128 (271 vs 246 at seqlen 8192), 236 vs 230 at 64, 191 vs 178
#: at 256; the separate kernel led only at 192 (190 vs 179) and tied at 96 and 160.
BWD_ATOMIC_DQ: dict[tuple[str, int], bool] = {
    **{("mma_sm80", kd): kd != 192 for kd in KERNEL_HEAD_DIMS},
    **{("mma_tf32", kd): True for kd in KERNEL_HEAD_DIMS},  # float32: ATOMIC_DQ_MIN_PAIRS
    **{("wgmma_tf32", kd): True for kd in (64, 128)},
}

#: Split-KV (cuda_src/split_kv.cuh): a forward whose grid leaves at least half the GPU's block slots idle spreads
#: each query tile's key tiles over several blocks, whose partial results a second kernel merges: as many as one
#: round of the slots holds. Each split walks at least SPLIT_MIN_KEY_TILES key tiles (its partial's write and merge
#: cost about as much as one), and at most SPLIT_MAX blocks share one. H100, bf16, head dim 128, one query, K/V read
#: in GB/s by splits (docs/performance.md, twelfth session): 8 heads x 131072 keys: 1 176, 8 1364, 16 2582, 33 2426,
#: 66 2229; 32 x 8192: 1 683, 4 2204, 8 2043, 9 2011; 2 batches x 8 x 32768: 8 2422, 16 2288; 64 x 4096: 2 2205,
#: 4 2101; 2 x 131072: 33 1218, 66 1821, 128 1404. One round (16, 4, 8, 2, 66) was the best of each. With 128
#: blocks (4 x 32 heads, 16 x 8) 3 splits read 2-9% slower than none.
SPLIT_MIN_KEY_TILES = 4
SPLIT_MAX = 128


def forward_splits(limits: DeviceLimits, blocks: int, key_tiles: int, blocks_per_sm: int = 1) -> int:
    """How many blocks share each query tile's keys in the forward: as many as one round of the GPU's resident
    slots (``blocks_per_sm`` per SM) holds, as far as ``key_tiles`` allows; 1 when the grid's ``blocks`` fill more
    than half of them."""
    slots = limits.sm_count * blocks_per_sm
    return max(1, min(slots // blocks, key_tiles // SPLIT_MIN_KEY_TILES, SPLIT_MAX))


#: Below this many visible (query, key) pairs per head, the separate dQ kernel is used even where the table says
#: atomic, by family. H100, bf16 and fp16, head dims 64 and 128 (python -m cupyflash.bench --impls cupyflash
#: cupyflash-det, 2026-11-25): atomic was 4-8% slower at seqlen 512 and causal 1024-2048, within 1% at non-causal
#: 1024 and causal 2048, 3-14% faster from non-causal 2048 and causal 4096 up. float32, where the dQ kernel's
#: recomputed products (S and dP: three of its seven) cost more against the atomics' traffic: atomic faster at every
#: size measured, from 1024 x 1024 causal (H100, head dims 64 and 128, seqlen 1k-2k, causal and not: "tf32" 1.04-1.15x,
#: "highest" 1.13-1.47x; docs/measurements/2026-11-29-fp32-atomic-dq-probe.py); smaller sizes not measured.
ATOMIC_DQ_MIN_PAIRS = {"mma_sm80": 2048 * 2048, "mma_tf32": 1024 * 1024 // 2, "wgmma_tf32": 1024 * 1024 // 2}


def use_atomic_dq(limits: DeviceLimits, head_dim: int, seqlen_q: int, seqlen_k: int, causal: bool,
                  variant: Variant | None = None) -> bool:
    """The default dQ strategy of a non-deterministic backward: atomics for large problems where the table says so."""
    pairs = seqlen_q * seqlen_k // (2 if causal else 1)
    family = family_for(limits, variant, "bwd", head_dim).name
    return BWD_ATOMIC_DQ[(family, kernel_head_dim(head_dim))] and pairs >= ATOMIC_DQ_MIN_PAIRS[family]


#: Backward with grouped-query attention: one dK/dV block per (key tile, K/V head) walks all the group's query
#: heads (query tiles x heads steps), so the grid shrinks by the group size and blocks get longer: the last wave's
#: long blocks then run alone, and causal blocks are unequal (a key tile near the end sees few queries). The group
#: is split over blocks that each sum their share into fp32 partials, which a second kernel adds in a fixed order
#: (deterministic; the partials cost a write and a read of dK and dV per split). H100, bf16, 16k tokens, hidden
#: 2048, head dims 64 and 128, seqlens 2048 and 8192, causal and not, GQA 4:1 and MQA, splits 1, 2, 4, 8
#: (docs/measurements/2026-11-26-h100-gqa-splits.md): the fastest split kept a block's walk within about 512 steps
#: without a causal mask and 128 with one, and left no SM idle; this rule's choice was the fastest or within 1% of
#: it in 10 of the 14 measured cases (3.2% off at most). Splitting whole groups (the earlier rule) was up to 6.5%
#: slower at GQA 4:1.
KV_SPLIT_MAX_STEPS = {False: 512, True: 128}  # by causal (the band mask)


def kv_splits(limits: DeviceLimits, blocks: int, heads_per_kv: int, query_tiles: int = 1, band: bool = False) -> int:
    """How many blocks share one K/V head's query heads in the dK/dV kernel: the smallest divisor of
    ``heads_per_kv`` that gives every SM a block (``blocks`` per split) and keeps each block's walk (``query_tiles``
    per query head) within KV_SPLIT_MAX_STEPS; all of them if none does."""
    for splits in range(1, heads_per_kv + 1):
        if (heads_per_kv % splits == 0 and blocks * splits >= limits.sm_count
                and query_tiles * heads_per_kv // splits <= KV_SPLIT_MAX_STEPS[band]):
            return splits
    return heads_per_kv


TABLES = {"fwd": FWD_TABLE, "bwd": BWD_TABLE, "bwd_dq": BWD_DQ_TABLE}


def row_lengths(kind: str) -> tuple:
    """The query-row counts whose picks cover every entry of ``kind``'s table: None (a long or unknown length) and
    each entry's When.max_seqlen_q (precompile and the compile check build the picks of each)."""
    limits = {e.max_seqlen_q for entries in TABLES[kind].values() for e in entries
              if isinstance(e, When) and e.max_seqlen_q}
    return (None, *sorted(limits))
# Per kind, the entries that exist only so small-memory GPUs get a kernel at all.
_FALLBACKS = {"fwd": set(_SMALL + _TF32_SMALL + _TF32_WIDE_SMALL),
              "bwd": set(_BWD_MID + _BWD_SMALL + _TF32_BWD_SMALL),
              "bwd_dq": set(map(_entry_config, _BWD_DQ_SMALL + _TF32_SMALL + _TF32_WIDE_SMALL))}


class NoConfigFits(ValueError):
    """No candidate tile configuration fits the device."""


def kernel_head_dim(head_dim: int) -> int:
    """The instantiated head dim a problem of ``head_dim`` runs on (the next one up)."""
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head dim must be a positive int; got {head_dim!r}")
    for d in KERNEL_HEAD_DIMS:
        if head_dim <= d:
            return d
    raise ValueError(f"head dim must be at most {MAX_HEAD_DIM}, got {head_dim}")


def family_for(limits: DeviceLimits, variant: Variant | None = None, kind: str | None = None,
               head_dim: int | None = None):
    """The first family (in order of preference) that runs on the device and supports the variant: with ``kind``
    and ``head_dim``, one whose table has an entry for them that the variant may take; without, one that has every
    kernel kind (the backward's and the helpers')."""
    variant = variant or Variant("float16")
    kd = None if head_dim is None else kernel_head_dim(head_dim)
    supporting = [fam for fam in FAMILIES if fam.supports(limits.compute_capability, variant, kind, kd)]
    for fam in supporting:
        if kind in TABLES and kd is not None and not any(
                _entry_allows(e, variant, limits)
                and fits(_entry_config(e), kd, limits, residency=False, kind=kind, variant=variant)
                for e in TABLES[kind].get((fam.name, kd), ())):
            continue
        return fam
    if supporting:  # none has a tile for this variant: the last resort's table is empty (select_config says why)
        return supporting[-1]
    raise NoConfigFits(
        f"cupyflash needs compute capability 8.0 or newer; {limits.name or 'this GPU'} has "
        f"{limits.compute_capability // 10}.{limits.compute_capability % 10}")


def smem_bytes(kind: str, config: TileConfig, kernel_hdim: int, variant: Variant | None = None) -> int:
    return FAMILIES_BY_NAME[config.family].smem_bytes(kind, config, kernel_hdim, variant)


def fwd_smem_bytes(config: TileConfig, kernel_hdim: int) -> int:
    return smem_bytes("fwd", config, kernel_hdim)


def bwd_smem_bytes(config: TileConfig, kernel_hdim: int) -> int:
    return smem_bytes("bwd", config, kernel_hdim)


def bwd_dq_smem_bytes(config: TileConfig, kernel_hdim: int) -> int:
    return smem_bytes("bwd_dq", config, kernel_hdim)


def fits(config: TileConfig, kernel_hdim: int, limits: DeviceLimits, *, residency: bool = True,
         kind: str = "fwd", variant: Variant | None = None) -> bool:
    """Whether ``config`` runs on the device; with ``residency`` also whether ``blocks_per_sm`` blocks fit an SM."""
    smem = smem_bytes(kind, config, kernel_hdim, variant)
    if smem > limits.smem_per_block_optin:
        return False
    blocks = config.blocks_per_sm if residency else 1
    return blocks * (smem + RESERVED_SMEM_PER_BLOCK) <= limits.smem_per_sm


def _table(kind: str, limits: DeviceLimits, head_dim: int, variant: Variant | None, family: str | None = None,
           seqlen_q: int | None = EVERY_LENGTH):
    """(kernel head dim, this variant's entries of the table, best first): of the preferred family (family_for),
    or of the named ``family`` (a forced config's) when it supports the variant (nothing otherwise); with
    ``seqlen_q``, those that serve problems of that many query rows."""
    kd = kernel_head_dim(head_dim)
    if family is None:
        fam = family_for(limits, variant, kind, head_dim)
    else:
        fam = FAMILIES_BY_NAME[family]
        if not fam.supports(limits.compute_capability, variant or Variant("float16"), kind, kd):
            return kd, ()
    return kd, tuple(_entry_config(e) for e in TABLES[kind].get((fam.name, kd), ())
                     if _entry_allows(e, variant, limits) and _entry_serves_rows(e, seqlen_q))


def candidates(kind: str, limits: DeviceLimits, head_dim: int, variant: Variant | None = None
               ) -> tuple[TileConfig, ...]:
    """Every table entry of ``kind`` for this head dim and variant that runs on the device, best first: the
    preferred family's, then those of every other family that runs the variant (a config may force any of them)."""
    kd, table = _table(kind, limits, head_dim, variant)
    preferred = family_for(limits, variant, kind, head_dim).name
    for fam in FAMILIES:
        if fam.name != preferred:
            table += _table(kind, limits, head_dim, variant, fam.name)[1]
    return tuple(c for c in table if fits(c, kd, limits, residency=False, kind=kind, variant=variant))


def select_config(kind: str, limits: DeviceLimits, head_dim: int, causal: bool = False,
                  variant: Variant | None = None, family: str | None = None,
                  seqlen_q: int | None = None) -> TileConfig:
    """The tile configuration of kernel ``kind`` ('fwd', 'bwd', 'bwd_dq') for a problem: the first tuned table
    entry for the variant whose shared memory fits the device with the residency it was tuned for; failing that,
    the first entry (fallbacks included) that fits at all. A tuned tile at one block per SM beats a fallback.
    ``family``: from that family's table (tests and benchmarks force each family that runs the variant).
    ``seqlen_q``: the problem's query rows (the longest entry's in a packed batch), which entries for short rows
    need (When.max_seqlen_q; None: not known, those entries are passed over)."""
    del causal  # one table serves both today; the argument keeps call sites stable when it stops doing so
    kd, table = _table(kind, limits, head_dim, variant, family, seqlen_q)
    if family is not None and not table:
        raise NoConfigFits(f"the {family} family has no {kind} kernel for head dim {head_dim} on this GPU"
                           f"{_modifiers_text(variant)}")
    if not table:
        raise NoConfigFits(f"no {kind} kernel for head dim {head_dim}{_modifiers_text(variant)}: every tile of the "
                           f"{family_for(limits, variant, kind).name} family spills registers with this combination "
                           f"(docs/usage.md lists these gaps); leave out one of the modifiers")
    for config in table:
        if config not in _FALLBACKS[kind] and fits(config, kd, limits, residency=True, kind=kind, variant=variant):
            return config
    for config in table:
        if fits(config, kd, limits, residency=False, kind=kind, variant=variant):
            return config
    raise NoConfigFits(
        f"no {kind} tile configuration for head dim {head_dim} fits {limits.smem_per_block_optin} bytes of "
        f"shared memory per block (smallest needs {min(smem_bytes(kind, c, kd, variant) for c in table)})")


def _modifiers_text(variant: Variant | None) -> str:
    on = [] if variant is None else [n for n, flag in (("softcap", variant.softcap), ("ALiBi", variant.alibi),
                                                       (f"a {variant.bias} bias", variant.bias != "none"),
                                                       ("a boolean mask", variant.bool_mask and
                                                        not variant.mask_blocks),
                                                       ("a block-sparse mask", variant.mask_blocks)) if flag]
    return f" with score modifiers ({' and '.join(on)})" if on else ""


def check_config(kind: str, config: TileConfig, limits: DeviceLimits, head_dim: int,
                 variant: Variant | None = None) -> None:
    """Validate a user-forced config: it must be a table entry for this head dim (and variant) of a family that runs
    the variant on this device (any such family: tests force each), and fit the device."""
    family_for(limits, variant, kind, head_dim)  # NoConfigFits on a GPU no family runs on
    _, table = _table(kind, limits, head_dim, variant, config.family if config.family in FAMILIES_BY_NAME else None)
    name = {"fwd": "forward", "bwd": "backward", "bwd_dq": "backward dQ"}[kind]
    if config not in table:
        raise ValueError(f"config {config} is not a {name} candidate for head dim {head_dim} on this GPU"
                         f"{_modifiers_text(variant)}; "
                         f"candidates: {', '.join(map(str, table))}")
    kd = kernel_head_dim(head_dim)
    if not fits(config, kd, limits, residency=False, kind=kind, variant=variant):
        raise ValueError(f"config {config} needs {smem_bytes(kind, config, kd, variant)} bytes of shared memory; "
                         f"the device allows {limits.smem_per_block_optin} per block")


def all_variants(kind: str, variant: Variant | None = None):
    """Every (family, kernel head dim, config) of ``kind`` the dispatcher can ever choose for ``variant`` (None:
    plain scores)."""
    for (family, kd), entries in TABLES[kind].items():
        for config in dict.fromkeys(_entry_config(e) for e in entries if _entry_allows(e, variant)):
            yield family, kd, config


# The forward's names, as the rest of the package and its tests use them.
def fwd_candidates(limits: DeviceLimits, head_dim: int) -> tuple[TileConfig, ...]:
    return candidates("fwd", limits, head_dim)


def select_fwd_config(limits: DeviceLimits, head_dim: int, causal: bool = False,
                      family: str | None = None) -> TileConfig:
    return select_config("fwd", limits, head_dim, causal, family=family)


def check_fwd_config(config: TileConfig, limits: DeviceLimits, head_dim: int) -> None:
    check_config("fwd", config, limits, head_dim)


def all_fwd_variants():
    return all_variants("fwd")
