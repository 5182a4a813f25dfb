"""Kernel families: everything that differs between one implementation of the kernels and another.

A family owns its CUDA sources, compile options, kernel (template instance) names, the shared-memory formula of
each kernel kind (mirroring the kernel's layout exactly; the kernel static_asserts the number it is given), and
``supports(limits, variant)``. The dispatcher asks the families in order of preference. Pure Python: no CuPy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .problem import Variant

KINDS = ("fwd", "bwd", "bwd_dq")  # forward; backward dK/dV (+ atomic dQ); backward deterministic dQ
#: Kernels without tiles: one warp per row, a boolean mask's tile summary, and dbias's sum over broadcast dims.
HELPER_KINDS = ("bwd_preprocess", "bwd_convert_dq", "bwd_reduce_dkdv", "copy_rows", "mask_tiles", "dbias_sum",
                "split_combine")
_NO_ROWS = ("copy_rows", "mask_tiles", "dbias_sum", "split_combine",  # helper kernels without a row-layout policy
            "round_tf32", "transpose_values")
#: float32 operand staging (cuda_src/staging.cu): at precision "tf32" rounded to TF32 (every TF32 family's kernels
#: take their operands rounded), and V transposed (the wgmma forward's, at either precision).
TF32_STAGING_KINDS = ("round_tf32", "transpose_values")

#: The kernels' element type (cuda_src/mma_sm80.cuh, mma_tf32.cuh) by (dtype, precision): float32 inputs run on TF32
#: tensor cores, in three passes ("highest") or one ("tf32").
_ELEM_TAG = {("float16", ""): "cf::f16", ("bfloat16", ""): "cf::bf16", ("float32", "highest"): "cf::f32x3",
             ("float32", "tf32"): "cf::tf32"}
_MASK_TYPE = {"none": "cf::NoMask", "band": "cf::BandMask"}
_ROWS_TYPE = {"dense": "cf::DenseRows", "packed": "cf::PackedRows"}
_DROPOUT_TYPE = {False: "cf::NoDropout", True: "cf::Dropout"}
_SPLIT_TYPE = {False: "cf::OneSplit", True: "cf::KeySplits"}
_BIAS_ELEM = {"float16": "cf::f16", "bfloat16": "cf::bf16", "float32": "float"}
_BIAS_ITEMSIZE = {"none": 0, "float16": 2, "bfloat16": 2, "float32": 4}


def _cpp_bool(flag: bool) -> str:
    return "true" if flag else "false"


def _padded_tile_bytes(rows: int, cols: int, itemsize: int) -> int:
    """cuda_src/smem_tile.cuh SmemTile<rows, cols, T>: rows padded by one 16-byte chunk."""
    return rows * (cols * itemsize + 16)


def _bias_tile_bytes(rows: int, cols: int, itemsize: int) -> int:
    """cuda_src/bias.cuh TileBias::tile_bytes: rows padded by 16 bytes; 0 without a bias."""
    return _padded_tile_bytes(rows, cols, itemsize) if itemsize else 0


def _bias_policy(variant: Variant, grad: bool) -> str:
    """The kernels' Bias policy (cuda_src/bias.cuh): nothing, the additive bias, the boolean mask (read where it
    cuts a tile, or only its tile summary: BlockMask), or a bias and a mask."""
    mask = "cf::BlockMask" if variant.mask_blocks else "cf::TileBias<cf::mask8>"
    if variant.bias == "none":
        return mask if variant.bool_mask else "cf::NoBias"
    elem = _BIAS_ELEM[variant.bias]
    if not variant.bool_mask:
        return f"cf::TileBias<{elem}{', true' if grad else ''}>"
    if variant.mask_blocks:
        return f"cf::MaskedBias<{elem}, {_cpp_bool(grad)}, cf::BlockMask>"
    return f"cf::MaskedBias<{elem}{', true' if grad else ''}>"


_BLOCK_MASK_BYTES = 16  # cuda_src/bias.cuh BlockMask::tile_bytes: a stage's two walk entries


def bulk_bias(config, variant: Variant | None) -> bool:
    """Whether the forward's additive bias or boolean mask comes by bulk tensor copies (cuda_src/bulk_bias.cuh
    SwizzledBias), on a tile whose producer issues them: a 16-bit bias without a mask, or a mask read in the tiles
    it cuts (not block-sparse) without a bias, on tiles of whole 128-key panels."""
    if variant is None or config is None or not config.tma:
        return False
    if variant.bool_mask:
        return variant.bias == "none" and not variant.mask_blocks and config.block_n % 128 == 0
    return variant.bias in ("float16", "bfloat16")


def _stage_bias_bytes(rows: int, cols: int, variant: Variant | None) -> int:
    """The bias and mask tiles of one pipeline stage (MaskedBias holds both)."""
    if variant is None:
        return 0
    mask = 0 if not variant.bool_mask else _BLOCK_MASK_BYTES if variant.mask_blocks else _bias_tile_bytes(rows, cols, 1)
    return _bias_tile_bytes(rows, cols, _BIAS_ITEMSIZE[variant.bias]) + mask


@dataclass(frozen=True)
class Mma80Family:
    """FlashAttention-2 on mma.sync tensor cores: sm_80 and every later architecture. One family per element size,
    from the same kernel templates (the element type is a template argument): 16-bit inputs (mma_sm80), and float32
    inputs on TF32 tensor cores (mma_tf32), whose tiles take twice the shared memory and so have their own table."""

    name: str = "mma_sm80"
    dtypes: tuple = ("float16", "bfloat16")
    itemsize: int = 2
    summary: str = "FlashAttention-2 on mma.sync tensor cores, float16 and bfloat16 (m16n8k16)"
    min_cc: int = 80
    max_cc: int = 10**9
    kinds: tuple = KINDS + HELPER_KINDS  # the kernels it has; a family with some only serves those kinds
    kernel_head_dims: tuple | None = None  # None: every head dim of configs.KERNEL_HEAD_DIMS
    core: str = "cf::WarpMma"  # the forward kernel's matrix-product core (warp_gemm.cuh, wgmma.cuh)
    archs: tuple = ("sm_80", "sm_90")  # what the CPU compile check builds it for
    sources = {"fwd": "flash_fwd.cu", "bwd": "flash_bwd.cu", "bwd_dq": "flash_bwd.cu",
               "bwd_preprocess": "flash_bwd.cu", "bwd_convert_dq": "flash_bwd.cu", "bwd_reduce_dkdv": "flash_bwd.cu",
               "copy_rows": "staging.cu", "mask_tiles": "mask_tiles.cu", "dbias_sum": "dbias_sum.cu",
               "split_combine": "split_combine.cu", "round_tf32": "staging.cu", "transpose_values": "staging.cu"}
    # -ftz=true: CuPy adds it at run time; the CPU compile check must see the same options.
    compile_options = ("-std=c++17", "-DCUPYFLASH_RUNTIME=1", "-ftz=true")
    tile_align = 0  # bytes the forward reserves to align its tiles (WarpgroupMma::SMEM_ALIGN)

    def supports(self, compute_capability: int, variant: Variant, kind: str | None = None,
                 kernel_hdim: int | None = None) -> bool:
        """Whether the family runs ``variant`` on the device: its kernel ``kind`` at ``kernel_hdim``, or (kind None)
        every kernel kind (the backward and the helpers come from a family that has them all)."""
        has_kind = set(self.kinds) >= set(KINDS + HELPER_KINDS) if kind is None else kind in self.kinds
        return (self.min_cc <= compute_capability <= self.max_cc and has_kind and variant.dtype in self.dtypes
                and (kernel_hdim is None or self.kernel_head_dims is None or kernel_hdim in self.kernel_head_dims)
                and variant.rows in _ROWS_TYPE and variant.bias in _BIAS_ITEMSIZE
                and not ((variant.bias != "none" or variant.bool_mask) and variant.rows == "packed"))

    def _tile_bytes(self, rows, cols):
        return _padded_tile_bytes(rows, cols, self.itemsize)

    def helper_warpgroup(self, config) -> bool:
        """Whether the dK/dV kernel of ``config`` has a helper warpgroup (one more than its key rows take: it copies
        and splits the steps' tiles and adds dQ while the others compute; cuda_src/flash_bwd.cu HELPER)."""
        return self.core == "cf::WarpgroupMma" and config.warps * 16 == config.block_n + 64

    def p_tile_cols(self, block_m: int, helper: bool = False) -> int:
        """The query columns of the dK/dV kernel's P^T and dS^T tiles: the step's queries, or on warpgroups at least
        a 128-byte swizzled row of them, or with a helper warpgroup a 64-byte one (cuda_src/flash_bwd.cu
        p_tile_cols)."""
        if self.core != "cf::WarpgroupMma" or block_m * self.itemsize >= 128:
            return block_m
        return block_m if helper and block_m * self.itemsize == 64 else 128 // self.itemsize

    def operand_parts(self, variant: Variant | None) -> int:
        """The parts each shared operand tile of the forward and dK/dV kernels is stored in: 1, or 2 where float32
        at "highest" runs on warpgroup products (hi and lo, cuda_src/mma_tf32.cuh SplitTile)."""
        return 1

    # ---- shared memory per kernel kind, mirroring each kernel's layout
    def smem_bytes(self, kind: str, config, kernel_hdim: int, variant: Variant | None = None) -> int:
        m, n, stages = config.block_m, config.block_n, config.stages

        tile = self._tile_bytes
        # every kind holds one bias tile and one mask tile (queries x keys, rows padded by 16 bytes) per stage; a
        # bias or mask by bulk copies, swizzled and unpadded (SwizzledBias; a mask's tile after its walk entries')
        bulk = kind == "fwd" and bulk_bias(config, variant)
        bias = stages * ((1024 + m * n if variant.bool_mask else m * n * 2) if bulk
                         else _stage_bias_bytes(m, n, variant))
        if kind == "fwd":  # alignment, Q tile (reused for O), STAGES K and V tiles, a producer's barriers
            # K's and V's full and empty mbarriers, and a persistent block's Q's two
            barriers = (32 * stages + 16 * config.persistent) if config.producer_warps else 0
            parts = self.operand_parts(variant)
            return (self.tile_align + parts * (tile(m, kernel_hdim) + 2 * stages * tile(n, kernel_hdim)) + bias
                    + barriers)
        if kind == "bwd":  # alignment, K, V, P^T, dS^T, STAGES Q and dO tiles, STAGES x (lse2, delta) rows of floats
            parts = self.operand_parts(variant)
            helper = self.helper_warpgroup(config)
            p_tiles = 4 if helper else 2  # a helper's dS (queries x keys), two steps
            operands = (2 * tile(n, kernel_hdim) + p_tiles * tile(n, self.p_tile_cols(m, helper))
                        + 2 * stages * tile(m, kernel_hdim))
            return self.tile_align + parts * operands + stages * 2 * m * 4 + bias
        if kind == "bwd_dq":  # Q and dO tiles, STAGES K and V tiles
            return 2 * tile(m, kernel_hdim) + 2 * stages * tile(n, kernel_hdim) + bias
        raise ValueError(f"unknown kernel kind {kind!r}")

    # ---- kernel names (NVRTC name expressions)
    def kernel_name(self, kind: str, config, kernel_hdim: int, variant: Variant, atomic_dq: bool = False) -> str:
        elem = _ELEM_TAG[(variant.dtype, variant.precision)]
        rows = _ROWS_TYPE[variant.rows]
        if kind in _NO_ROWS:
            return f"cf::flash_{kind}_kernel<{elem}>"
        if kind in HELPER_KINDS:
            return f"cf::flash_{kind}_kernel<{elem}, {rows}>"
        bias = _bias_policy(variant, kind == "bwd" and variant.dbias)  # only the dK/dV kernel computes dbias
        if kind == "fwd" and bulk_bias(config, variant):
            bias = f"cf::SwizzledBias<{'cf::mask8' if variant.bool_mask else _BIAS_ELEM[variant.bias]}>"
        # float32 at precision "highest" takes the softcap's tanh from the math library (score_mod.cuh)
        exact = ", true" if variant.softcap and variant.precision == "highest" else ""
        policies = (f"{_MASK_TYPE[variant.mask]}, "
                    f"cf::ScoreMod<{_cpp_bool(variant.softcap)}, {_cpp_bool(variant.alibi)}{exact}>, {bias}")
        tiles = (f"{kernel_hdim}, {config.block_m}, {config.block_n}, {config.warps}, {config.stages}, "
                 f"{config.blocks_per_sm}")
        smem = self.smem_bytes(kind, config, kernel_hdim, variant)
        rows = f"{rows}, {_DROPOUT_TYPE[variant.dropout]}"  # the kernels take the dropout policy after the rows'
        if kind == "fwd":
            loads = (f"cf::ProducerWarpgroup<{_cpp_bool(config.overlap)}, {_cpp_bool(config.tma)}"
                     + (", true>" if config.persistent else ">")
                     if config.producer_warps
                     else "cf::AllWarpsLoad")
            return (f"cf::flash_fwd_kernel<{elem}, {tiles}, {policies}, {rows}, {_SPLIT_TYPE[variant.split_kv]}, "
                    f"{self.core}, {loads}, {smem}>")
        if kind == "bwd":
            return (f"cf::flash_bwd_dkdv_kernel<{elem}, {tiles}, {policies}, {rows}, {_cpp_bool(atomic_dq)}, "
                    f"{config.d_split}, {self.core}, {smem}>")
        if kind == "bwd_dq":
            return f"cf::flash_bwd_dq_kernel<{elem}, {tiles}, {policies}, {rows}, {smem}>"
        raise ValueError(f"unknown kernel kind {kind!r}")


@dataclass(frozen=True)
class Wgmma90Family(Mma80Family):
    """The forward on warpgroup tensor cores (wgmma, sm_90a code: compute capability 9.0 only): the same kernel with
    the WarpgroupMma core, whose tiles are 128-byte-swizzled panels of 64 columns (head dims that are multiples of
    64), 1024-byte aligned. The backward and the helper kernels come from mma_sm80."""

    name: str = "wgmma_sm90"
    summary: str = "FlashAttention forward on warpgroup tensor cores (wgmma, sm_90a), float16 and bfloat16"
    min_cc: int = 90
    max_cc: int = 90
    kinds: tuple = ("fwd",)
    kernel_head_dims: tuple | None = (64, 128, 192, 256)
    core: str = "cf::WarpgroupMma"
    archs: tuple = ("sm_90a",)
    sources = {"fwd": "flash_fwd.cu"}
    # CuPy appends -arch=sm_90 after these; NVRTC keeps sm_90a (hopper-notes.md)
    compile_options = Mma80Family.compile_options + ("-arch=sm_90a",)
    tile_align = 1024

    def _tile_bytes(self, rows, cols):
        return rows * cols * self.itemsize  # swizzled, unpadded (wgmma.cuh SwizzledTile)


@dataclass(frozen=True)
class WgmmaTf32Family(Wgmma90Family):
    """float32 on warpgroup tensor cores (TF32 wgmma, k8; sm_90a): the wgmma forward on 32-bit tiles (32-column
    panels). TF32 wgmma reads no N-major operand, so V is staged transposed (V^T, its keys in P's
    register order) and rounded to TF32 before the kernel (the tensor cores truncate; cupyflash/_launch.py
    Tf32Staging); Q and K are rounded by their bulk copies (TFLOAT32 maps), staged rounded only where they must be
    copied anyway. The backward's dK/dV kernel computes S^T = K Q^T and dP^T = V dO^T by wgmma (both operands K-major
    as they come), and dV^T += dO^T P, dK^T += Q^T dS (dO^T and Q^T register operands read from shared memory, P^T
    and dS^T K-major in it); dQ stays on mma.sync, and the dQ kernel and the helpers are mma_tf32's. At "highest"
    every shared operand tile holds two parts (hi and lo: cuda_src/mma_tf32.cuh SplitTile), split by the threads
    that copy or write it, and each product takes three passes: the forward's producer copies by cp.async and V^T is
    staged unrounded; twice the shared memory, so the dK/dV kernel takes 16 queries a step at head dim 128 (P^T and
    dS^T in 32-column tiles half filled). Dense rows, plain and band masks, softcap, ALiBi and GQA; the rest runs on
    mma_tf32."""

    name: str = "wgmma_tf32"
    dtypes: tuple = ("float32",)
    itemsize: int = 4
    summary: str = ("FlashAttention forward and four of the backward's five products on warpgroup tensor cores, "
                    "float32 as TF32 (wgmma k8, sm_90a; one pass at \"tf32\", three on split tiles at \"highest\")")
    kinds: tuple = ("fwd", "bwd") + TF32_STAGING_KINDS
    kernel_head_dims: tuple | None = (64, 128)
    sources = {"fwd": "flash_fwd.cu", "bwd": "flash_bwd.cu", "round_tf32": "staging.cu",
               "transpose_values": "staging.cu"}

    def supports(self, compute_capability, variant, kind=None, kernel_hdim=None):
        return (super().supports(compute_capability, variant, kind, kernel_hdim)
                and variant.precision in ("tf32", "highest")
                and variant.rows == "dense" and variant.bias == "none" and not variant.bool_mask
                and not variant.dropout and not variant.split_kv)

    def operand_parts(self, variant):
        return 2 if variant is not None and variant.precision == "highest" else 1


MMA_SM80 = Mma80Family()
# At precision "tf32" its kernels take operands rounded before them (round_tf32 stages Q, K, V and dO).
MMA_TF32 = Mma80Family("mma_tf32", ("float32",), 4,
                        "the same kernels on TF32 tensor cores, float32 (m16n8k8, one or three passes)",
                        kinds=KINDS + HELPER_KINDS + ("round_tf32",))
WGMMA_SM90 = Wgmma90Family()
WGMMA_TF32 = WgmmaTf32Family()

ALL_FAMILIES = (WGMMA_SM90, WGMMA_TF32, MMA_SM80, MMA_TF32)
BY_NAME = {f.name: f for f in ALL_FAMILIES}


def enabled(families=ALL_FAMILIES, disabled: str | None = None):
    """``families`` less those named in ``disabled`` (default: the environment variable CUPYFLASH_DISABLE_FAMILIES,
    comma-separated names, read once at import): e.g. ``wgmma_sm90`` runs every forward on mma_sm80, which is how
    the GPU suite checks that family on an H100."""
    names = {n.strip() for n in (os.environ.get("CUPYFLASH_DISABLE_FAMILIES", "") if disabled is None
                                 else disabled).split(",") if n.strip()}
    unknown = names - {f.name for f in families}
    if unknown:
        raise ValueError(f"CUPYFLASH_DISABLE_FAMILIES names unknown kernel families {sorted(unknown)}; known: "
                         f"{', '.join(f.name for f in families)}")
    return tuple(f for f in families if f.name not in names)


#: Families in order of preference; the first that supports the device, the kernel kind, the head dim and the
#: variant (and has a table entry for it: configs.family_for) is used. BY_NAME has every family, disabled or not
#: (a forced config names its own).
FAMILIES = enabled()
