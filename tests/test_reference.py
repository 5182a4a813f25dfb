import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from cupyflash.reference import (
    attention_backward_naive_lowp, attention_backward_reference, attention_naive_lowp,
    attention_reference, blocked_attention, round_to_dtype)


def _qkv(rng, batch, seqlen_q, seqlen_k, nheads, headdim, scale=1.0):
    q = rng.standard_normal((batch, seqlen_q, nheads, headdim)) * scale
    k = rng.standard_normal((batch, seqlen_k, nheads, headdim)) * scale
    v = rng.standard_normal((batch, seqlen_k, nheads, headdim))
    return q, k, v


def _loop_attention(q, k, v, scale, causal):
    """One query row at a time, with plain Python sums for the softmax."""
    batch, seqlen_q, nheads, headdim = q.shape
    seqlen_k = k.shape[1]
    out = np.zeros(q.shape)
    lse = np.zeros((batch, nheads, seqlen_q))
    for b in range(batch):
        for h in range(nheads):
            for i in range(seqlen_q):
                keys = [j for j in range(seqlen_k)
                        if not causal or j <= i + seqlen_k - seqlen_q]
                if not keys:
                    lse[b, h, i] = -math.inf
                    continue
                scores = [float(np.dot(q[b, i, h], k[b, j, h])) * scale
                          for j in keys]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                lse[b, h, i] = top + math.log(total)
                for w, j in zip(weights, keys):
                    out[b, i, h] += w / total * v[b, j, h]
    return out, lse


@pytest.mark.parametrize('seqlen_q,seqlen_k,causal', [
    (1, 1, False), (1, 1, True), (3, 7, False), (3, 7, True), (5, 5, True),
    (6, 3, True), (2, 4, True), (4, 1, True), (6, 3, False),
])
def test_reference_matches_row_loop(seqlen_q, seqlen_k, causal):
    rng = np.random.default_rng(seqlen_q * 100 + seqlen_k)
    q, k, v = _qkv(rng, 2, seqlen_q, seqlen_k, 3, 8, scale=2.0)
    out, lse = attention_reference(q, k, v, causal=causal)
    want_out, want_lse = _loop_attention(q, k, v, 1 / math.sqrt(8), causal)
    assert out.shape == q.shape and out.dtype == np.float64
    assert lse.shape == (2, 3, seqlen_q) and lse.dtype == np.float64
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-13)
    n_empty = max(0, seqlen_q - seqlen_k) if causal else 0
    assert np.all(out[:, :n_empty] == 0)
    assert np.all(lse[:, :, :n_empty] == -np.inf)
    assert np.all(np.isfinite(lse[:, :, n_empty:]))


def test_reference_explicit_scale_and_input_dtypes():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 1, 5, 6, 2, 16)
    out, lse = attention_reference(q, k, v, softmax_scale=0.3, causal=True)
    want_out, want_lse = _loop_attention(q, k, v, 0.3, True)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-13)
    for dtype in (np.float16, np.float32, ml_dtypes.bfloat16):
        ql, kl, vl = (t.astype(dtype) for t in (q, k, v))
        got = attention_reference(ql, kl, vl, xp=np)
        want = attention_reference(*(t.astype(np.float64) for t in (ql, kl, vl)))
        assert got[0].dtype == np.float64
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_reference_propagates_nan():
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, 1, 4, 4, 2, 8)
    q[0, 1, 0, 3] = np.nan
    for fn in (attention_reference, blocked_attention):
        out, lse = fn(q, k, v)
        assert np.isnan(out[0, 1, 0]).all() and np.isnan(lse[0, 0, 1])
        out[0, 1, 0] = 0
        lse[0, 0, 1] = 0
        assert np.isfinite(out).all() and np.isfinite(lse).all()

    q, k, v = _qkv(rng, 1, 4, 4, 1, 8)
    k[0, 3, 0, 0] = np.nan
    out, lse = attention_reference(q, k, v, causal=True)
    # Only the last query sees key 3 under the causal mask.
    assert np.isnan(out[0, 3]).all() and np.isnan(lse[0, 0, 3])
    assert np.isfinite(out[0, :3]).all() and np.isfinite(lse[0, 0, :3]).all()


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 2), nheads=st.integers(1, 3),
       seqlen_q=st.one_of(st.sampled_from([1, 17, 63, 64, 65, 70]),
                          st.integers(1, 70)),
       seqlen_k=st.one_of(st.sampled_from([1, 17, 63, 64, 65, 70]),
                          st.integers(1, 70)),
       headdim=st.sampled_from([8, 16, 24, 40, 64]), causal=st.booleans(),
       block_m=st.sampled_from([16, 32, 64]),
       block_n=st.sampled_from([16, 32, 64]),
       scale=st.sampled_from([1.0, 4.0]), seed=st.integers(0, 2**32 - 1))
@example(batch=1, nheads=1, seqlen_q=70, seqlen_k=5, headdim=8, causal=True,
         block_m=16, block_n=16, scale=1.0, seed=0)
@example(batch=2, nheads=3, seqlen_q=17, seqlen_k=70, headdim=40, causal=True,
         block_m=16, block_n=32, scale=4.0, seed=1)
def test_blocked_matches_reference(batch, nheads, seqlen_q, seqlen_k, headdim,
                                   causal, block_m, block_n, scale, seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, batch, seqlen_q, seqlen_k, nheads, headdim, scale)
    out, lse = blocked_attention(q, k, v, causal=causal,
                                 block_m=block_m, block_n=block_n)
    want_out, want_lse = attention_reference(q, k, v, causal=causal)
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)
    # Empty rows must be exactly 0 / -inf, not merely close.
    empty = want_lse == -np.inf
    assert np.all(out.transpose(0, 2, 1, 3)[empty] == 0)


def _bf16_via_ml_dtypes(x):
    # The random bit patterns include signalling NaNs, which warn on cast.
    with np.errstate(invalid='ignore', over='ignore'):
        x32 = np.asarray(x, dtype=np.float32)
        return x32.astype(ml_dtypes.bfloat16).astype(np.float64)


def test_round_bfloat16_matches_ml_dtypes():
    rng = np.random.default_rng(3)
    hi = rng.integers(0, 2**16, size=4000, dtype=np.uint32) << 16
    # Exact ties (0x8000) with even and odd upper halves, and their neighbours.
    lows = np.array([0x8000, 0x7FFF, 0x8001, 0, 0xFFFF], dtype=np.uint32)
    bits = (hi[:, None] | lows[None, :]).ravel()
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3.4e38,
                        np.finfo(np.float32).max, 1e-40, -1e-45, 1.00390625])
    x = np.concatenate([bits.view(np.float32), special.astype(np.float32),
                        rng.standard_normal(1000).astype(np.float32)])
    got = round_to_dtype(x, 'bfloat16')
    want = _bf16_via_ml_dtypes(x)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))
    # float64 inputs go through float32 first, like ml_dtypes from float32.
    x64 = rng.standard_normal(1000) * 10.0 ** rng.integers(-30, 30, 1000)
    np.testing.assert_array_equal(round_to_dtype(x64, 'bfloat16', xp=np),
                                  _bf16_via_ml_dtypes(x64))


def test_round_bfloat16_keeps_nan_and_inf():
    # A NaN whose payload is only in the low 16 bits would turn into inf if
    # the rounding bits were applied blindly.
    nans = np.array([0x7F800001, 0xFF800001, 0x7FC00000, 0x7F807FFF],
                    dtype=np.uint32).view(np.float32)
    assert np.isnan(round_to_dtype(nans, 'bfloat16')).all()
    infs = round_to_dtype(np.array([np.inf, -np.inf]), 'bfloat16')
    np.testing.assert_array_equal(infs, [np.inf, -np.inf])
    # Overflow while rounding is a real inf, as in ml_dtypes.
    assert round_to_dtype(np.float32(3.4e38), 'bfloat16') == np.inf


def test_round_float16_float32_float64():
    ulp = 2.0 ** -10
    x = np.array([1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 1e-9,
                  65504.0, 65520.0, 1e-8, -2.5, np.nan, -np.inf])
    got = round_to_dtype(x, 'float16')
    want = [1.0, 1 + 2 * ulp, 1 + ulp, 65504.0, np.inf, 0.0, -2.5, np.nan,
            -np.inf]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    y = np.random.default_rng(4).standard_normal(1000)
    r16 = round_to_dtype(y, 'float16')
    assert np.all(np.abs(r16 - y) <= 2.0 ** -11 * np.abs(y) + 2.0 ** -25)
    np.testing.assert_array_equal(round_to_dtype(r16, 'float16'), r16)
    np.testing.assert_array_equal(round_to_dtype(y, 'float32'),
                                  y.astype(np.float32).astype(np.float64))
    assert not np.array_equal(round_to_dtype(y, 'float32'), y)
    np.testing.assert_array_equal(round_to_dtype(y, 'float64'), y)
    with pytest.raises(ValueError):
        round_to_dtype(y, 'int8')


def _lowp_errors(dtype_name, q, k, v, causal=False):
    out, lse = attention_naive_lowp(q, k, v, causal=causal,
                                    dtype_name=dtype_name)
    ref_out, ref_lse = attention_reference(q, k, v, causal=causal)
    seen = np.isfinite(ref_lse)
    assert np.array_equal(np.isfinite(lse), seen)
    lse_err = np.abs(lse[seen] - ref_lse[seen]).max()
    return out, lse, np.abs(out - ref_out).max(), lse_err


def test_naive_lowp_error_small_and_ordered():
    rng = np.random.default_rng(5)
    # Values exact in both bfloat16 and float16, so both see the same inputs.
    q, k, v = (round_to_dtype(t, 'bfloat16')
               for t in _qkv(rng, 2, 64, 64, 2, 64))
    assert all(np.array_equal(round_to_dtype(t, 'float16'), t)
               for t in (q, k, v))
    out16, lse16, err16, lse_err16 = _lowp_errors('float16', q, k, v)
    outbf, lsebf, errbf, lse_errbf = _lowp_errors('bfloat16', q, k, v)
    assert 0 < err16 < 1e-2
    assert 0 < lse_err16 < 1e-2
    assert errbf > 2 * err16
    assert lse_errbf > 2 * lse_err16
    assert out16.dtype == np.float64 and lse16.dtype == np.float64
    # The final output must itself be representable in the low precision.
    np.testing.assert_array_equal(round_to_dtype(out16, 'float16'), out16)
    np.testing.assert_array_equal(round_to_dtype(outbf, 'bfloat16'), outbf)


def test_naive_lowp_causal_empty_rows():
    rng = np.random.default_rng(6)
    q, k, v = (round_to_dtype(t, 'float16') for t in _qkv(rng, 1, 9, 4, 2, 16))
    for dtype_name in ('float16', 'bfloat16'):
        out, lse, err, lse_err = _lowp_errors(dtype_name, q, k, v, causal=True)
        assert not np.isnan(out).any() and not np.isnan(lse).any()
        assert np.all(out[:, :5] == 0) and np.all(lse[:, :, :5] == -np.inf)
        assert np.isfinite(lse[:, :, 5:]).all()
        assert 0 < err < 5e-2 and lse_err < 5e-2


def _lowp_recipe(q, k, v, dtype_name):
    """The naive recipe spelled out with ml_dtypes casts and einsum."""
    dtype = {'float16': np.float16, 'bfloat16': ml_dtypes.bfloat16}[dtype_name]
    via = np.float32 if dtype_name == 'bfloat16' else np.float64

    def rnd(x):
        return np.asarray(x, dtype=via).astype(dtype).astype(np.float64)

    s = rnd(np.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(q.shape[-1]))
    s32 = s.astype(np.float32)
    e = np.exp(s32 - s32.max(axis=-1, keepdims=True))
    p = rnd(e / e.sum(axis=-1, keepdims=True))
    return rnd(np.einsum('bhqk,bkhd->bqhd', p, v))


@pytest.mark.parametrize('dtype_name', ['float16', 'bfloat16'])
def test_naive_lowp_follows_recipe(dtype_name):
    rng = np.random.default_rng(7)
    q, k, v = (round_to_dtype(t, dtype_name)
               for t in _qkv(rng, 2, 64, 64, 2, 64))
    out, _ = attention_naive_lowp(q, k, v, dtype_name=dtype_name)
    want = _lowp_recipe(q, k, v, dtype_name)
    # float32 exp may differ by an ulp between memory layouts, which flips a
    # rare rounding; skipping any one rounding step changes ~40% of outputs.
    assert np.mean(out != want) < 0.01
    # A flipped P rounding moves out by at most ulp(P <= 1) * |v| plus one
    # ulp of out, whatever the size of out itself.
    ulp = 2.0 ** (-7 if dtype_name == 'bfloat16' else -10)
    np.testing.assert_allclose(out, want, rtol=ulp,
                               atol=ulp / 2 * np.abs(v).max())


# --- backward ---------------------------------------------------------------



def _numeric_grads(dout, q, k, v, softmax_scale, causal, eps=1e-6):
    """Central differences of L = sum(out * dout) for every element."""
    def loss(q, k, v):
        out, _ = attention_reference(q, k, v, softmax_scale=softmax_scale,
                                     causal=causal)
        return float(np.sum(out * dout))

    grads = []
    for which in range(3):
        args = [q.copy(), k.copy(), v.copy()]
        x = args[which]
        g = np.zeros(x.shape)
        for idx in np.ndindex(*x.shape):
            orig = x[idx]
            x[idx] = orig + eps
            hi = loss(*args)
            x[idx] = orig - eps
            lo = loss(*args)
            x[idx] = orig
            g[idx] = (hi - lo) / (2 * eps)
        grads.append(g)
    return grads


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 2), nheads=st.integers(1, 2),
       seqlen_q=st.integers(1, 6), seqlen_k=st.integers(1, 6),
       headdim=st.integers(2, 5), causal=st.booleans(),
       softmax_scale=st.sampled_from([None, 0.3, 1.7]),
       seed=st.integers(0, 2**32 - 1))
@example(batch=2, nheads=2, seqlen_q=6, seqlen_k=2, headdim=3, causal=True,
         softmax_scale=None, seed=0)
@example(batch=1, nheads=1, seqlen_q=2, seqlen_k=5, headdim=4, causal=True,
         softmax_scale=1.7, seed=1)
@example(batch=1, nheads=2, seqlen_q=3, seqlen_k=1, headdim=2, causal=False,
         softmax_scale=0.3, seed=2)
def test_backward_reference_matches_finite_differences(
        batch, nheads, seqlen_q, seqlen_k, headdim, causal, softmax_scale,
        seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, batch, seqlen_q, seqlen_k, nheads, headdim)
    dout = rng.standard_normal(q.shape)
    got = attention_backward_reference(dout, q, k, v,
                                       softmax_scale=softmax_scale,
                                       causal=causal)
    want = _numeric_grads(dout, q, k, v, softmax_scale, causal)
    for g, w, x in zip(got, want, (q, k, v)):
        assert g.shape == x.shape and g.dtype == np.float64
        assert np.isfinite(g).all()
        # Central differences are good to ~1e-9 here; a wrong gradient is
        # off by O(|g|), and the gradients are O(1).
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    n_empty = max(0, seqlen_q - seqlen_k) if causal else 0
    assert np.all(got[0][:, :n_empty] == 0)


def _loop_backward(dout, q, k, v, scale, causal):
    """Gradients one query row at a time through the softmax Jacobian."""
    batch, seqlen_q, nheads, headdim = q.shape
    seqlen_k = k.shape[1]
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for b in range(batch):
        for h in range(nheads):
            for i in range(seqlen_q):
                keys = [j for j in range(seqlen_k)
                        if not causal or j <= i + seqlen_k - seqlen_q]
                if not keys:
                    continue
                kk, vv = k[b, keys, h], v[b, keys, h]
                s = kk @ q[b, i, h] * scale
                p = np.exp(s - s.max())
                p /= p.sum()
                jac = np.diag(p) - np.outer(p, p)   # d p / d s
                ds = jac @ (vv @ dout[b, i, h])
                dq[b, i, h] = scale * ds @ kk
                dk[b, keys, h] += scale * np.outer(ds, q[b, i, h])
                dv[b, keys, h] += np.outer(p, dout[b, i, h])
    return dq, dk, dv


@pytest.mark.parametrize('seqlen_q,seqlen_k,causal', [
    (7, 7, False), (7, 7, True), (3, 9, True), (9, 3, True), (9, 3, False),
    (1, 5, True), (5, 1, True),
])
def test_backward_reference_matches_row_loop(seqlen_q, seqlen_k, causal):
    rng = np.random.default_rng(10 + seqlen_q * 10 + seqlen_k)
    q, k, v = _qkv(rng, 2, seqlen_q, seqlen_k, 3, 16, scale=1.5)
    dout = rng.standard_normal(q.shape)
    got = attention_backward_reference(dout, q, k, v, causal=causal)
    want = _loop_backward(dout, q, k, v, 0.25, causal)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)


def test_backward_reference_empty_rows():
    rng = np.random.default_rng(11)
    seqlen_q, seqlen_k, n_empty = 9, 4, 5
    q, k, v = _qkv(rng, 2, seqlen_q, seqlen_k, 2, 8)
    dout = rng.standard_normal(q.shape)
    dq, dk, dv = attention_backward_reference(dout, q, k, v, causal=True)
    assert np.isfinite(dq).all() and np.isfinite(dk).all()
    assert np.isfinite(dv).all()
    assert np.all(dq[:, :n_empty] == 0)
    assert np.all(dq[:, n_empty + 1:] != 0)
    # The empty rows' q and dout must not reach dk and dv at all ...
    q2, dout2 = q.copy(), dout.copy()
    q2[:, :n_empty] = rng.standard_normal(q2[:, :n_empty].shape) * 100
    dout2[:, :n_empty] = rng.standard_normal(dout2[:, :n_empty].shape) * 100
    dq2, dk2, dv2 = attention_backward_reference(dout2, q2, k, v, causal=True)
    np.testing.assert_array_equal(dq2, dq)
    np.testing.assert_array_equal(dk2, dk)
    np.testing.assert_array_equal(dv2, dv)
    # ... and dropping them leaves a square causal problem with the same
    # alignment (query i' sees keys j <= i'), hence the same gradients.
    dq3, dk3, dv3 = attention_backward_reference(
        dout[:, n_empty:], q[:, n_empty:], k, v, causal=True)
    np.testing.assert_allclose(dq[:, n_empty:], dq3, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dk, dk3, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dv, dv3, rtol=1e-13, atol=1e-14)
    # The first non-empty row sees only key 0, so it gets no dq (softmax of a
    # single score is constant) up to roundoff in dP - D.
    np.testing.assert_allclose(dq[:, n_empty], 0, atol=1e-14)
    for dtype_name in ('float16', 'bfloat16'):
        lq, lk, lv = attention_backward_naive_lowp(
            dout, q, k, v, causal=True, dtype_name=dtype_name)
        assert np.isfinite(lq).all() and np.isfinite(lk).all()
        assert np.isfinite(lv).all()
        assert np.all(lq[:, :n_empty] == 0)
        assert np.all(lq[:, n_empty + 1:] != 0)


def test_backward_reference_input_dtypes():
    rng = np.random.default_rng(12)
    q, k, v = _qkv(rng, 1, 5, 6, 2, 16)
    dout = rng.standard_normal(q.shape)
    for dtype in (np.float16, np.float32, ml_dtypes.bfloat16):
        low = [t.astype(dtype) for t in (dout, q, k, v)]
        got = attention_backward_reference(*low, softmax_scale=0.3,
                                           causal=True, xp=np)
        want = attention_backward_reference(
            *(t.astype(np.float64) for t in low), softmax_scale=0.3,
            causal=True)
        for g, w in zip(got, want):
            assert g.dtype == np.float64
            np.testing.assert_array_equal(g, w)


def _backward_lowp_errors(dtype_name, dout, q, k, v, causal=False):
    got = attention_backward_naive_lowp(dout, q, k, v, causal=causal,
                                        dtype_name=dtype_name)
    ref = attention_backward_reference(dout, q, k, v, causal=causal)
    return got, [np.abs(g - r).max() for g, r in zip(got, ref)]


@pytest.mark.parametrize('causal', [False, True])
def test_backward_naive_lowp_error_small_and_ordered(causal):
    rng = np.random.default_rng(13)
    # Values exact in both bfloat16 and float16, so both see the same inputs.
    q, k, v = (round_to_dtype(t, 'bfloat16')
               for t in _qkv(rng, 2, 32, 32, 2, 32))
    dout = round_to_dtype(rng.standard_normal(q.shape), 'bfloat16')
    assert all(np.array_equal(round_to_dtype(t, 'float16'), t)
               for t in (dout, q, k, v))
    g16, err16 = _backward_lowp_errors('float16', dout, q, k, v, causal)
    gbf, errbf = _backward_lowp_errors('bfloat16', dout, q, k, v, causal)
    for e16, ebf in zip(err16, errbf):
        assert 0 < e16 < 5e-2
        assert ebf > 2 * e16
    for g in g16 + gbf:
        assert g.dtype == np.float64 and g.shape[1] == 32
    # The gradients themselves are results in the low precision.
    for g in g16:
        np.testing.assert_array_equal(round_to_dtype(g, 'float16'), g)
    for g in gbf:
        np.testing.assert_array_equal(round_to_dtype(g, 'bfloat16'), g)
    # With no rounding beyond the float32 softmax and D, the recipe is the
    # exact gradient to float32 accuracy: wrong maths would be off by O(1).
    _, err64 = _backward_lowp_errors('float64', dout, q, k, v, causal)
    assert max(err64) < 1e-5


def _backward_lowp_recipe(dout, q, k, v, dtype_name, scale):
    """The naive backward spelled out with ml_dtypes casts and einsum."""
    dtype = {'float16': np.float16, 'bfloat16': ml_dtypes.bfloat16}[dtype_name]
    via = np.float32 if dtype_name == 'bfloat16' else np.float64

    def rnd(x):
        return np.asarray(x, dtype=via).astype(dtype).astype(np.float64)

    s = rnd(np.einsum('bqhd,bkhd->bhqk', q, k) * scale)
    s32 = s.astype(np.float32)
    e = np.exp(s32 - s32.max(axis=-1, keepdims=True))
    p = rnd(e / e.sum(axis=-1, keepdims=True))
    out = rnd(np.einsum('bhqk,bkhd->bqhd', p, v))
    dv = rnd(np.einsum('bhqk,bqhd->bkhd', p, dout))
    dp = rnd(np.einsum('bqhd,bkhd->bhqk', dout, v))
    d = np.einsum('bqhd,bqhd->bhq', dout.astype(np.float32),
                  out.astype(np.float32))
    ds = rnd(p * (dp - d[..., None].astype(np.float64)))
    dq = rnd(scale * np.einsum('bhqk,bkhd->bqhd', ds, k))
    dk = rnd(scale * np.einsum('bhqk,bqhd->bkhd', ds, q))
    return dq, dk, dv


@pytest.mark.parametrize('dtype_name', ['float16', 'bfloat16'])
def test_backward_naive_lowp_follows_recipe(dtype_name):
    rng = np.random.default_rng(14)
    q, k, v = (round_to_dtype(t, dtype_name)
               for t in _qkv(rng, 2, 64, 64, 2, 64))
    dout = round_to_dtype(rng.standard_normal(q.shape), dtype_name)
    got = attention_backward_naive_lowp(dout, q, k, v, softmax_scale=0.2,
                                        dtype_name=dtype_name)
    want = _backward_lowp_recipe(dout, q, k, v, dtype_name, 0.2)
    ulp = 2.0 ** (-7 if dtype_name == 'bfloat16' else -10)
    for g, w in zip(got, want):
        # float32 exp and sums may differ by an ulp between memory layouts,
        # which flips a rare rounding; skipping or moving any one rounding
        # step changes a large share of the outputs.
        assert np.mean(g != w) < 0.01
        np.testing.assert_allclose(g, w, rtol=4 * ulp,
                                   atol=4 * ulp * np.abs(w).max())
