"""Float64 ground truth and low-precision baseline for the attention kernels.

The tests judge the CUDA kernels against ``attention_reference`` (exact
softmax attention in float64) and measure how much error is acceptable with
``attention_naive_lowp`` (the same maths done naively in float16/bfloat16).
``blocked_attention`` replays the FlashAttention-2 tiling in float64 to show
that the online softmax computes the same function.  ``attention_logits`` and
``attention_probs`` rebuild the attention matrix for ``return_attn_probs``.

Layout: q is (batch, seqlen_q, nheads, headdim), k and v are
(batch, seqlen_k, nheads_k, headdim) with nheads a multiple of nheads_k
(grouped-query attention; nheads_k = 1 is multi-query), and query head h
reads kv head h // (nheads // nheads_k).  out matches q and lse is
(batch, nheads, seqlen_q) in natural log.

Every function takes the flash-attn variants as keyword-only arguments
``window_size``, ``softcap`` and ``alibi_slopes``, and the forward and
backward references also ``bias`` (float, 4 dims broadcastable to
(batch, nheads, seqlen_q, seqlen_k), each dim full or 1) and ``mask`` (bool,
the same shapes, True = may attend).  With off = seqlen_k - seqlen_q, the
logit of query i and key j is::

    x = softmax_scale * (q_i . k_j)          softmax_scale: 1/sqrt(headdim)
    x = x + bias[b, h, i, j]                 if bias is given
    x = softcap * tanh(x / softcap)          if softcap > 0
    x = x - slope[b, h] * |i + off - j|      if alibi_slopes is given

A pair is hidden where the mask is False or the bias is -inf (also under
softcap, which would otherwise turn -inf into -softcap).
``attention_varlen_reference`` takes flash-attn's packed variable-length
layout; ``mask_block_summary`` says per tile whether a mask hides all,
shows all or mixes.

ALiBi slopes are float32/float64 of shape (nheads,), (1, nheads) or (batch, nheads).  The
logit is -inf unless key j lies in query i's window,
i + off - left <= j <= i + off + right for window_size = (left, right), where
a negative side is unbounded; causal=True sets right = 0.  So the masks are
aligned to the bottom-right corner: query i is level with key i + off.  For
seqlen_q=3, seqlen_k=5::

    causal=True              window_size=(1, 0)       window_size=(1, 1)
    keys ->  0 1 2 3 4       keys ->  0 1 2 3 4       keys ->  0 1 2 3 4
    q0       x x x . .       q0       . x x . .       q0       . x x x .
    q1       x x x x .       q1       . . x x .       q1       . . x x x
    q2       x x x x x       q2       . . . x x       q2       . . . x x

A row whose window holds no key (i + off + right < 0, e.g. the top rows
when seqlen_q > seqlen_k under causal) gives out = 0 and lse = -inf rather
than NaN.
"""
import functools
import math

import numpy as np


def _namespace(x, xp):
    if xp is not None:
        return xp
    # cupy is imported only here so that CPU-only CI never needs it.
    if type(x).__module__.startswith('cupy'):
        import cupy
        return cupy
    return np


def _as_float(x, xp, dtype='float64'):
    x = xp.asarray(x)
    if x.dtype.name == 'bfloat16':
        # CuPy cannot cast ml_dtypes' bfloat16, but its bits are the top
        # half of the float32 with the same value.
        x = (x.view(xp.uint16).astype(xp.uint32) << xp.uint32(16)).view(
            xp.float32)
    return x.astype(dtype)


def _alibi_slopes(slopes, batch, nheads, xp, dtype):
    """ALiBi slopes as (batch or 1, nheads, 1, 1), to broadcast on logits."""
    slopes = _as_float(slopes, xp, dtype)
    if slopes.shape == (nheads,):
        return slopes.reshape(1, nheads, 1, 1)
    if slopes.shape in ((batch, nheads), (1, nheads)):
        return slopes.reshape(slopes.shape[0], nheads, 1, 1)
    raise ValueError(f'alibi_slopes has shape {slopes.shape}; expected '
                     f'({nheads},), (1, {nheads}) or ({batch}, {nheads})')


def _unrounded(x):
    return x


def _broadcastable(x, full, name):
    """x with 4 dims, each either full or 1, against full = (B, H, Sq, Sk)."""
    if x.ndim != 4 or any(n not in (1, f) for n, f in zip(x.shape, full)):
        raise ValueError(f'{name} has shape {tuple(x.shape)}; expected 4 dims '
                         f'broadcastable to {full} (each dim full or 1)')
    return x


def _tile(x, row0, rows, col0, cols):
    """Rows [row0, row0 + rows) and columns of a (B, H, Sq, Sk)-broadcast
    array; a broadcast (size-1) dim is left whole."""
    r = slice(None) if x.shape[2] == 1 else slice(row0, row0 + rows)
    c = slice(None) if x.shape[3] == 1 else slice(col0, col0 + cols)
    return x[:, :, r, c]


def _reduce_to(grad, shape):
    """Sum a (B, H, Sq, Sk) gradient over the dims where ``shape`` is 1."""
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


class _Problem:
    """Shapes and variants of one attention call, and the logits they define.

    Every public function builds one, so that the logit and mask rules of
    the module docstring are written once.  ``dtype`` is the float dtype the
    logits are computed in.
    """

    def __init__(self, q, k, softmax_scale, causal, window_size, softcap,
                 alibi_slopes, xp, dtype='float64', bias=None, mask=None,
                 dropout=None, dropout_batches=None):
        batch, self.seqlen_q, nheads, headdim = q.shape
        self.seqlen_k, nheads_k = k.shape[1], k.shape[2]
        if nheads % nheads_k:
            raise ValueError(f'nheads={nheads} is not a multiple of '
                             f'nheads_k={nheads_k}')
        self.group = nheads // nheads_k
        # Python floats, so that float32 logits stay float32.
        self.scale = float(1.0 / math.sqrt(headdim) if softmax_scale is None
                           else softmax_scale)
        self.softcap = float(softcap)
        self.left = window_size[0]
        self.right = 0 if causal else window_size[1]
        self.offset = self.seqlen_k - self.seqlen_q
        self.slopes = None if alibi_slopes is None else _alibi_slopes(
            alibi_slopes, batch, nheads, xp, dtype)
        self.xp, self.dtype = xp, dtype
        full = (batch, nheads, self.seqlen_q, self.seqlen_k)
        self.bias = None if bias is None else _broadcastable(
            _as_float(bias, xp, dtype), full, 'bias')
        # -inf bias entries hide their pair (also under softcap, which would
        # otherwise turn -inf into -softcap), like False in the mask.
        hidden = None if self.bias is None else self.bias == -xp.inf
        self.mask = None if mask is None else _broadcastable(
            xp.asarray(mask), full, 'mask')
        if self.mask is not None and self.mask.dtype != bool:
            raise TypeError(f'mask must be bool; got {self.mask.dtype}')
        if hidden is not None:
            self.mask = ~hidden if self.mask is None else self.mask & ~hidden
        # Dropout (cupyflash._dropout.DropoutState): P's multiplier, 0 where
        # dropped and 1 / keep probability where kept; the batch indices the
        # pairs are numbered by (a packed batch's sequence: its own index).
        self.drop = None
        if dropout is not None:
            batches = range(batch) if dropout_batches is None else dropout_batches
            self.drop = dropout.multiplier(batches, nheads, self.seqlen_q,
                                           self.seqlen_k, xp, dtype)

    def dropped(self, p):
        """P with dropout applied (P itself without dropout)."""
        return p if self.drop is None else p * self.drop

    def heads_first(self, x):
        # (B, S, H, D) -> (B, H, S, D) so that matmul batches over both.
        return _as_float(x, self.xp, self.dtype).transpose(0, 2, 1, 3)

    def kv_heads_first(self, x):
        """k or v heads-first, each kv head repeated for its query heads."""
        x = self.heads_first(x)
        return x if self.group == 1 else self.xp.repeat(x, self.group, axis=1)

    def sum_groups(self, grad):
        """Per-query-head dk or dv (B, H, S, D) -> (B, nheads_k, S, D)."""
        if self.group == 1:
            return grad
        batch, nheads, seqlen, headdim = grad.shape
        return grad.reshape(batch, nheads // self.group, self.group, seqlen,
                            headdim).sum(axis=2)

    def visible(self, rows, cols):
        """Bool (len(rows), len(cols)): which keys each query row sees."""
        level = rows[:, None] + self.offset
        seen = self.xp.ones((rows.size, cols.size), dtype=bool)
        if self.left >= 0:
            seen &= cols[None, :] >= level - self.left
        if self.right >= 0:
            seen &= cols[None, :] <= level + self.right
        return seen

    def visible_tile(self, rows, cols, row0=0, col0=0):
        """Which keys each query row sees: the window's (len(rows),
        len(cols)), and with a mask or bias that one's tile, broadcast.
        rows and cols start at row0 and col0 (given, so that device arrays
        need no read-back)."""
        seen = self.visible(rows, cols)
        if self.mask is None:
            return seen
        return seen & _tile(self.mask, row0, rows.size, col0, cols.size)

    def empty_rows(self):
        """Bool of the rows that see no key: (seqlen_q,), or broadcastable to
        (batch, nheads, seqlen_q) with a mask or a bias holding -inf.

        Emptiness comes from the mask, not from the values, so that NaN
        inputs still propagate instead of being mistaken for empty rows.
        """
        xp = self.xp
        seen = self.visible_tile(xp.arange(self.seqlen_q),
                                 xp.arange(self.seqlen_k))
        return ~seen.any(axis=-1)

    def key_range(self, row0, row1):
        """Keys [first, last) that some query row in [row0, row1) sees."""
        first = 0 if self.left < 0 else max(0, row0 + self.offset - self.left)
        last = self.seqlen_k if self.right < 0 else min(
            self.seqlen_k, row1 + self.offset + self.right)
        return first, last

    def logits(self, qh, kh, row0=0, col0=0, rnd=_unrounded):
        """Logits of queries qh (B, H, M, D) against keys kh (B, H, N, D).

        qh and kh start at query row0 and key col0; hidden entries are -inf.
        ``rnd`` is applied after each step (the naive low-precision
        baseline).  Returns (logits, tanh_slope) where tanh_slope is
        1 - tanh^2, the softcap's factor in d(logit) / d(scale * q.k), or
        None without softcap.
        """
        xp = self.xp
        rows = xp.arange(row0, row0 + qh.shape[2])
        cols = xp.arange(col0, col0 + kh.shape[2])
        x = rnd(xp.matmul(qh, kh.swapaxes(-1, -2)) * self.scale)
        if self.bias is not None:
            bias = _tile(self.bias, row0, rows.size, col0, cols.size)
            x = rnd(x + xp.where(bias == -xp.inf, 0, bias))
        tanh_slope = None
        if self.softcap > 0:
            t = xp.tanh(x / self.softcap)
            x = rnd(self.softcap * t)
            tanh_slope = 1 - t * t
        if self.slopes is not None:
            distance = xp.abs(rows[:, None] + self.offset - cols[None, :])
            x = rnd(x - self.slopes * distance.astype(self.dtype))
        return (xp.where(self.visible_tile(rows, cols, row0, col0), x, -xp.inf),
                tanh_slope)


def _softmax(s, empty, xp):
    """Row softmax and natural-log lse in the dtype of ``s``."""
    m = xp.where(empty[..., None], 0, s.max(axis=-1, keepdims=True))
    p = xp.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    l_safe = xp.where(empty[..., None], 1, l)
    p = xp.where(empty[..., None], 0, p / l_safe)
    lse = xp.where(empty, -xp.inf, (m + xp.log(l_safe))[..., 0])
    return p, lse


def _to_bshd(out):
    return out.transpose(0, 2, 1, 3)


def attention_logits(q, k, softmax_scale=None, causal=False, xp=None, *,
                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                     dtype=None, bias=None, mask=None):
    """The logits of the module docstring and the rows that see no key.

    Returns (logits, empty): logits is (batch, nheads, seqlen_q, seqlen_k)
    with -inf where hidden, empty a bool (seqlen_q,) array.  ``dtype`` None
    computes in float64; 'float32' halves the memory (for the GPU).
    """
    xp = _namespace(q, xp)
    dtype = 'float64' if dtype is None else np.dtype(dtype).name
    if dtype not in ('float32', 'float64'):
        raise ValueError(f'dtype must be float32 or float64, not {dtype}')
    problem = _Problem(q, k, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, xp, dtype, bias=bias, mask=mask)
    logits, _ = problem.logits(problem.heads_first(q),
                               problem.kv_heads_first(k))
    return logits, problem.empty_rows()


def attention_probs(q, k, lse, softmax_scale=None, causal=False, xp=None, *,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                    dtype=None, bias=None, mask=None, dropout=None):
    """The attention matrix exp(logits - lse) for a given lse.

    ``lse`` is (batch, nheads, seqlen_q), typically the kernel's own, so
    that the matrix matches what the kernel used.  Returns
    (batch, nheads, seqlen_q, seqlen_k), 0 where hidden and on rows that see
    no key; ``dtype`` as in ``attention_logits``.  With ``dropout`` (a
    cupyflash._dropout.DropoutState) the dropped-out matrix: 0 where dropped,
    kept entries divided by the keep probability (out = probs @ v).
    """
    xp = _namespace(q, xp)
    dtype = 'float64' if dtype is None else np.dtype(dtype).name
    if dtype not in ('float32', 'float64'):
        raise ValueError(f'dtype must be float32 or float64, not {dtype}')
    problem = _Problem(q, k, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, xp, dtype, bias=bias, mask=mask,
                       dropout=dropout)
    logits, _ = problem.logits(problem.heads_first(q),
                               problem.kv_heads_first(k))
    empty = problem.empty_rows()
    # Empty rows hold only -inf logits: subtracting 0 instead of their
    # lse = -inf gives exp = 0 rather than NaN.
    lse = xp.where(empty, 0, _as_float(lse, xp, logits.dtype))
    return problem.dropped(xp.exp(logits - lse[..., None]))


def attention_reference(q, k, v, softmax_scale=None, causal=False, xp=None,
                        *, window_size=(-1, -1), softcap=0.0,
                        alibi_slopes=None, bias=None, mask=None,
                        dropout=None, dropout_batches=None):
    """Exact softmax attention in float64; returns (out, lse).

    ``dropout``: a cupyflash._dropout.DropoutState; out = dropped(P) V, lse
    of the undropped logits (as the kernels return it).  ``dropout_batches``:
    the batch indices its pairs are numbered by (default 0, 1, ...).
    """
    xp = _namespace(q, xp)
    problem = _Problem(q, k, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, xp, bias=bias, mask=mask,
                       dropout=dropout, dropout_batches=dropout_batches)
    logits, _ = problem.logits(problem.heads_first(q),
                               problem.kv_heads_first(k))
    p, lse = _softmax(logits, problem.empty_rows(), xp)
    return (_to_bshd(xp.matmul(problem.dropped(p),
                               problem.kv_heads_first(v))), lse)


# Overflow to inf and casts of signalling NaNs are part of rounding, not bugs.
@np.errstate(over='ignore', invalid='ignore')
def round_to_dtype(x, dtype_name, xp=None):
    """Round ``x`` to nearest-even in ``dtype_name`` and return it as float64.

    bfloat16 goes through float32 (as ml_dtypes does), so float64 inputs are
    rounded twice; that matches how kernels receive bfloat16 data.
    """
    xp = _namespace(x, xp)
    x = xp.asarray(x)
    if dtype_name == 'float64':
        return _as_float(x, xp)
    if dtype_name == 'float32':
        return _as_float(x, xp).astype(xp.float32).astype(xp.float64)
    if dtype_name == 'float16':
        return _as_float(x, xp).astype(xp.float16).astype(xp.float64)
    if dtype_name == 'tf32':
        # TF32 keeps 10 of float32's 23 mantissa bits, rounded as cupyflash
        # stages float32 inputs at precision "tf32" and as a TFLOAT32 bulk
        # copy lands them (cuda_src/mma_tf32.cuh to_tf32_even).
        return _round_float32_bits(x, xp, 13)
    if dtype_name != 'bfloat16':
        raise ValueError(f'unsupported dtype_name {dtype_name!r}')
    return _round_float32_bits(x, xp, 16)


def _round_float32_bits(x, xp, dropped):
    """float64 of x as float32 with its low ``dropped`` bits rounded away, to
    nearest with ties to even (bfloat16: 16, TF32: 13). Bit arithmetic rather
    than ml_dtypes, so the same code runs under cupy."""
    x32 = _as_float(x, xp, 'float32')
    bits = x32.view(xp.uint32)
    odd = (bits >> xp.uint32(dropped)) & xp.uint32(1)
    half = xp.uint32((1 << (dropped - 1)) - 1)
    bits = (bits + half + odd) & xp.uint32(~((1 << dropped) - 1) & 0xFFFFFFFF)
    # A NaN with only low mantissa bits would round to inf; keep NaN/inf as is.
    rounded = xp.where(xp.isfinite(x32), bits.view(xp.float32), x32)
    return rounded.astype(xp.float64)


def attention_naive_lowp(q, k, v, softmax_scale=None, causal=False,
                         dtype_name='float16', xp=None, *,
                         window_size=(-1, -1), softcap=0.0,
                         alibi_slopes=None, bias=None, mask=None,
                         dropout=None, dropout_batches=None):
    """Attention with every intermediate rounded to ``dtype_name``.

    This is the error a straightforward low-precision implementation makes;
    the tests allow the kernels a small multiple of it.  The scaled scores,
    the softcapped and the ALiBi-biased logits are each rounded, the softmax
    runs in float32 and P and out are rounded.  Returns float64.
    """
    xp = _namespace(q, xp)
    compute, rnd = _naive_arithmetic(dtype_name, xp)
    problem = _Problem(q, k, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, xp, compute, bias=bias, mask=mask,
                       dropout=dropout, dropout_batches=dropout_batches)
    s, _ = problem.logits(problem.heads_first(q), problem.kv_heads_first(k),
                          rnd=rnd)
    empty = problem.empty_rows()
    _, lse = _softmax(s, empty, xp)
    p, _ = _softmax(s.astype(xp.float32), empty, xp)
    p = rnd(problem.dropped(rnd(p)))
    out = rnd(xp.matmul(p, problem.kv_heads_first(v)))
    return _to_bshd(out).astype(xp.float64), lse.astype(xp.float64)


def _naive_arithmetic(dtype_name, xp):
    """(compute dtype, rounding) of a naive computation in ``dtype_name``.

    16-bit and TF32: float64 arithmetic with each intermediate rounded to
    the dtype.  float32: plain float32 arithmetic throughout (products summed
    in float32 too), which is what the float32 kernels are held against.
    """
    if dtype_name == 'float32':
        return 'float32', lambda x: xp.asarray(x, dtype=xp.float32)
    return 'float64', functools.partial(round_to_dtype,
                                        dtype_name=dtype_name, xp=xp)


def _online_softmax_rows(problem, q_tile, kh, vh, row0, block_n):
    """One query tile of the FlashAttention-2 forward; (out, lse) heads-first.

    The kernel works in base 2 so that exp becomes a single exp2.
    """
    xp = problem.xp
    first_key, last_key = problem.key_range(row0, row0 + q_tile.shape[2])
    m_i = xp.full(q_tile.shape[:3], -xp.inf)
    l_i = xp.zeros(q_tile.shape[:3])
    acc = xp.zeros(q_tile.shape[:3] + vh.shape[3:])
    # Key tiles wholly outside every row's window are skipped; the rest run
    # in descending order, as the kernel does, so that the tiles cut by the
    # causal edge come first.
    for n0 in reversed(range(first_key // block_n * block_n, last_key,
                             block_n)):
        n1 = min(n0 + block_n, problem.seqlen_k)
        s, _ = problem.logits(q_tile, kh[:, :, n0:n1], row0, n0)
        s = s * math.log2(math.e)
        m_new = xp.maximum(m_i, s.max(axis=-1))
        # Rows with nothing visible yet would compute -inf - -inf = NaN.
        m_safe = xp.where(m_new == -xp.inf, 0, m_new)
        p = xp.exp2(s - m_safe[..., None])
        alpha = xp.exp2(m_i - m_safe)
        l_i = alpha * l_i + p.sum(axis=-1)
        acc = alpha[..., None] * acc + xp.matmul(p, vh[:, :, n0:n1])
        m_i = m_new
    # l_i == 0 rather than l_i > 0 so that NaN inputs stay NaN.
    empty = l_i == 0
    l_safe = xp.where(empty, 1, l_i)
    out = xp.where(empty[..., None], 0, acc / l_safe[..., None])
    lse = xp.where(empty, -xp.inf, (m_i + xp.log2(l_safe)) * math.log(2))
    return out, lse


def blocked_attention(q, k, v, softmax_scale=None, causal=False,
                      block_m=64, block_n=64, xp=None, *,
                      window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                      bias=None, mask=None):
    """Float64 replay of the FlashAttention-2 forward tiling; (out, lse)."""
    xp = _namespace(q, xp)
    problem = _Problem(q, k, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, xp, bias=bias, mask=mask)
    qh = problem.heads_first(q)
    kh, vh = problem.kv_heads_first(k), problem.kv_heads_first(v)
    out = xp.zeros(qh.shape[:3] + vh.shape[3:])
    lse = xp.full(qh.shape[:3], -xp.inf)
    for m0 in range(0, problem.seqlen_q, block_m):
        m1 = min(m0 + block_m, problem.seqlen_q)
        out[:, :, m0:m1], lse[:, :, m0:m1] = _online_softmax_rows(
            problem, qh[:, :, m0:m1], kh, vh, m0, block_n)
    return _to_bshd(out), lse


def _backward(dout, q, k, v, problem, rnd, accumulate, out=None):
    """The backward pass shared by the exact and the naive versions.

    ``rnd`` rounds each intermediate and ``accumulate`` is the dtype of the
    softmax and of D; no rounding and float64 give the exact gradient.
    ``out``: the forward output D is taken from (default: its own).
    """
    xp = problem.xp
    qh, doh = problem.heads_first(q), problem.heads_first(dout)
    kh, vh = problem.kv_heads_first(k), problem.kv_heads_first(v)
    s, tanh_slope = problem.logits(qh, kh, rnd=rnd)
    p, _ = _softmax(s.astype(accumulate, copy=False), problem.empty_rows(),
                    xp)
    p = rnd(p)
    # Dropout: O = dropped(P) V, so dV = dropped(P)^T dO and dP = dropped(dO
    # V^T) (the same multiplier); dS = P (dP - D) as without.
    kept = rnd(problem.dropped(p))
    out = rnd(xp.matmul(kept, vh)) if out is None else problem.heads_first(out)
    dv = rnd(xp.matmul(kept.swapaxes(-1, -2), doh))
    dp = rnd(problem.dropped(rnd(xp.matmul(doh, vh.swapaxes(-1, -2)))))
    d = (doh.astype(accumulate, copy=False)
         * out.astype(accumulate, copy=False)).sum(
        axis=-1, keepdims=True, dtype=accumulate).astype(xp.float64)
    ds = rnd(p * (dp - d))
    if tanh_slope is not None:
        ds = rnd(ds * tanh_slope)
    dq = rnd(problem.scale * xp.matmul(ds, kh))
    dk = rnd(problem.scale * xp.matmul(ds.swapaxes(-1, -2), qh))
    # Each kv head gets the sum over the query heads that read it.
    dk, dv = (rnd(problem.sum_groups(g)) for g in (dk, dv))
    # The bias enters the logit before the cap, so its gradient is ds itself.
    dbias = None if problem.bias is None else rnd(
        _reduce_to(ds, problem.bias.shape))
    return _to_bshd(dq), _to_bshd(dk), _to_bshd(dv), dbias


def attention_backward_reference(dout, q, k, v, softmax_scale=None,
                                 causal=False, xp=None, *,
                                 window_size=(-1, -1), softcap=0.0,
                                 alibi_slopes=None, bias=None, mask=None,
                                 return_dbias=False, out=None, dropout=None,
                                 dropout_batches=None):
    """Exact gradient of ``out`` against q, k, v in float64; (dq, dk, dv).

    With P = softmax(logits) and O = P V, per batch and query head::

        dV = P^T dO        dP = dO V^T        D = rowsum(dO * O)
        dS = P * (dP - D)  dQ = (dS * f) K    dK = (dS * f)^T Q

    where f = d(logit) / d(q.k) is softmax_scale, times 1 - tanh^2 of the
    softcap argument with softcap (ALiBi adds a constant).  With GQA, dk and
    dv are summed over the query heads of each kv head.  Masked entries and
    rows with no visible key have P = 0, so they add nothing to any
    gradient; such rows get dq = 0, not NaN.

    With ``return_dbias`` (a bias given) it also returns dbias = dS times the
    softcap's factor (the bias is added before the cap), summed over the
    bias's broadcast dims: (dq, dk, dv, dbias), dbias in the bias's shape.

    ``out``: a forward output (B, S, H, D) to take D from, as a backward
    given it does; the rest stays exact.  That gives what such a backward
    would compute with no other rounding: D from an output rounded to 16
    bits is what limits sums of dS over keys (dbias of a bias broadcast over
    keys), whose exact value is near 0.
    """
    xp = _namespace(q, xp)
    problem = _Problem(q, k, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, xp, bias=bias, mask=mask,
                       dropout=dropout, dropout_batches=dropout_batches)
    grads = _backward(dout, q, k, v, problem, _unrounded, xp.float64, out=out)
    return grads if return_dbias else grads[:3]


def attention_backward_naive_lowp(dout, q, k, v, softmax_scale=None,
                                  causal=False, dtype_name='float16', xp=None,
                                  *, window_size=(-1, -1), softcap=0.0,
                                  alibi_slopes=None, bias=None, mask=None,
                                  return_dbias=False, out=None, dropout=None,
                                  dropout_batches=None):
    """The backward pass with every intermediate rounded to ``dtype_name``.

    Like ``attention_naive_lowp``, the inputs are used as given (the caller
    rounds them); the logits (each step, as in the forward), P, O, dV, dP,
    dS, dS times the softcap's 1 - tanh^2, dQ and dK are each rounded after
    being computed in float64 from rounded operands, the softmax runs in
    float32 on the rounded logits and D = rowsum(dO * O) is kept in float32,
    as a straightforward low-precision implementation would.  With GQA the
    rounded per-head dK and dV are summed and rounded again.  Returns
    float64 (dq, dk, dv) in (batch, seqlen, nheads, headdim) layout.

    ``out``: the forward output a backward is given (B, S, H, D), from which
    D is computed instead of from its own O, as every backward that takes
    the forward's output does.  D's error then matches the tested kernel's:
    it dominates gradients that sum dS over keys (dbias of a bias broadcast
    over keys, whose exact value sum_j dS_j is often near 0).
    """
    xp = _namespace(q, xp)
    compute, rnd = _naive_arithmetic(dtype_name, xp)
    problem = _Problem(q, k, softmax_scale, causal, window_size, softcap,
                       alibi_slopes, xp, compute, bias=bias, mask=mask,
                       dropout=dropout, dropout_batches=dropout_batches)
    grads = _backward(dout, q, k, v, problem, rnd, xp.float32, out=out)
    grads = tuple(None if g is None else g.astype(xp.float64) for g in grads)
    return grads if return_dbias else grads[:3]


def _host_ints(x):
    """cu_seqlens as a host list of ints (CuPy arrays are copied back)."""
    if type(x).__module__.startswith('cupy'):
        x = x.get()
    return [int(n) for n in np.asarray(x).reshape(-1)]


def _varlen_slopes(alibi_slopes, i):
    """Sequence i's ALiBi slopes: (nheads,) as given, (batch, nheads) row i."""
    if alibi_slopes is None or alibi_slopes.ndim == 1:
        return alibi_slopes
    return alibi_slopes[i:i + 1] if alibi_slopes.shape[0] > 1 else alibi_slopes


def attention_varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k,
                               softmax_scale=None, causal=False, xp=None, *,
                               window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, dropout=None):
    """Variable-length batches in flash-attn's packed layout, in float64.

    q is (total_q, nheads, headdim), k and v (total_k, nheads_k, headdim);
    sequence i is rows cu_seqlens_q[i]:cu_seqlens_q[i + 1] of q and
    cu_seqlens_k[i]:cu_seqlens_k[i + 1] of k and v, and each sequence is its
    own problem (its own seqlen_q and seqlen_k, so causal and windows align
    to its own bottom-right corner).  ALiBi slopes are (nheads,) or
    (batch, nheads).  Returns (out (total_q, nheads, headdim), lse
    (nheads, total_q)); a sequence with no keys gives 0 and -inf.
    """
    xp = _namespace(q, xp)
    cq, ck = _host_ints(cu_seqlens_q), _host_ints(cu_seqlens_k)
    out = xp.zeros(q.shape[:2] + v.shape[2:])
    lse = xp.full((q.shape[1], q.shape[0]), -xp.inf)
    for i in range(len(cq) - 1):
        (q0, q1), (k0, k1) = cq[i:i + 2], ck[i:i + 2]
        if q1 == q0 or k1 == k0:
            continue
        o, l = attention_reference(
            q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], softmax_scale,
            causal, xp, window_size=window_size, softcap=softcap,
            alibi_slopes=_varlen_slopes(alibi_slopes, i), dropout=dropout,
            dropout_batches=[i])
        out[q0:q1], lse[:, q0:q1] = o[0], l[0]
    return out, lse


def attention_varlen_backward_reference(dout, q, k, v, cu_seqlens_q,
                                        cu_seqlens_k, softmax_scale=None,
                                        causal=False, xp=None, *,
                                        window_size=(-1, -1), softcap=0.0,
                                        alibi_slopes=None, dropout=None):
    """The exact gradient of ``attention_varlen_reference``: (dq, dk, dv) in
    the packed layouts of q, k, v, float64."""
    xp = _namespace(q, xp)
    cq, ck = _host_ints(cu_seqlens_q), _host_ints(cu_seqlens_k)
    dq = xp.zeros(q.shape)
    dk, dv = xp.zeros(k.shape), xp.zeros(v.shape)
    for i in range(len(cq) - 1):
        (q0, q1), (k0, k1) = cq[i:i + 2], ck[i:i + 2]
        if q1 == q0 or k1 == k0:
            continue
        g = attention_backward_reference(
            dout[None, q0:q1], q[None, q0:q1], k[None, k0:k1],
            v[None, k0:k1], softmax_scale, causal, xp,
            window_size=window_size, softcap=softcap,
            alibi_slopes=_varlen_slopes(alibi_slopes, i), dropout=dropout,
            dropout_batches=[i])
        dq[q0:q1], dk[k0:k1], dv[k0:k1] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv


def mask_block_summary(mask, block_m, block_n, xp=None):
    """What a tiled kernel needs to know of a boolean mask, per tile.

    ``mask`` has 4 dims (batch, nheads, seqlen_q, seqlen_k), each possibly 1
    (broadcast).  Returns int8 of shape (B or 1, H or 1, query tiles, key
    tiles): 0 where the tile hides every pair (the kernel skips it), 1 where
    it shows every pair (the unmasked path), 2 where it is mixed.  Only the
    real rows and columns count (the last tile's padding does not); a
    broadcast query or key dim stays one tile that stands for all of them.
    """
    xp = _namespace(mask, xp)
    m = xp.asarray(mask)
    if m.ndim != 4 or m.dtype != bool:
        raise ValueError(f'mask must be a 4-dim bool array; got {m.ndim} '
                         f'dims of {m.dtype}')
    anyv, allv = m, m
    for axis, block in ((2, block_m), (3, block_n)):
        n = m.shape[axis]
        if n == 1:
            continue
        pad = [(0, 0)] * 4
        pad[axis] = (0, -n % block)
        tiles = (n + block - 1) // block
        shape = list(anyv.shape)
        shape[axis:axis + 1] = [tiles, block]
        anyv = xp.pad(anyv, pad, constant_values=False).reshape(shape).any(
            axis=axis + 1)
        allv = xp.pad(allv, pad, constant_values=True).reshape(shape).all(
            axis=axis + 1)
    return xp.where(allv, 1, xp.where(anyv, 2, 0)).astype(xp.int8)
