"""The forward pass: flash-attn's signature, validation into a Problem, a cached launch plan, the launch."""
from __future__ import annotations

import math
import warnings
from dataclasses import replace

from . import _dropout, _kernels, _launch, _tma
from . import _interop
from ._bias import readable
from ._mask import PreparedMask, TileSummary, unwrap, with_block_mask
from ._types import Array, Window
from ._device import device_limits
from ._params import NO_MAPS, TensorMapArgs
from ._launch import (Launch, PlanCache, Staging, Tf32Staging, array_key, current_stream_ptr, empty,
                      operand_staging, scalar_key, static_params)
from ._validate import as_cuda_array, describe, spec_of
from .configs import (SPLIT_MAX, TileConfig, candidates, check_config, family_for, forward_splits,
                      kernel_head_dim, select_config)
from .families import BY_NAME as FAMILIES_BY_NAME, TF32_STAGING_KINDS, WGMMA_TF32, bulk_bias

_PLANS = PlanCache()


class ForwardPlan:
    """Everything a forward call needs that depends only on its cache key."""

    def __init__(self, problem, config, q_spec, k_spec, v_spec, num_splits=0):
        self.splits = split_count(problem, config, num_splits)
        if self.splits > 1:
            problem = replace(problem, variant=replace(problem.variant, split_kv=True))
        self.problem = problem
        pd = problem.padded_head_dim
        self.copy_rows = _launch.row_copy_kernel(problem)  # head dims that are not a multiple of 8
        map_dtypes = None  # the variant's dtype for Q, K and V
        if config.family == WGMMA_TF32.name and problem.variant.precision == "highest":
            # Q and K as they are (its tiles' producer threads copy them by cp.async and split what they copied), V
            # transposed unrounded (the table gives "highest" no bulk-copy tile: configs.FWD_TABLE)
            transpose = _kernels.get_function(WGMMA_TF32, "transpose_values", None, 0, problem.variant,
                                              problem.device)
            self.staging = (*(Staging(s, pd, self.copy_rows) for s in (q_spec, k_spec)),
                            Tf32Staging(v_spec, pd, transpose, transpose=True))
            geometry = box_rows = None
        elif config.family == WGMMA_TF32.name:  # float32 operands rounded to TF32, V transposed (wgmma.cuh)
            round_rows, transpose = (_kernels.get_function(WGMMA_TF32, kind, None, 0, problem.variant, problem.device)
                                     for kind in TF32_STAGING_KINDS)
            # Q and K as they are, rounded by their bulk copies (TFLOAT32 maps); where they must be copied anyway
            # (padding, alignment) or the copy engine cannot read them, staged rounded
            q_k = [Staging(s, pd, self.copy_rows) for s in (q_spec, k_spec)]
            geometry = [(spec.shape[:3] + (pd,), st.kernel_strides) for spec, st in zip((q_spec, k_spec), q_k)]
            q_k = [Tf32Staging(spec, pd, round_rows) if st.copy or not _tma.usable(*g, 4) else st
                   for spec, st, g in zip((q_spec, k_spec), q_k, geometry)]
            self.staging = (*q_k, Tf32Staging(v_spec, pd, transpose, transpose=True))
            geometry = [st.map_geometry if isinstance(st, Tf32Staging) else g
                        for st, g in zip(self.staging, geometry + [None])]
            box_rows = (config.block_m, config.block_n, kernel_head_dim(problem.head_dim))  # V^T: the head dim
            map_dtypes = ("tf32", "tf32", "float32")
        else:  # the inputs as they are (staged where needed), or, float32 at "tf32", rounded (mma_tf32.cuh)
            rounding = _launch.tf32_rounding_kernel(problem, FAMILIES_BY_NAME[config.family])
            self.staging = tuple(operand_staging(s, pd, self.copy_rows, rounding) for s in (q_spec, k_spec, v_spec))
            # the arrays as the kernel reads them, (shape, byte strides): bulk tensor copies need their geometry
            geometry = [(spec.shape[:3] + (pd,), st.kernel_strides) for spec, st in zip((q_spec, k_spec, v_spec),
                                                                                       self.staging)]
            box_rows = None  # a query tile's rows for Q, a key tile's for K and V
        self.map_args, self.map_names = (_tensor_maps(problem, config, geometry, box_rows, map_dtypes) if config.tma
                                         else (None, ()))
        if config.family == WGMMA_TF32.name and config.tma and self.map_args is None:
            raise RuntimeError("cupyflash: the float32 wgmma forward needs bulk tensor copies, which the driver "
                               "refused for this call; pass config= an mma_tf32 tile (select_config(..., "
                               "family='mma_tf32'))")
        if config.tma and self.map_args is None:
            # the same tile copied by cp.async; a bias (which only bulk copies bring to a producer's tiles): a tile
            # whose warps all copy
            config = _without_producer(problem) if bulk_bias(config, problem.variant) else replace(config, tma=False)
        if config.persistent and problem.variant.rows == "packed":
            config = replace(config, persistent=False)  # a block a query tile of the longest entry
        self.config = config
        self.any_staging = any(s.copy for s in self.staging)
        # Packed variable-length rows run as one (1, total_q, nheads, dim) array with lse (nheads, total_q).
        self.packed = problem.variant.rows == "packed"
        rows = (1, problem.total_q) if self.packed else (problem.batch, problem.seqlen_q)
        self.out_shape = rows + (problem.nheads, problem.head_dim)
        self.kernel_out_shape = self.out_shape[:3] + (pd,)
        self.padded = pd != problem.head_dim
        self.lse_shape = ((problem.nheads, problem.total_q) if self.packed
                          else (problem.batch, problem.nheads, problem.seqlen_q))
        self.params = static_params(problem)
        self.params.set(num_splits=self.splits)
        itemsize = q_spec.itemsize
        for name, staging in zip("qkv", self.staging):
            self.params.set_strides(name, staging.kernel_strides, itemsize)
        self.params.set_strides("o", _launch.contiguous_strides(self.kernel_out_shape, itemsize), itemsize)
        if self.packed:  # blockIdx.z is the sequence; its rows start at cu_seqlens, not at a batch stride
            self.params.set(q_str_batch=0, k_str_batch=0, v_str_batch=0, o_str_batch=0)
        # The tensor maps (the kernel's second argument) are pointed at each call's arrays in run(); `mapped`: the
        # addresses they point at now.
        self.maps = () if self.map_args is None else tuple(map(self.map_args.address_of, self.map_names))
        self.mapped = (None,) * len(self.maps)
        self.launches = not problem.empty
        if self.launches:
            kd = kernel_head_dim(problem.head_dim)
            family = FAMILIES_BY_NAME[config.family]  # the table's choice, or a forced config's family
            grid = _launch.query_grid(problem, config.block_m, self.splits)
            if config.persistent:  # as many blocks as fit the GPU at once, each taking work items in turn
                grid = (min(math.prod(grid), device_limits(problem.device).sm_count * config.blocks_per_sm),)
            self.kernel = Launch(_kernels.get_function(family, "fwd", config, kd, problem.variant, problem.device),
                                 problem.device, grid, config.warps * 32,
                                 family.smem_bytes("fwd", config, kd, problem.variant), self.params,
                                 NO_MAPS if self.map_args is None else self.map_args.array)
            if self.splits > 1:  # the merge of the splits' partials: one warp per (batch, head, query row)
                rows = problem.batch * problem.nheads * problem.seqlen_q
                self.partial_rows = self.splits * rows
                helpers = family_for(device_limits(problem.device), problem.variant)
                self.combine = Launch(_kernels.get_function(helpers, "split_combine", None, 0, problem.variant,
                                                            problem.device),
                                      problem.device, (-(-rows // 4),), 128, 0, self.params)
        # a boolean mask: its tile summary by query tiles, from which the kernel skips tiles it hides wholly
        self.mask_tiles = None
        if self.launches and problem.variant.bool_mask:
            self.mask_tiles = TileSummary.for_kernel(problem, config, False, self.params)

    def run(self, q, k, v, alibi_slopes, cu_seqlens=(None, None), bias=None, mask=None, dropout=None):
        """out and lse; ``dropout``: the call's DropoutState (None without dropout)."""
        import cupy

        tiles = None
        if self.mask_tiles is not None:  # the boolean mask, raw or prepared
            mask, tiles = self.mask_tiles.read(mask)
        if bias is not None:
            bias = readable(self.problem.bias, bias)
        if self.any_staging:
            q, k, v = (s.stage(x) for s, x in zip(self.staging, (q, k, v)))
        out = empty(self.kernel_out_shape, q.dtype)
        lse = empty(self.lse_shape, cupy.float32)
        if self.launches:
            params = self.params
            partial = o_partial = lse_partial = 0
            if self.splits > 1:  # fp32 outputs then lse of every split, one allocation
                partial = cupy.empty(self.partial_rows * (self.problem.padded_head_dim + 1), cupy.float32)
                o_partial = partial.data.ptr
                lse_partial = o_partial + 4 * self.partial_rows * self.problem.padded_head_dim
            with params.lock:
                if self.maps:
                    self._point_maps((q.data.ptr, k.data.ptr, v.data.ptr,
                                      _launch.ptr(bias if bias is not None else mask))[:len(self.maps)])
                params.set_per_call((q.data.ptr, k.data.ptr, v.data.ptr, out.data.ptr, lse.data.ptr, 0, 0, 0, 0,
                                     0, 0, 0, _launch.ptr(alibi_slopes), 0, *map(_launch.ptr, cu_seqlens),
                                     _launch.ptr(bias), 0, _launch.ptr(tiles), 0, _launch.ptr(mask), o_partial,
                                     lse_partial, *_launch.dropout_fields(dropout)))
                stream = current_stream_ptr()
                self.kernel(stream)
                if self.splits > 1:
                    self.combine(stream)
            del partial  # back to the pool; stream order keeps it until the merge has read it
        if self.padded:
            out = _launch.copy_rows(self.copy_rows, out, cupy.empty(self.out_shape, out.dtype))
        return out, lse

    def _point_maps(self, addresses):
        """The tensor maps at this call's q, k, v (and bias) (each re-pointed only when its array moved); params.lock
        held."""
        if addresses != self.mapped:
            for dest, address, old in zip(self.maps, addresses, self.mapped):
                if address != old:
                    _tma.replace_address(dest, address)
            self.mapped = addresses


_STAND_IN_ADDRESS = 256  # any 16-byte aligned address: a map is re-pointed before its first launch


def _tensor_maps(problem, config, geometry, box_rows=None, dtypes=None):
    """(maps, names): q's, k's and v's tensor maps for the config's bulk copies (boxes of ``box_rows`` rows each;
    default a query tile's for Q, a key tile's for K and V; element types ``dtypes``, default the variant's dtype),
    and an additive bias's or a boolean mask's where it comes by them (cuda_src/bulk_bias.cuh; not one broadcast over
    keys, read without a copy), encoded at a stand-in address (``geometry``: each array's (shape, byte strides) as
    the kernel reads it: packed rows as one (1, total, heads, dim) array, whose entries the kernel reads at their
    offsets); (None, ()) where the copy engine cannot take an array or the driver refuses it (warned: the plan
    copies by cp.async instead, a little slower)."""
    box_rows = box_rows or (config.block_m, config.block_n, config.block_n)
    dtypes = dtypes or (problem.variant.dtype,) * 3
    arrays = [(name, dtype, shape, strides, rows)  # q, k, v
              for name, dtype, (shape, strides), rows in zip(TensorMapArgs.ARRAYS, dtypes, geometry, box_rows)]
    # the fourth map: an additive bias's, or a boolean mask's (never both: bulk_bias)
    layout = problem.bias if problem.bias is not None else problem.mask
    bias = _tma.bias_geometry(layout, problem.seqlen_k) if bulk_bias(config, problem.variant) else None
    if bias is not None:
        shape, strides, rows = bias
        arrays.append(("bias", layout.dtype, shape, strides, rows or config.block_m))
    if not all(_tma.usable(a[2], a[3], _tma.ITEMSIZE[a[1]]) for a in arrays):
        return None, ()
    maps = TensorMapArgs()
    try:
        for name, dtype, shape, strides, rows in arrays:
            _tma.encode(maps.address_of(name), dtype, _STAND_IN_ADDRESS, shape, strides, rows)
    except RuntimeError as e:
        warnings.warn(f"cupyflash: bulk tensor copies unavailable for this call, copying by cp.async: {e}",
                      RuntimeWarning, stacklevel=2)
        return None, ()
    return maps, tuple(a[0] for a in arrays)


def _without_producer(problem):
    """The first forward tile of the problem's family whose warps all copy (a bias's tiles by cp.async), for a bias
    whose bulk copies the driver refused."""
    limits = device_limits(problem.device)
    return next(c for c in candidates("fwd", limits, problem.head_dim, problem.variant) if not c.producer_warps)


def split_count(problem, config, num_splits: int = 0) -> int:
    """The forward's number of key splits: ``num_splits`` if given (> 0), else configs.forward_splits's choice;
    always 1 for packed rows and block-sparse masks (split_kv.cuh takes dense rows without one)."""
    if num_splits > 1 and (problem.variant.rows != "dense" or problem.variant.mask_blocks):
        raise ValueError(f"num_splits={num_splits}: split keys take dense batches without a prepared block-sparse "
                         f"mask; pass num_splits=0 (automatic) or 1")
    if config.family == WGMMA_TF32.name:  # its kernels take no split (families.WgmmaTf32Family)
        if num_splits > 1:
            raise ValueError(f"num_splits={num_splits}: the float32 wgmma forward ({config}) does not split keys; "
                             f"pass num_splits=0 or 1, or config= an mma_tf32 tile")
        return 1
    if num_splits:
        return num_splits
    if problem.variant.rows != "dense" or problem.variant.mask_blocks or problem.empty:
        return 1
    blocks = problem.batch * problem.nheads * -(-problem.seqlen_q // config.block_m)
    return forward_splits(device_limits(problem.device), blocks, -(-problem.seqlen_k // config.block_n),
                          config.blocks_per_sm)


def _check_num_splits(num_splits):
    if type(num_splits) is not int or not 0 <= num_splits <= SPLIT_MAX:
        raise ValueError(f"num_splits must be an int from 0 (automatic) to {SPLIT_MAX}; got {num_splits!r}")


def _plan(q, k, v, alibi_slopes, bias, mask, key, *, dropout_p, softmax_scale, causal, window_size, softcap,
          config, mask_blocks=None, precision=None, num_splits=0):
    """Validate the call (raising before any launch) and prepare its plan; cached under ``key``. ``mask_blocks``:
    a prepared mask's uniform blocks (None for a raw mask), which may let the kernel skip reading it."""
    q, k, v = as_cuda_array(q, "q"), as_cuda_array(k, "k"), as_cuda_array(v, "v")
    alibi = None if alibi_slopes is None else as_cuda_array(alibi_slopes, "alibi_slopes")
    bias = None if bias is None else as_cuda_array(bias, "bias")
    mask = None if mask is None else as_cuda_array(mask, "mask")
    specs = [spec_of(x) for x in (q, k, v)]
    problem = describe(*specs, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                       softcap=softcap, alibi_slopes=None if alibi is None else spec_of(alibi), dropout_p=dropout_p,
                       bias=None if bias is None else spec_of(bias), mask=None if mask is None else spec_of(mask),
                       precision=precision)
    limits = device_limits(problem.device)

    def pick(variant):
        if config is None:
            return select_config("fwd", limits, problem.head_dim, problem.causal, variant, seqlen_q=problem.seqlen_q)
        check_config("fwd", config, limits, problem.head_dim, variant)
        return config

    # a block-sparse mask whose blocks hold whole tiles: only its summary is read
    problem, chosen = with_block_mask(problem, mask_blocks, lambda variant: (pick(variant),))
    _check_num_splits(num_splits)
    plan = ForwardPlan(problem, chosen[0] if chosen else pick(problem.variant), *specs, num_splits=num_splits)
    _PLANS.put(key, plan)
    return plan, (q, k, v, alibi, bias, mask)


def _lookup(q, k, v, alibi_slopes, bias, mask, dropout_p, softmax_scale, causal, window_size, softcap, config,
            precision=None, num_splits=0):
    """(plan, (q, k, v, alibi_slopes, bias, mask)): the cached plan of a call like this one, or a new one after
    validation (which also turns DLPack inputs into CuPy arrays)."""
    blocks = mask.blocks() if isinstance(mask, PreparedMask) else None
    key = _call_key((q, k, v), (alibi_slopes, bias, unwrap(mask)), dropout_p, softmax_scale, causal, window_size,
                    softcap, config, blocks, precision, num_splits)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan, (q, k, v, alibi_slopes, bias, mask)
    plan, (q, k, v, alibi_slopes, bias, mask_array) = _plan(
        q, k, v, alibi_slopes, bias, unwrap(mask), key, dropout_p=dropout_p, softmax_scale=softmax_scale,
        causal=causal, window_size=window_size, softcap=softcap, config=config, mask_blocks=blocks,
        precision=precision, num_splits=num_splits)
    return plan, (q, k, v, alibi_slopes, bias, mask if isinstance(mask, PreparedMask) else mask_array)


def _call_key(arrays, optional, *scalars):
    """The plan cache key of a call: what validation reads off its arrays (``optional`` ones may be None) and
    its scalars; None (no caching: the validating slow path) for anything that is not a CuPy array or a plain
    scalar."""
    keys = tuple(map(array_key, arrays))
    if None in keys:
        return None
    extra = tuple(None if x is None else array_key(x) for x in optional)
    if any(x is not None and key is None for x, key in zip(optional, extra)):
        return None
    rest = scalar_key(*scalars)
    return None if rest is None else (keys, extra, rest)


def flash_attn_func(q: Array, k: Array, v: Array, dropout_p: float = 0.0, softmax_scale: float | None = None,
                    causal: bool = False, window_size: Window = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Array | None = None, deterministic: bool = False, return_attn_probs: bool = False,
                    *, return_lse: bool = False, config: TileConfig | None = None, bias: Array | None = None,
                    mask: Array | PreparedMask | None = None, precision: str | None = None,
                    rng_state: tuple[int, int] | None = None, generator: _dropout.Generator | None = None,
                    num_splits: int = 0) -> Array | tuple[Array, ...]:
    """Exact softmax attention, computed tile by tile without materialising the score matrix.

    flash-attn's signature and semantics: code written for ``flash_attn.flash_attn_func`` runs unchanged.

    Args:
        q: (batch, seqlen_q, nheads, headdim) CUDA array, float16, bfloat16 (``ml_dtypes.bfloat16``) or float32;
            any headdim from 1 to 256 (one that is not a multiple of 8 costs a zero-padded copy of q, k, v).
        k, v: (batch, seqlen_k, nheads_k, headdim), same dtype and device; nheads a multiple of nheads_k
            (grouped-query attention; nheads_k = 1 is multi-query). Any strides with the head dim contiguous (a
            (B, H, S, D) array transposed to (B, S, H, D) is used in place). The layout is (B, S, H, D): a
            (B, H, S, D) array passed as is reads as seqlen = H, nheads = S, and nothing can tell; the result is
            silently wrong. Transpose first.
        dropout_p: probability in [0, 1) of dropping each attention probability (training); kept ones are
            divided by the keep probability. The pairs dropped are a function of ``rng_state`` (Philox,
            cupyflash._dropout), regenerated by the backward rather than stored. 0 compiles the generator out.
            The keep probability used is (1 - dropout_p) rounded to a multiple of 2^-32 (the scale is its
            inverse, so the output stays unbiased).
        softmax_scale: multiplier of Q K^T; default 1/sqrt(headdim). Must be positive.
        causal: query i sees key j only if j <= i + seqlen_k - seqlen_q (aligned to the bottom-right corner of
            the score matrix when seqlen_q != seqlen_k). For seqlen_q=2, seqlen_k=4 (x = visible)::

                keys ->  0 1 2 3
                q0       x x x .
                q1       x x x x

        window_size: (left, right) sliding window, -1 for unbounded: query i sees key j iff
            i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right. causal=True sets right = 0.
            Key tiles wholly outside the window are skipped, so time follows the pairs the window lets through.
        softcap: if > 0, scores become softcap * tanh(scale * q.k / softcap) before the softmax.
        alibi_slopes: float32 (nheads,) or (batch, nheads): adds -slope * |i + seqlen_k - seqlen_q - j| to the
            (capped) score, as flash-attn does.
        deterministic: accepted for flash-attn compatibility; the forward is always deterministic.
        return_attn_probs: also return the attention matrix, float32 (batch, nheads, seqlen_q, seqlen_k),
            recomputed from q, k and lse with plain CuPy operations: O(S^2) memory, for testing small problems.
            With dropout it is the dropped-out matrix (0 where dropped, kept entries divided by the keep
            probability: out = probs @ v), its pairs drawn by the same function the kernels use.
        return_lse: also return the log-sum-exp of the logits, float32 (batch, nheads, seqlen_q), natural log.
        config: force a :class:`~cupyflash.TileConfig` (a candidate from the table that fits the device).
        bias: additive bias, float16, bfloat16 or float32, broadcastable to (batch, nheads, seqlen_q, seqlen_k):
            each dim full or 1 (fewer dims are leading 1s), any strides (a ``broadcast_to`` view costs nothing).
            Added to the scaled score before the softcap (logit = softcap * tanh((scale * q.k + bias) /
            softcap)) and before ALiBi; -inf entries hide their pair. Read tile by tile, never expanded; a bias
            whose rows are not whole 16-byte chunks (seqlen_k not a multiple of 8, or 4 for float32) or whose keys
            are not contiguous is copied once per call into a padded contiguous array of its own (unbroadcast)
            shape.
        mask: boolean mask, True = may attend (SDPA's convention), broadcastable like ``bias`` (any strides), or
            a :func:`prepare_mask` of one. A summary of its tiles (computed on the GPU, one read of the mask; once
            per tile shape for a prepared mask) lets the kernels skip the tiles it hides wholly and read it only in
            tiles it cuts: time follows the visible tiles. With ``bias`` too, a pair is visible where the mask
            says so and the bias is not -inf (the mask's tiles are skipped as alone; the bias is read in the
            others). Rows with no visible key: output 0, lse -inf.
        precision: float32 inputs only (None otherwise): ``"highest"`` (the default for float32) multiplies on
            TF32 tensor cores in three passes, each value split into a TF32 part and a TF32 remainder (hi*hi +
            hi*lo + lo*hi), sums over the sequence taken one tile at a time: errors 1-3x those of plain float32
            arithmetic forward, up to 6x in the gradients at short sequences (head dims 64 and 128, measured on
            the H100, docs/usage.md "Dtypes"); ``"tf32"`` uses one pass, two to three times faster, with errors
            near TF32's rounding (10 mantissa bits, about 1e-3 relative). Sums, softmax and outputs are float32
            either way.
        rng_state: dropout's random state, a (seed, offset) pair of ints (seed < 2^64, offset < 2^32): the same
            state drops the same pairs. Pass the forward's state to :func:`flash_attn_backward`; draw one with
            ``Generator.next_state()``. Default: the next state of ``generator``.
        generator: a :class:`cupyflash.Generator` to draw the state from when ``rng_state`` is None; default
            :data:`cupyflash.default_generator` (``cupyflash.manual_seed`` re-seeds it). Unused without dropout.
        num_splits: split-KV. When batch x heads x query tiles leave SMs idle (decoding: a few queries against a
            long sequence), each query tile's keys are spread over this many blocks and their partial results
            merged by a second kernel (fp32 scratch of num_splits x batch x nheads x seqlen_q x (headdim + 1)
            floats). 0 (default): chosen from the GPU's SM count and the problem (1 when the grid fills the GPU);
            1: never; 2..128 forces that many (tests). Dense batches without a prepared block-sparse mask only.

    A query row that sees no key (causal with seqlen_q > seqlen_k, narrow windows) gets output 0 and lse -inf.

    Returns:
        out, a new contiguous (batch, seqlen_q, nheads, headdim) array of q's dtype; ``(out, lse)`` with
        ``return_lse``; ``(out, lse, probs)`` with ``return_attn_probs``. Runs on q's device's current stream.
    """
    if type(q) is not _interop.ndarray:  # another library's arrays (or the first call)
        return _interop.call(flash_attn_func, locals())
    del deterministic
    plan, (q, k, v, alibi_slopes, bias, mask) = _lookup(q, k, v, alibi_slopes, bias, mask, dropout_p,
                                                        softmax_scale, causal, window_size, softcap, config,
                                                        precision, num_splits)
    dropout = _dropout.resolve(plan.problem.dropout_p, rng_state, generator)
    out, lse = _on_device(plan.problem.device, plan.run, q, k, v, alibi_slopes, (None, None), bias, mask, dropout)
    if return_attn_probs:
        return out, lse, _attention_probs(plan.problem, q, k, lse, alibi_slopes, bias, unwrap(mask), dropout)
    return (out, lse) if return_lse else out


def _on_device(device_id, fn, *args):
    import cupy

    if cupy.cuda.runtime.getDevice() == device_id:
        return fn(*args)
    with cupy.cuda.Device(device_id):
        return fn(*args)


def _attention_probs(problem, q, k, lse, alibi_slopes, bias, mask, dropout=None):
    import cupy

    from .reference import attention_probs

    with cupy.cuda.Device(problem.device):
        return attention_probs(q, k, lse, problem.softmax_scale, problem.causal, xp=cupy,
                               window_size=problem.window, softcap=problem.softcap, alibi_slopes=alibi_slopes,
                               dtype="float32", bias=bias, mask=mask, dropout=dropout)


def plan_for(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
             alibi_slopes=None, config=None, bias=None, mask=None, precision=None, num_splits=0) -> ForwardPlan:
    """The (validated) launch plan flash_attn_func would use for these arguments (``.config``, ``.splits``)."""
    return _lookup(q, k, v, alibi_slopes, bias, mask, dropout_p, softmax_scale, causal, window_size, softcap,
                   config, precision, num_splits)[0]


def select_config_for(q: Array, k: Array, v: Array, causal: bool = False, family: str | None = None,
                      **variant) -> TileConfig:
    """The tile configuration :func:`flash_attn_func` would use for these inputs; with ``family`` (e.g.
    "mma_sm80"), the one it would use from that kernel family, to pass as ``config=``."""
    plan = plan_for(q, k, v, causal=causal, **variant)
    if family is None:
        return plan.config
    problem = plan.problem
    return select_config("fwd", device_limits(problem.device), problem.head_dim, problem.causal, problem.variant,
                         family, seqlen_q=problem.seqlen_q)
