"""Float64 ground truth and low-precision baseline for the attention kernels.

The tests judge the CUDA kernels against ``attention_reference`` (exact
softmax attention in float64) and measure how much error is acceptable with
``attention_naive_lowp`` (the same maths done naively in float16/bfloat16).
``blocked_attention`` replays the FlashAttention-2 tiling in float64 to show
that the online softmax computes the same function.

Layout: q is (batch, seqlen_q, nheads, headdim), k and v are
(batch, seqlen_k, nheads, headdim); out matches q and lse is
(batch, nheads, seqlen_q) in natural log.  The causal mask is aligned to the
bottom-right corner, so query i sees key j iff j <= i + seqlen_k - seqlen_q.
For seqlen_q=2, seqlen_k=4::

    keys ->  0 1 2 3
    q0       x x x .
    q1       x x x x

When seqlen_q > seqlen_k the top rows see no key; they give out = 0 and
lse = -inf rather than NaN.
"""
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


def _to_float64(x, xp):
    x = xp.asarray(x)
    try:
        return x.astype(xp.float64)
    except (TypeError, ValueError):
        # Some namespaces cannot cast bfloat16 straight to float64.
        return x.astype(xp.float32).astype(xp.float64)


def _to_bhsd(q, k, v, xp):
    # (B, S, H, D) -> (B, H, S, D) so that matmul batches over batch and head.
    return tuple(_to_float64(t, xp).transpose(0, 2, 1, 3) for t in (q, k, v))


def _visible(rows, cols, seqlen_q, seqlen_k):
    return cols[None, :] <= rows[:, None] + (seqlen_k - seqlen_q)


def _masked_scores(q, k, v, softmax_scale, causal, xp):
    """Float64 scaled scores with -inf where masked, plus the empty-row mask."""
    qh, kh, vh = _to_bhsd(q, k, v, xp)
    seqlen_q, seqlen_k, headdim = qh.shape[2], kh.shape[2], qh.shape[3]
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(headdim)
    s = xp.matmul(qh, kh.swapaxes(-1, -2)) * softmax_scale
    if not causal:
        return s, vh, xp.zeros(seqlen_q, dtype=bool)
    visible = _visible(xp.arange(seqlen_q), xp.arange(seqlen_k),
                       seqlen_q, seqlen_k)
    # Emptiness comes from the mask, not from the values, so that NaN inputs
    # still propagate instead of being mistaken for empty rows.
    return xp.where(visible, s, -xp.inf), vh, ~visible.any(axis=1)


def _softmax(s, empty, xp):
    """Row softmax and natural-log lse in the dtype of ``s``."""
    m = xp.where(empty[:, None], 0, s.max(axis=-1, keepdims=True))
    p = xp.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    l_safe = xp.where(empty[:, None], 1, l)
    p = xp.where(empty[:, None], 0, p / l_safe)
    lse = xp.where(empty, -xp.inf, (m + xp.log(l_safe))[..., 0])
    return p, lse


def _to_bshd(out):
    return out.transpose(0, 2, 1, 3)


def attention_reference(q, k, v, softmax_scale=None, causal=False, xp=None):
    """Exact softmax attention in float64; returns (out, lse)."""
    xp = _namespace(q, xp)
    s, vh, empty = _masked_scores(q, k, v, softmax_scale, causal, xp)
    p, lse = _softmax(s, empty, xp)
    return _to_bshd(xp.matmul(p, vh)), lse


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
        return _to_float64(x, xp)
    if dtype_name == 'float32':
        return _to_float64(x, xp).astype(xp.float32).astype(xp.float64)
    if dtype_name == 'float16':
        return _to_float64(x, xp).astype(xp.float16).astype(xp.float64)
    if dtype_name != 'bfloat16':
        raise ValueError(f'unsupported dtype_name {dtype_name!r}')
    # Bit arithmetic instead of ml_dtypes so the same code runs under cupy.
    x32 = x.astype(xp.float32)
    bits = x32.view(xp.uint32)
    lsb = (bits >> xp.uint32(16)) & xp.uint32(1)
    bits = (bits + xp.uint32(0x7FFF) + lsb) & xp.uint32(0xFFFF0000)
    # A NaN with only low mantissa bits would round to inf; keep NaN/inf as is.
    rounded = xp.where(xp.isfinite(x32), bits.view(xp.float32), x32)
    return rounded.astype(xp.float64)


def attention_naive_lowp(q, k, v, softmax_scale=None, causal=False,
                         dtype_name='float16', xp=None):
    """Attention with every intermediate rounded to ``dtype_name``.

    This is the error a straightforward low-precision implementation makes;
    the tests allow the kernels a small multiple of it.  Returns float64.
    """
    xp = _namespace(q, xp)
    s, vh, empty = _masked_scores(q, k, v, softmax_scale, causal, xp)
    s = round_to_dtype(s, dtype_name, xp)
    _, lse = _softmax(s, empty, xp)
    p, _ = _softmax(s.astype(xp.float32), empty, xp)
    p = round_to_dtype(p, dtype_name, xp)
    out = round_to_dtype(xp.matmul(p, vh), dtype_name, xp)
    return _to_bshd(out), lse


def blocked_attention(q, k, v, softmax_scale=None, causal=False,
                      block_m=64, block_n=64, xp=None):
    """Float64 replay of the FlashAttention-2 forward tiling; (out, lse)."""
    xp = _namespace(q, xp)
    qh, kh, vh = _to_bhsd(q, k, v, xp)
    batch, nheads, seqlen_q, headdim = qh.shape
    seqlen_k = kh.shape[2]
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(headdim)
    # The kernel works in base 2 so that exp becomes a single exp2.
    scale_log2 = softmax_scale * math.log2(math.e)
    out = xp.zeros((batch, nheads, seqlen_q, headdim))
    lse = xp.full((batch, nheads, seqlen_q), -xp.inf)

    for m0 in range(0, seqlen_q, block_m):
        m1 = min(m0 + block_m, seqlen_q)
        rows = xp.arange(m0, m1)
        # Key blocks past the last key the bottom row can see are skipped.
        last_key = seqlen_k if not causal else min(
            seqlen_k, m1 + seqlen_k - seqlen_q)
        n_blocks = max(0, -(-last_key // block_n))
        m_i = xp.full((batch, nheads, m1 - m0), -xp.inf)
        l_i = xp.zeros((batch, nheads, m1 - m0))
        acc = xp.zeros((batch, nheads, m1 - m0, headdim))
        # Descending, as the kernel does, so masked blocks come first.
        for nb in reversed(range(n_blocks)):
            n0, n1 = nb * block_n, min((nb + 1) * block_n, seqlen_k)
            s = xp.matmul(qh[:, :, m0:m1], kh[:, :, n0:n1].swapaxes(-1, -2))
            s = s * scale_log2
            if causal:
                visible = _visible(rows, xp.arange(n0, n1), seqlen_q, seqlen_k)
                s = xp.where(visible, s, -xp.inf)
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
        out[:, :, m0:m1] = xp.where(empty[..., None], 0, acc / l_safe[..., None])
        lse[:, :, m0:m1] = xp.where(
            empty, -xp.inf, (m_i + xp.log2(l_safe)) * math.log(2))
    return _to_bshd(out), lse


def _backward_operands(dout, q, k, v, softmax_scale, causal, xp):
    """Masked float64 scores, the (B, H, S, D) operands and the scale."""
    s, vh, empty = _masked_scores(q, k, v, softmax_scale, causal, xp)
    qh, kh, _ = _to_bhsd(q, k, v, xp)
    doh = _to_float64(dout, xp).transpose(0, 2, 1, 3)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(qh.shape[3])
    return s, empty, qh, kh, vh, doh, softmax_scale


def attention_backward_reference(dout, q, k, v, softmax_scale=None,
                                 causal=False, xp=None):
    """Exact gradient of ``out`` against q, k, v in float64; (dq, dk, dv).

    With P = softmax(scale * Q K^T + mask) and O = P V, per batch and head::

        dV = P^T dO        dP = dO V^T        D = rowsum(dO * O)
        dS = P * (dP - D)  dQ = scale * dS K  dK = scale * dS^T Q

    Masked entries and rows with no visible key have P = 0, so they add
    nothing to any gradient; such rows get dq = 0, not NaN.
    """
    xp = _namespace(q, xp)
    s, empty, qh, kh, vh, doh, scale = _backward_operands(
        dout, q, k, v, softmax_scale, causal, xp)
    p, _ = _softmax(s, empty, xp)
    out = xp.matmul(p, vh)
    dv = xp.matmul(p.swapaxes(-1, -2), doh)
    dp = xp.matmul(doh, vh.swapaxes(-1, -2))
    d = (doh * out).sum(axis=-1, keepdims=True)
    ds = p * (dp - d)
    dq = scale * xp.matmul(ds, kh)
    dk = scale * xp.matmul(ds.swapaxes(-1, -2), qh)
    return _to_bshd(dq), _to_bshd(dk), _to_bshd(dv)


def attention_backward_naive_lowp(dout, q, k, v, softmax_scale=None,
                                  causal=False, dtype_name='float16', xp=None):
    """The backward pass with every intermediate rounded to ``dtype_name``.

    Like ``attention_naive_lowp``, the inputs are used as given (the caller
    rounds them); S, P, O, dV, dP, dS, dQ and dK are each rounded after being
    computed in float64 from rounded operands, the softmax runs in float32
    on the rounded S and D = rowsum(dO * O) is kept in float32, as a
    straightforward low-precision implementation would.  Returns float64
    (dq, dk, dv) in (batch, seqlen, nheads, headdim) layout.
    """
    xp = _namespace(q, xp)
    s, empty, qh, kh, vh, doh, scale = _backward_operands(
        dout, q, k, v, softmax_scale, causal, xp)

    def rnd(x):
        return round_to_dtype(x, dtype_name, xp)

    s = rnd(s)
    p, _ = _softmax(s.astype(xp.float32), empty, xp)
    p = rnd(p)
    out = rnd(xp.matmul(p, vh))
    dv = rnd(xp.matmul(p.swapaxes(-1, -2), doh))
    dp = rnd(xp.matmul(doh, vh.swapaxes(-1, -2)))
    d = (doh.astype(xp.float32) * out.astype(xp.float32)).sum(
        axis=-1, keepdims=True, dtype=xp.float32).astype(xp.float64)
    ds = rnd(p * (dp - d))
    dq = rnd(scale * xp.matmul(ds, kh))
    dk = rnd(scale * xp.matmul(ds.swapaxes(-1, -2), qh))
    return _to_bshd(dq), _to_bshd(dk), _to_bshd(dv)
