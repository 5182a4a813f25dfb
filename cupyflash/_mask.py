"""Boolean masks: the tile summaries that let the kernels skip work (cuda_src/mask_tiles.cu, mask_tiles.cuh), and
``prepare_mask``, which keeps them with the mask for calls that reuse it."""
from __future__ import annotations

import dataclasses
import math

from ._bias import readable
from . import _interop
from ._types import Array
from .problem import BiasLayout


class PreparedMask:
    """A boolean mask with its tile summaries, for masks reused across calls (every layer, every step).

    Pass it as ``mask=`` wherever a boolean mask is accepted. The summary of each tile shape a kernel uses is
    computed on the GPU at its first use and kept here, so later calls pay nothing for it. The mask's contents
    must not change afterwards: prepare it again if they do.
    """

    __slots__ = ("mask", "_cache", "_blocks", "_find_blocks")

    def __init__(self, mask, find_blocks: bool = True):
        self.mask = mask
        self._cache = {}  # (what, ...) -> device array: summaries, and the readable copy of the mask if it needs one
        self._blocks = None
        self._find_blocks = find_blocks  # False: a wrapper for one call (flash_attn_vjp), not worth a GPU wait

    def blocks(self) -> tuple[int, int] | None:
        """The mask's uniform blocks, (queries, keys) (:func:`uniform_blocks`), found on the GPU at the first call
        (one read of the mask and one wait for the GPU) and kept; None for an internal one-call wrapper. Kernels
        whose tiles divide them see no tile cut by the mask and read nothing of it but its tile summary
        (cuda_src/bias.cuh BlockMask)."""
        if self._blocks is None and self._find_blocks:
            with self.mask.device:
                self._blocks = uniform_blocks(self.mask)
        return self._blocks

    @property
    def shape(self):
        return self.mask.shape

    def __repr__(self):
        return f"PreparedMask(shape={self.mask.shape}, summaries={sum(k[0] == 'tiles' for k in self._cache)})"


#: The largest uniform block edge looked for (the largest kernel tile edge).
MAX_BLOCK = 128


def uniform_blocks(mask, xp=None) -> tuple[int, int]:
    """(queries, keys): the largest powers of two up to MAX_BLOCK such that ``mask`` (any leading dims, then
    queries and keys; fewer than two dims are leading 1s) is constant on every block of that many queries by keys
    starting at a multiple of them (the last blocks may be partial). A kernel tile whose edges divide these never
    straddles a change of the mask's value. One pass over the mask and one transfer of two numbers."""
    if xp is None:
        import cupy

        xp = cupy.get_array_module(mask)
    if mask.size == 0:
        return MAX_BLOCK, MAX_BLOCK
    m = mask[tuple(slice(0, 1) if st == 0 else slice(None) for st in mask.strides)]  # broadcast dims: once
    m = m.reshape((1,) * max(0, 2 - m.ndim) + tuple(m.shape))
    m = m.reshape((-1,) + tuple(m.shape[-2:]))

    def edge(axis):  # the lowest power of two among the positions where the value changes along axis
        n = m.shape[axis]
        if n < 2:
            return xp.asarray(MAX_BLOCK)
        a = xp.moveaxis(m, axis, -1)
        changed = (a[..., 1:] != a[..., :-1]).reshape(-1, n - 1).any(axis=0)  # entry i: position i + 1 starts anew
        positions = xp.arange(1, n)
        return xp.where(changed, positions & -positions, MAX_BLOCK).min()

    queries, keys = (min(int(x), MAX_BLOCK) for x in xp.stack([edge(1), edge(2)]).tolist())
    return queries, keys


def tiles_fit_blocks(config, blocks) -> bool:
    """Whether kernels of ``config``'s tiles see no tile cut by a mask with uniform ``blocks`` (queries, keys;
    None: not known): the tiles' query and key edges divide the blocks' (all are powers of two)."""
    return blocks is not None and blocks[0] % config.block_m == 0 and blocks[1] % config.block_n == 0


def with_block_mask(problem, blocks, pick):
    """(problem, configs): where a prepared mask's uniform ``blocks`` hold every tile of the configs ``pick``
    chooses for the block-mask variant (a tuple, None for a kernel not run; ValueError: a forced config it does not
    take), that variant and those configs; else the problem as it is and None."""
    if blocks is None:
        return problem, None
    blocky = dataclasses.replace(problem.variant, mask_blocks=True)
    try:
        picked = pick(blocky)
    except ValueError:
        return problem, None
    if all(c is None or tiles_fit_blocks(c, blocks) for c in picked):
        return dataclasses.replace(problem, variant=blocky), picked
    return problem, None


def prepare_mask(mask: Array) -> PreparedMask:
    """Wrap a boolean mask (any CUDA array; True = may attend) so that the calls given it compute its tile summary
    once per kernel tile shape instead of once per call. Shape rules are checked at each call, as for a raw mask.
    A prepared mask also finds its uniform blocks once (:func:`uniform_blocks`): where every tile the kernels use
    lies inside one (a block-sparse mask whose blocks are multiples of the tiles), the kernels read only its tile
    summary, visiting the tiles it shows as if there were no mask.
    """
    if isinstance(mask, PreparedMask):
        return mask
    if type(mask) is not _interop.ndarray:  # another library's arrays (or the first call)
        return _interop.call(prepare_mask, locals())
    from ._validate import as_cuda_array, check_mask_dtype

    mask = as_cuda_array(mask, "mask")
    check_mask_dtype(str(mask.dtype))
    return PreparedMask(mask)


def for_one_call(mask):
    """A raw mask wrapped for one forward and its backward (flash_attn_vjp, the adapters): its padded copy, if it
    needs one, made once for both; no search for uniform blocks (a GPU wait not worth it for one call)."""
    if mask is None or isinstance(mask, PreparedMask):
        return mask
    from ._validate import as_cuda_array

    return PreparedMask(as_cuda_array(mask, "mask"), find_blocks=False)


def unwrap(mask):
    """The array of a mask given raw or prepared (None stays None)."""
    return mask.mask if isinstance(mask, PreparedMask) else mask


class TileSummary:
    """One kernel's summary of the call's mask: rows are the tiles a block owns, columns the tiles it walks
    (``by_key``: rows are key tiles, the dK/dV kernel). Static per plan; ``read`` gives the arrays of a call."""

    @classmethod
    def for_kernel(cls, problem, config, by_key: bool, params):
        """The summary a kernel of ``config``'s tiles walks, its strides set in ``params`` (mask_tiles_k for the
        dK/dV kernel, mask_tiles_q for the others)."""
        from . import _kernels
        from ._device import device_limits
        from .configs import family_for

        family = family_for(device_limits(problem.device), problem.variant)
        kernel = _kernels.get_function(family, "mask_tiles", None, 0, problem.variant, problem.device)
        summary = cls(kernel, problem.mask, by_key, config.block_m, config.block_n, problem.seqlen_q,
                      problem.seqlen_k)
        params.set(**summary.fields("mask_tiles_k" if by_key else "mask_tiles_q"))
        return summary

    def __init__(self, kernel, layout: BiasLayout, by_key: bool, block_m: int, block_n: int, seqlen_q: int,
                 seqlen_k: int):
        self.kernel, self.layout = kernel, layout
        batch, heads, queries, keys = layout.dims
        s_batch, s_head, s_query, s_key = layout.strides  # bytes: bools are one byte
        if by_key:
            rows, cols, row_stride, col_stride = keys, queries, s_key, s_query
            block_rows, block_cols, col_tiles = block_n, block_m, math.ceil(seqlen_q / block_m)
        else:
            rows, cols, row_stride, col_stride = queries, keys, s_query, s_key
            block_rows, block_cols, col_tiles = block_m, block_n, math.ceil(seqlen_k / block_n)
        row_tiles, words = math.ceil(rows / block_rows), math.ceil(col_tiles / 32)
        self.shape = (batch, heads, row_tiles, words, 2)  # uint32: (any visible, all visible) bit words
        self.grid = (math.ceil(cols / block_cols) * heads, row_tiles, batch)
        self.args = (s_batch, s_head, row_stride, col_stride, rows, cols, block_rows, block_cols, col_tiles, words)
        self.key = ("tiles", by_key, block_rows, block_cols, col_tiles, layout)
        # uint2 strides for the params, 0 along dims the mask broadcasts
        self.strides = (heads * row_tiles * words if batch > 1 else 0, words if row_tiles > 1 else 0,
                        row_tiles * words if heads > 1 else 0)  # (batch, row tile, head)

    def fields(self, name: str) -> dict:
        return {f"{name}_str_{axis}": s for axis, s in zip(("batch", "seq", "head"), self.strides)}

    def read(self, mask):
        """(the mask array the kernels read, its summary) for a raw or prepared mask."""
        if not isinstance(mask, PreparedMask):
            data = readable(self.layout, mask)
            return data, self._compute(data)
        cache = mask._cache
        data_key = ("data", self.layout)
        data = cache.get(data_key)
        if data is None:
            data = cache[data_key] = readable(self.layout, mask.mask)
        tiles = cache.get(self.key)
        if tiles is None:
            tiles = cache[self.key] = self._compute(data)
        return data, tiles

    def _compute(self, data):
        import cupy
        import numpy as np

        words = cupy.zeros(self.shape, cupy.uint32)
        s_batch, s_head, row_stride, col_stride, *counts = self.args
        self.kernel(self.grid, (256,), (data, words, *map(np.int64, (s_batch, s_head, row_stride, col_stride)),
                                        *map(np.int32, counts)))
        return words
