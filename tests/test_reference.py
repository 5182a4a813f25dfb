import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from cupyflash.reference import (
    attention_backward_naive_lowp, attention_backward_reference, attention_logits,
    attention_naive_lowp, attention_probs, attention_reference, blocked_attention,
    round_to_dtype)


def _qkv(rng, batch, seqlen_q, seqlen_k, nheads, headdim, scale=1.0,
         nheads_k=None):
    nheads_k = nheads if nheads_k is None else nheads_k
    q = rng.standard_normal((batch, seqlen_q, nheads, headdim)) * scale
    k = rng.standard_normal((batch, seqlen_k, nheads_k, headdim)) * scale
    v = rng.standard_normal((batch, seqlen_k, nheads_k, headdim))
    return q, k, v


def _variant(rng, batch, nheads, window_size=(-1, -1), softcap=0.0,
             alibi=None):
    """Keyword arguments for one variant; alibi is None, 'heads' (float64
    slopes of shape (nheads,)) or 'batch' (float32, (batch, nheads))."""
    slopes = None
    if alibi == 'heads':
        slopes = rng.uniform(0.05, 1.0, nheads)
    elif alibi == 'batch':
        slopes = rng.uniform(0.05, 1.0, (batch, nheads)).astype(np.float32)
    return dict(window_size=window_size, softcap=softcap, alibi_slopes=slopes)


def _loop_sees(i, j, seqlen_q, seqlen_k, causal, window_size):
    """flash-attn's visibility rule for one (query, key) pair."""
    left, right = window_size
    if causal:
        right = 0
    level = i + seqlen_k - seqlen_q
    return ((left < 0 or j >= level - left)
            and (right < 0 or j <= level + right))


def _loop_attention(q, k, v, scale, causal, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None):
    """One query row at a time, with plain Python sums for the softmax and
    each variant applied to one logit at a time."""
    batch, seqlen_q, nheads, headdim = q.shape
    seqlen_k, nheads_k = k.shape[1], k.shape[2]
    out = np.zeros(q.shape)
    lse = np.zeros((batch, nheads, seqlen_q))
    for b, h, i in np.ndindex(batch, nheads, seqlen_q):
        kv_head = h // (nheads // nheads_k)
        keys = [j for j in range(seqlen_k)
                if _loop_sees(i, j, seqlen_q, seqlen_k, causal, window_size)]
        if not keys:
            lse[b, h, i] = -math.inf
            continue
        scores = []
        for j in keys:
            x = float(np.dot(q[b, i, h], k[b, j, kv_head])) * scale
            if softcap > 0:
                x = softcap * math.tanh(x / softcap)
            if alibi_slopes is not None:
                slope = (alibi_slopes[h] if alibi_slopes.ndim == 1
                         else alibi_slopes[b, h])
                x -= float(slope) * abs(i + seqlen_k - seqlen_q - j)
            scores.append(x)
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        lse[b, h, i] = top + math.log(total)
        for w, j in zip(weights, keys):
            out[b, i, h] += w / total * v[b, j, kv_head]
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


@pytest.mark.parametrize('spec', [
    {}, dict(softcap=0.5), dict(window_size=(1, 1)), dict(alibi='heads'),
], ids=['plain', 'softcap', 'window', 'alibi'])
def test_reference_propagates_nan(spec):
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, 1, 4, 4, 2, 8)
    variant = _variant(rng, 1, 2, **spec)
    q[0, 1, 0, 3] = np.nan
    for fn in (attention_reference, blocked_attention):
        out, lse = fn(q, k, v, **variant)
        assert np.isnan(out[0, 1, 0]).all() and np.isnan(lse[0, 0, 1])
        out[0, 1, 0] = 0
        lse[0, 0, 1] = 0
        assert np.isfinite(out).all() and np.isfinite(lse).all()

    q, k, v = _qkv(rng, 1, 4, 4, 1, 8)
    variant = _variant(rng, 1, 1, **spec)
    k[0, 3, 0, 0] = np.nan
    out, lse = attention_reference(q, k, v, causal=True, **variant)
    # Only the last query sees key 3 under the causal mask.
    assert np.isnan(out[0, 3]).all() and np.isnan(lse[0, 0, 3])
    assert np.isfinite(out[0, :3]).all() and np.isfinite(lse[0, 0, :3]).all()


# --- variants: GQA/MQA, sliding window, softcap, ALiBi ----------------------

# name: (seqlen_q, seqlen_k, nheads, nheads_k, headdim, causal, variant)
VARIANT_CASES = {
    'gqa2': (5, 7, 4, 2, 8, False, {}),
    'gqa4_causal': (6, 6, 8, 2, 3, True, {}),
    'mqa': (7, 5, 3, 1, 8, True, {}),
    'window_0_0': (6, 6, 2, 2, 8, False, dict(window_size=(0, 0))),
    'window_2_1': (5, 8, 2, 2, 8, False, dict(window_size=(2, 1))),
    'window_2_1_q_longer': (8, 5, 2, 2, 8, False, dict(window_size=(2, 1))),
    'window_past_sequence': (5, 7, 2, 2, 8, False,
                             dict(window_size=(50, 50))),
    'window_right_only': (6, 6, 2, 2, 8, False, dict(window_size=(-1, 2))),
    'window_left_only': (6, 8, 2, 2, 8, False, dict(window_size=(2, -1))),
    'causal_window_left': (7, 7, 2, 2, 8, True, dict(window_size=(2, -1))),
    'causal_overrides_right': (5, 9, 2, 2, 8, True, dict(window_size=(3, 5))),
    'softcap': (5, 6, 2, 2, 8, False, dict(softcap=1.5)),
    'softcap_causal': (6, 4, 2, 2, 8, True, dict(softcap=0.3)),
    'alibi_heads': (6, 6, 3, 3, 8, False, dict(alibi='heads')),
    'alibi_batch': (4, 7, 3, 3, 8, False, dict(alibi='batch')),
    'alibi_q_longer': (7, 4, 3, 3, 8, False, dict(alibi='heads')),
    'everything': (7, 9, 4, 2, 12, True,
                   dict(window_size=(3, -1), softcap=2.0, alibi='batch')),
    'everything_q_longer': (9, 5, 6, 3, 3, False,
                            dict(window_size=(2, 1), softcap=1.0,
                                 alibi='heads')),
    'empty_rows_causal': (8, 3, 2, 1, 8, True, dict(alibi='heads')),
    'empty_rows_window': (7, 4, 4, 2, 8, False,
                          dict(window_size=(1, 0), softcap=1.0)),
    'headdim_1': (5, 6, 2, 1, 1, True, dict(softcap=1.0)),
    'headdim_3': (4, 6, 4, 4, 3, False, dict(window_size=(1, 1))),
    'headdim_12': (6, 6, 4, 1, 12, False,
                   dict(window_size=(-1, 1), alibi='batch')),
}


def _variant_problem(name, batch=2, seed=0):
    seqlen_q, seqlen_k, nheads, nheads_k, headdim, causal, spec = (
        VARIANT_CASES[name])
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, batch, seqlen_q, seqlen_k, nheads, headdim,
                   scale=1.5, nheads_k=nheads_k)
    return q, k, v, causal, _variant(rng, batch, nheads, **spec)


def _check_against_loop(q, k, v, scale, causal, variant):
    out, lse = attention_reference(q, k, v, softmax_scale=scale,
                                   causal=causal, **variant)
    if scale is None:
        scale = 1 / math.sqrt(q.shape[-1])
    want_out, want_lse = _loop_attention(q, k, v, scale, causal, **variant)
    assert out.shape == q.shape and out.dtype == np.float64
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-13)
    empty = want_lse == -np.inf
    assert np.all(out.transpose(0, 2, 1, 3)[empty] == 0)
    assert np.all(lse[empty] == -np.inf)
    return empty


@pytest.mark.parametrize('name', list(VARIANT_CASES))
def test_variants_match_row_loop(name):
    q, k, v, causal, variant = _variant_problem(name)
    empty = _check_against_loop(q, k, v, None, causal, variant)
    if name.startswith('empty_rows'):
        assert empty.any() and not empty.all()


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 2), nheads_k=st.integers(1, 2),
       group=st.sampled_from([1, 2, 4]), seqlen_q=st.integers(1, 9),
       seqlen_k=st.integers(1, 9), headdim=st.sampled_from([1, 3, 12]),
       causal=st.booleans(), left=st.integers(-1, 10),
       right=st.integers(-1, 10), softcap=st.sampled_from([0.0, 0.5, 5.0]),
       alibi=st.sampled_from([None, 'heads', 'batch']),
       softmax_scale=st.sampled_from([None, 0.7]),
       seed=st.integers(0, 2**32 - 1))
def test_random_variants_match_row_loop(batch, nheads_k, group, seqlen_q,
                                        seqlen_k, headdim, causal, left,
                                        right, softcap, alibi, softmax_scale,
                                        seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, batch, seqlen_q, seqlen_k, nheads_k * group, headdim,
                   scale=2.0, nheads_k=nheads_k)
    variant = _variant(rng, batch, nheads_k * group, (left, right), softcap,
                       alibi)
    _check_against_loop(q, k, v, softmax_scale, causal, variant)


def test_window_identities():
    rng = np.random.default_rng(20)
    q, k, v = _qkv(rng, 2, 6, 9, 4, 8, nheads_k=2)

    def same(a, b):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)

    full = attention_reference(q, k, v)
    same(attention_reference(q, k, v, window_size=(9, 9)), full)
    same(attention_reference(q, k, v, window_size=(-1, 100)), full)
    causal = attention_reference(q, k, v, causal=True)
    same(attention_reference(q, k, v, window_size=(-1, 0)), causal)
    same(attention_reference(q, k, v, causal=True, window_size=(2, 7)),
         attention_reference(q, k, v, window_size=(2, 0)))
    # GQA is MHA with each kv head repeated for its query heads.
    same(attention_reference(q, k, v, softcap=1.0),
         attention_reference(q, np.repeat(k, 2, axis=2),
                             np.repeat(v, 2, axis=2), softcap=1.0))


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 2), nheads_k=st.integers(1, 3),
       group=st.sampled_from([1, 2]),
       seqlen_q=st.one_of(st.sampled_from([1, 17, 63, 64, 65, 70]),
                          st.integers(1, 70)),
       seqlen_k=st.one_of(st.sampled_from([1, 17, 63, 64, 65, 70]),
                          st.integers(1, 70)),
       headdim=st.sampled_from([3, 8, 16, 24, 40, 64]), causal=st.booleans(),
       window_size=st.one_of(st.just((-1, -1)),
                             st.tuples(st.integers(-1, 40),
                                       st.integers(-1, 40))),
       softcap=st.sampled_from([0.0, 0.0, 2.0]),
       alibi=st.sampled_from([None, None, 'heads', 'batch']),
       block_m=st.sampled_from([16, 32, 64]),
       block_n=st.sampled_from([16, 32, 64]),
       scale=st.sampled_from([1.0, 4.0]), seed=st.integers(0, 2**32 - 1))
@example(batch=1, nheads_k=1, group=1, seqlen_q=70, seqlen_k=5, headdim=8,
         causal=True, window_size=(-1, -1), softcap=0.0, alibi=None,
         block_m=16, block_n=16, scale=1.0, seed=0)
@example(batch=2, nheads_k=3, group=1, seqlen_q=17, seqlen_k=70, headdim=40,
         causal=True, window_size=(-1, -1), softcap=0.0, alibi=None,
         block_m=16, block_n=32, scale=4.0, seed=1)
@example(batch=2, nheads_k=1, group=2, seqlen_q=70, seqlen_k=65, headdim=8,
         causal=False, window_size=(5, 3), softcap=2.0, alibi='batch',
         block_m=16, block_n=16, scale=4.0, seed=2)
@example(batch=1, nheads_k=2, group=2, seqlen_q=70, seqlen_k=17, headdim=3,
         causal=True, window_size=(20, -1), softcap=0.0, alibi='heads',
         block_m=32, block_n=16, scale=1.0, seed=3)
# The window reaches exactly one key into the neighbouring tile on both sides.
@example(batch=1, nheads_k=1, group=1, seqlen_q=64, seqlen_k=64, headdim=8,
         causal=False, window_size=(17, 17), softcap=0.0, alibi=None,
         block_m=16, block_n=16, scale=1.0, seed=4)
def test_blocked_matches_reference(batch, nheads_k, group, seqlen_q, seqlen_k,
                                   headdim, causal, window_size, softcap,
                                   alibi, block_m, block_n, scale, seed):
    rng = np.random.default_rng(seed)
    nheads = nheads_k * group
    q, k, v = _qkv(rng, batch, seqlen_q, seqlen_k, nheads, headdim, scale,
                   nheads_k=nheads_k)
    variant = _variant(rng, batch, nheads, window_size, softcap, alibi)
    out, lse = blocked_attention(q, k, v, causal=causal, block_m=block_m,
                                 block_n=block_n, **variant)
    want_out, want_lse = attention_reference(q, k, v, causal=causal,
                                             **variant)
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)
    # Empty rows must be exactly 0 / -inf, not merely close.
    empty = want_lse == -np.inf
    assert np.all(lse[empty] == -np.inf)
    assert np.all(out.transpose(0, 2, 1, 3)[empty] == 0)


def test_blocked_skips_key_tiles_outside_the_window():
    # A NaN value multiplies P = 0 into NaN in every row of its key tile, so
    # a finite row proves that the tile was never visited.
    rng = np.random.default_rng(22)
    q, k, v = _qkv(rng, 1, 64, 64, 2, 8)
    v[0, 0, 0, 0] = np.nan
    out, _ = blocked_attention(q, k, v, block_m=16, block_n=16,
                               window_size=(8, 0))
    # Query tiles from row 32 on see keys >= 24 only; tile 0 still sees
    # key 0.
    assert np.isfinite(out[0, 32:]).all() and np.isnan(out[0, :16, 0, 0]).all()
    v[0, 0, 0, 0] = 1.0
    v[0, 63, 0, 0] = np.nan
    out, _ = blocked_attention(q, k, v, block_m=16, block_n=16,
                               window_size=(-1, 8))
    assert np.isfinite(out[0, :32]).all() and np.isnan(out[0, 48:, 0, 0]).all()


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


def test_round_tf32_to_nearest_even():
    # The 13 dropped bits below, at and above the half, under even and odd kept mantissas, both signs; expected
    # values chosen here from the two neighbours rather than by the bit trick under test.
    kept = np.array([0, 1, 0x2AB, 0x3FF], np.uint32) << np.uint32(13)
    low = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], np.uint32)
    bits = (np.uint32(127 << 23) | kept[:, None] | low[None, :]).ravel()
    bits = np.concatenate([bits, bits | np.uint32(1 << 31)])
    want = []
    for b in bits.tolist():
        down, dropped = b & ~0x1FFF, b & 0x1FFF
        up_wins = dropped > 0x1000 or (dropped == 0x1000 and (down >> 13) & 1)
        want.append(np.uint32(down + 0x2000 if up_wins else down).view(np.float32))
    got = round_to_dtype(bits.view(np.float32), 'tf32')
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.array(want, np.float64))
    assert round_to_dtype(np.float32(1 + 2.0 ** -11), 'tf32') == 1.0  # the tie goes to the even neighbour
    special = np.array([np.inf, -np.inf, np.nan, 3.4028235e38], np.float32)
    got = round_to_dtype(special, 'tf32')
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2]) and got[3] == np.inf  # overflow: inf


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


def _ml_dtypes_rounding(dtype_name):
    dtype = {'float16': np.float16, 'bfloat16': ml_dtypes.bfloat16}[dtype_name]
    via = np.float32 if dtype_name == 'bfloat16' else np.float64

    def rnd(x):
        return np.asarray(x, dtype=via).astype(dtype).astype(np.float64)
    return rnd


def _recipe_logits(q, k, rnd, scale, softcap=0.0, alibi_slopes=None):
    """Rounded logits (b, h, q, k) and the softcap's tanh, with k already
    repeated to the query heads and no mask."""
    s = rnd(np.einsum('bqhd,bkhd->bhqk', q, k) * scale)
    tanh = None
    if softcap:
        tanh = np.tanh(s / softcap)
        s = rnd(softcap * tanh)
    if alibi_slopes is not None:
        seqlen_q, seqlen_k = q.shape[1], k.shape[1]
        distance = np.abs(np.arange(seqlen_q)[:, None] + seqlen_k - seqlen_q
                          - np.arange(seqlen_k))
        s = rnd(s - alibi_slopes[..., None, None] * distance)
    return s, tanh


def _recipe_softmax(s, rnd):
    s32 = s.astype(np.float32)
    e = np.exp(s32 - s32.max(axis=-1, keepdims=True))
    return rnd(e / e.sum(axis=-1, keepdims=True))


def _lowp_recipe(q, k, v, dtype_name, **variant):
    """The naive recipe spelled out with ml_dtypes casts and einsum."""
    rnd = _ml_dtypes_rounding(dtype_name)
    group = q.shape[2] // k.shape[2]
    s, _ = _recipe_logits(q, np.repeat(k, group, axis=2), rnd,
                          1 / math.sqrt(q.shape[-1]), **variant)
    p = _recipe_softmax(s, rnd)
    return rnd(np.einsum('bhqk,bkhd->bqhd', p, np.repeat(v, group, axis=2)))


# name: (nheads_k, variant), all with 2 query heads of 64 rows and columns.
RECIPE_VARIANTS = {
    'plain': (2, {}),
    'gqa_softcap': (1, dict(softcap=2.0)),
    'alibi': (2, dict(alibi_slopes=np.array([[0.5, 0.05], [0.1, 0.25]]))),
}


@pytest.mark.parametrize('variant_name', list(RECIPE_VARIANTS))
@pytest.mark.parametrize('dtype_name', ['float16', 'bfloat16'])
def test_naive_lowp_follows_recipe(dtype_name, variant_name):
    nheads_k, variant = RECIPE_VARIANTS[variant_name]
    rng = np.random.default_rng(7)
    q, k, v = (round_to_dtype(t, dtype_name)
               for t in _qkv(rng, 2, 64, 64, 2, 64, nheads_k=nheads_k))
    out, _ = attention_naive_lowp(q, k, v, dtype_name=dtype_name, **variant)
    want = _lowp_recipe(q, k, v, dtype_name, **variant)
    # float32 exp may differ by an ulp between memory layouts, which flips a
    # rare rounding; skipping any one rounding step changes ~40% of outputs.
    assert np.mean(out != want) < 0.01
    # A flipped P rounding moves out by at most ulp(P <= 1) * |v| plus one
    # ulp of out, whatever the size of out itself.
    ulp = 2.0 ** (-7 if dtype_name == 'bfloat16' else -10)
    np.testing.assert_allclose(out, want, rtol=ulp,
                               atol=ulp / 2 * np.abs(v).max())


# --- backward ---------------------------------------------------------------



def _numeric_grads(dout, q, k, v, softmax_scale, causal, eps=1e-6,
                   **variant):
    """Central differences of L = sum(out * dout) for every element."""
    def loss(q, k, v):
        out, _ = attention_reference(q, k, v, softmax_scale=softmax_scale,
                                     causal=causal, **variant)
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


# name: (seqlen_q, seqlen_k, nheads, nheads_k, causal, variant)
BACKWARD_VARIANTS = {
    'softcap': (4, 5, 2, 2, False, dict(softcap=0.7)),
    'alibi_heads': (5, 4, 2, 2, False, dict(alibi='heads')),
    'alibi_batch': (4, 4, 2, 2, True, dict(alibi='batch')),
    'window': (5, 6, 2, 2, False, dict(window_size=(1, 1))),
    'window_empty_rows': (6, 3, 2, 2, False, dict(window_size=(2, 0))),
    'causal_window': (5, 5, 2, 2, True, dict(window_size=(2, -1))),
    'gqa': (4, 5, 4, 2, False, {}),
    'mqa_causal': (5, 4, 3, 1, True, {}),
    'everything': (5, 6, 4, 2, True,
                   dict(window_size=(2, -1), softcap=0.8, alibi='batch')),
}


@pytest.mark.parametrize('name', list(BACKWARD_VARIANTS))
def test_backward_variants_match_finite_differences(name):
    seqlen_q, seqlen_k, nheads, nheads_k, causal, spec = (
        BACKWARD_VARIANTS[name])
    rng = np.random.default_rng(30)
    # Scores of a few units, so that the softcap's tanh is well curved.
    q, k, v = _qkv(rng, 2, seqlen_q, seqlen_k, nheads, 3, scale=1.5,
                   nheads_k=nheads_k)
    variant = _variant(rng, 2, nheads, **spec)
    dout = rng.standard_normal(q.shape)
    got = attention_backward_reference(dout, q, k, v, causal=causal,
                                       **variant)
    want = _numeric_grads(dout, q, k, v, None, causal, **variant)
    for g, w, x in zip(got, want, (q, k, v)):
        assert g.shape == x.shape and g.dtype == np.float64
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    _, lse = attention_reference(q, k, v, causal=causal, **variant)
    empty = np.isneginf(lse[0, 0])
    if name == 'window_empty_rows':
        assert empty.any()
    assert np.all(got[0][:, empty] == 0)


def test_backward_gqa_sums_the_group():
    rng = np.random.default_rng(31)
    q, k, v = _qkv(rng, 2, 5, 7, 6, 8, nheads_k=2)
    dout = rng.standard_normal(q.shape)
    variant = dict(window_size=(3, 2), softcap=1.0,
                   alibi_slopes=rng.uniform(0.1, 1, 6))
    dq, dk, dv = attention_backward_reference(dout, q, k, v, **variant)
    # MHA with each kv head repeated three times, then each copy's gradient
    # summed back onto its kv head.
    dq3, dk3, dv3 = attention_backward_reference(
        dout, q, np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2), **variant)
    np.testing.assert_array_equal(dq, dq3)
    np.testing.assert_allclose(dk, dk3.reshape(2, 7, 2, 3, 8).sum(axis=3),
                               rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dv, dv3.reshape(2, 7, 2, 3, 8).sum(axis=3),
                               rtol=1e-13, atol=1e-14)


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


def _backward_lowp_recipe(dout, q, k, v, dtype_name, scale, **variant):
    """The naive backward spelled out with ml_dtypes casts and einsum."""
    rnd = _ml_dtypes_rounding(dtype_name)
    group = q.shape[2] // k.shape[2]
    k_rep, v_rep = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    s, tanh = _recipe_logits(q, k_rep, rnd, scale, **variant)
    p = _recipe_softmax(s, rnd)
    out = rnd(np.einsum('bhqk,bkhd->bqhd', p, v_rep))
    dv = rnd(np.einsum('bhqk,bqhd->bkhd', p, dout))
    dp = rnd(np.einsum('bqhd,bkhd->bhqk', dout, v_rep))
    d = np.einsum('bqhd,bqhd->bhq', dout.astype(np.float32),
                  out.astype(np.float32))
    ds = rnd(p * (dp - d[..., None].astype(np.float64)))
    if tanh is not None:
        ds = rnd(ds * (1 - tanh ** 2))
    dq = rnd(scale * np.einsum('bhqk,bkhd->bqhd', ds, k_rep))
    dk = rnd(scale * np.einsum('bhqk,bqhd->bkhd', ds, q))
    # Query head h belongs to kv head h // group.
    dk, dv = (rnd(g.reshape(k.shape[:3] + (group, -1)).sum(axis=3))
              for g in (dk, dv))
    return dq, dk, dv


@pytest.mark.parametrize('variant_name', list(RECIPE_VARIANTS))
@pytest.mark.parametrize('dtype_name', ['float16', 'bfloat16'])
def test_backward_naive_lowp_follows_recipe(dtype_name, variant_name):
    nheads_k, variant = RECIPE_VARIANTS[variant_name]
    rng = np.random.default_rng(14)
    q, k, v = (round_to_dtype(t, dtype_name)
               for t in _qkv(rng, 2, 64, 64, 2, 64, nheads_k=nheads_k))
    dout = round_to_dtype(rng.standard_normal(q.shape), dtype_name)
    got = attention_backward_naive_lowp(dout, q, k, v, softmax_scale=0.2,
                                        dtype_name=dtype_name, **variant)
    want = _backward_lowp_recipe(dout, q, k, v, dtype_name, 0.2, **variant)
    ulp = 2.0 ** (-7 if dtype_name == 'bfloat16' else -10)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        # float32 exp and sums may differ by an ulp between memory layouts,
        # which flips a rare rounding; skipping or moving any one rounding
        # step changes a large share of the outputs.
        assert np.mean(g != w) < 0.01
        np.testing.assert_allclose(g, w, rtol=4 * ulp,
                                   atol=4 * ulp * np.abs(w).max())


@pytest.mark.parametrize('name', ['gqa4_causal', 'window_2_1_q_longer',
                                  'softcap', 'alibi_batch', 'everything',
                                  'empty_rows_window'])
def test_naive_lowp_variants_close_to_reference(name):
    q, k, v, causal, variant = _variant_problem(name, seed=32)
    q, k, v = (round_to_dtype(t, 'bfloat16') for t in (q, k, v))
    dout = round_to_dtype(np.random.default_rng(33).standard_normal(q.shape),
                          'bfloat16')
    ref_out, ref_lse = attention_reference(q, k, v, causal=causal, **variant)
    ref_grads = attention_backward_reference(dout, q, k, v, causal=causal,
                                             **variant)
    seen = np.isfinite(ref_lse)
    errors = {}
    for dtype_name in ('float16', 'bfloat16'):
        out, lse = attention_naive_lowp(q, k, v, causal=causal,
                                        dtype_name=dtype_name, **variant)
        grads = attention_backward_naive_lowp(
            dout, q, k, v, causal=causal, dtype_name=dtype_name, **variant)
        assert np.array_equal(np.isfinite(lse), seen)
        errors[dtype_name] = [np.abs(out - ref_out).max(),
                              np.abs(lse[seen] - ref_lse[seen]).max()]
        for g, r in zip(grads, ref_grads):
            assert g.shape == r.shape and np.isfinite(g).all()
            errors[dtype_name].append(np.abs(g - r).max())
    for e16, ebf in zip(errors['float16'], errors['bfloat16']):
        assert 0 < e16 < ebf < 0.1


# --- attention matrix -------------------------------------------------------


@pytest.mark.parametrize('name', ['gqa2', 'mqa', 'window_2_1_q_longer',
                                  'everything', 'headdim_12'])
def test_attention_probs_rebuild_out(name):
    q, k, v, causal, variant = _variant_problem(name, seed=34)
    out, lse = attention_reference(q, k, v, causal=causal, **variant)
    logits, empty = attention_logits(q, k, causal=causal, **variant)
    probs = attention_probs(q, k, lse, causal=causal, **variant)
    batch, seqlen_q, nheads, _ = q.shape
    seqlen_k, nheads_k = k.shape[1], k.shape[2]
    assert logits.shape == probs.shape == (batch, nheads, seqlen_q, seqlen_k)
    assert logits.dtype == probs.dtype == np.float64
    np.testing.assert_array_equal(empty, np.isneginf(lse[0, 0]))
    hidden = np.array([[not _loop_sees(i, j, seqlen_q, seqlen_k, causal,
                                       variant['window_size'])
                        for j in range(seqlen_k)] for i in range(seqlen_q)])
    assert np.all(np.isneginf(logits) == hidden)
    assert np.all(probs[..., hidden] == 0)
    np.testing.assert_allclose(
        probs.sum(axis=-1), np.broadcast_to(np.where(empty, 0.0, 1.0),
                                            lse.shape),
        rtol=1e-13, atol=1e-14)
    v_per_head = np.repeat(v, nheads // nheads_k, axis=2)
    np.testing.assert_allclose(
        np.einsum('bhqk,bkhd->bqhd', probs, v_per_head), out,
        rtol=1e-12, atol=1e-13)


def test_attention_logits_float32():
    q, k, v, causal, variant = _variant_problem('everything', seed=35)
    logits64, empty64 = attention_logits(q, k, causal=causal, **variant)
    logits32, empty32 = attention_logits(q, k, causal=causal, dtype='float32',
                                         **variant)
    assert logits32.dtype == np.float32
    np.testing.assert_array_equal(empty32, empty64)
    np.testing.assert_array_equal(np.isneginf(logits32), np.isneginf(logits64))
    np.testing.assert_allclose(logits32, logits64, rtol=1e-5, atol=1e-5)
    # A float32 lse as the kernel returns it.
    _, lse = attention_reference(q, k, v, causal=causal, **variant)
    probs = attention_probs(q, k, lse.astype(np.float32), causal=causal,
                            dtype=np.float32, **variant)
    assert probs.dtype == np.float32 and not np.isnan(probs).any()
    np.testing.assert_allclose(probs.sum(axis=-1), np.ones(lse.shape),
                               rtol=1e-5)
    # bfloat16 inputs, as the GPU passes them, are read exactly.
    qb, kb = (t.astype(ml_dtypes.bfloat16) for t in (q, k))
    np.testing.assert_array_equal(
        attention_logits(qb, kb, causal=causal, dtype='float32', **variant)[0],
        attention_logits(qb.astype(np.float64), kb.astype(np.float64),
                         causal=causal, dtype='float32', **variant)[0])
    with pytest.raises(ValueError):
        attention_logits(q, k, dtype='float16')


# --- bad inputs -------------------------------------------------------------


PUBLIC_FUNCTIONS = {
    'reference': lambda q, k, v, **kw: attention_reference(q, k, v, **kw),
    'naive': lambda q, k, v, **kw: attention_naive_lowp(q, k, v, **kw),
    'blocked': lambda q, k, v, **kw: blocked_attention(q, k, v, **kw),
    'backward': lambda q, k, v, **kw: attention_backward_reference(
        q, q, k, v, **kw),
    'backward_naive': lambda q, k, v, **kw: attention_backward_naive_lowp(
        q, q, k, v, **kw),
    'logits': lambda q, k, v, **kw: attention_logits(q, k, **kw),
    'probs': lambda q, k, v, **kw: attention_probs(
        q, k, np.zeros((q.shape[0], q.shape[2], q.shape[1])), **kw),
}


@pytest.mark.parametrize('name', list(PUBLIC_FUNCTIONS))
def test_bad_shapes_raise(name):
    call = PUBLIC_FUNCTIONS[name]
    rng = np.random.default_rng(36)
    q, k, v = _qkv(rng, 2, 3, 4, 3, 8)
    call(q, k, v, alibi_slopes=np.ones(3))
    call(q, k, v, alibi_slopes=np.ones((2, 3), dtype=np.float32))
    call(q, k, v, alibi_slopes=np.ones((1, 3), dtype=np.float32))  # one slope vector for every batch
    with pytest.raises(ValueError, match='nheads'):
        call(q, k[:, :, :2], v[:, :, :2])
    for shape in [(2,), (4,), (1, 2), (3, 3), (2, 3, 1), (6,)]:
        with pytest.raises(ValueError, match='alibi_slopes'):
            call(q, k, v, alibi_slopes=np.ones(shape))


# ---- variants II: additive bias (with its gradient), boolean masks, varlen, mask block summaries ----

from cupyflash.reference import (  # noqa: E402
    attention_varlen_backward_reference, attention_varlen_reference, mask_block_summary)

BIAS_SHAPES = {'full': lambda b, h, m, n: (b, h, m, n), 'pair': lambda b, h, m, n: (1, h, m, n),
               'keys': lambda b, h, m, n: (b, 1, 1, n), 'rows': lambda b, h, m, n: (1, 1, m, 1)}


def _dense_biased(q, k, v, scale, bias=None, mask=None, softcap=0.0):
    """Softmax attention written out for one case: logits = softcap(scale q.k + bias), False/-inf hidden."""
    g = q.shape[2] // k.shape[2]
    kh, vh = (np.repeat(x, g, axis=2).transpose(0, 2, 1, 3) for x in (k, v))
    x = scale * q.transpose(0, 2, 1, 3) @ kh.swapaxes(-1, -2)
    hidden = np.zeros(x.shape, bool)
    if bias is not None:
        hidden |= np.broadcast_to(bias == -np.inf, x.shape)
        x = x + np.where(bias == -np.inf, 0, bias)
    if softcap:
        x = softcap * np.tanh(x / softcap)
    if mask is not None:
        hidden |= ~np.broadcast_to(mask, x.shape)
    x = np.where(hidden, -np.inf, x)
    m = np.where(hidden.all(-1, keepdims=True), 0, x.max(-1, keepdims=True))
    p = np.exp(x - m)
    l = p.sum(-1, keepdims=True)
    out = np.where(l > 0, p / np.where(l > 0, l, 1), 0) @ vh
    lse = np.where(l[..., 0] > 0, (m + np.log(np.where(l > 0, l, 1)))[..., 0], -np.inf)
    return out.transpose(0, 2, 1, 3), lse


@pytest.mark.parametrize('shape', list(BIAS_SHAPES))
@pytest.mark.parametrize('softcap', [0.0, 2.0])
def test_bias_is_added_before_the_cap(shape, softcap):
    rng = np.random.default_rng(30)
    q, k, v = _qkv(rng, 2, 5, 7, 4, 8, nheads_k=2)
    bias = rng.standard_normal(BIAS_SHAPES[shape](2, 4, 5, 7)) * 2
    out, lse = attention_reference(q, k, v, bias=bias, softcap=softcap)
    want_out, want_lse = _dense_biased(q, k, v, 1 / math.sqrt(8), bias=bias, softcap=softcap)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('softcap', [0.0, 3.0])
def test_false_in_the_mask_and_minus_inf_in_the_bias_both_hide(softcap):
    rng = np.random.default_rng(31)
    q, k, v = _qkv(rng, 2, 6, 9, 2, 8)
    mask = rng.random((2, 1, 6, 9)) < 0.6
    bias = np.where(mask, 0.0, -np.inf)
    by_mask = attention_reference(q, k, v, mask=mask, softcap=softcap)
    by_bias = attention_reference(q, k, v, bias=bias, softcap=softcap)
    want = _dense_biased(q, k, v, 1 / math.sqrt(8), mask=mask, softcap=softcap)
    for got in (by_mask, by_bias):  # under the cap, -inf added as a number would become -softcap, not hidden
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_rows_the_mask_hides_entirely_are_empty():
    rng = np.random.default_rng(32)
    q, k, v = _qkv(rng, 1, 4, 5, 2, 8)
    mask = np.ones((1, 2, 4, 5), bool)
    mask[0, 1, 2] = False  # head 1, query 2 sees nothing
    bias = rng.standard_normal((1, 2, 4, 5))
    out, lse = attention_reference(q, k, v, mask=mask, bias=bias, causal=True)
    assert (out[0, 2, 1] == 0).all() and lse[0, 1, 2] == -np.inf
    assert np.isfinite(out).all() and np.isfinite(lse[0, 0]).all()
    dout = rng.standard_normal(out.shape)
    dq, dk, dv, dbias = attention_backward_reference(dout, q, k, v, mask=mask, bias=bias, causal=True,
                                                     return_dbias=True)
    assert (dq[0, 2, 1] == 0).all() and (dbias[0, 1, 2] == 0).all()
    assert all(np.isfinite(g).all() for g in (dq, dk, dv, dbias))


def _numeric_bias_grad(dout, q, k, v, bias, eps=1e-6, **variant):
    g = np.zeros(bias.shape)
    b = bias.copy()
    for idx in np.ndindex(*b.shape):
        orig = b[idx]
        b[idx] = orig + eps
        hi = float(np.sum(attention_reference(q, k, v, bias=b, **variant)[0] * dout))
        b[idx] = orig - eps
        lo = float(np.sum(attention_reference(q, k, v, bias=b, **variant)[0] * dout))
        b[idx] = orig
        g[idx] = (hi - lo) / (2 * eps)
    return g


@pytest.mark.parametrize('shape', list(BIAS_SHAPES))
@pytest.mark.parametrize('variant', [{}, {'causal': True, 'softcap': 2.0}, {'window_size': (2, 1)}],
                         ids=['plain', 'causal-softcap', 'window'])
def test_bias_gradient_matches_finite_differences(shape, variant):
    rng = np.random.default_rng(33)
    q, k, v = _qkv(rng, 2, 4, 5, 2, 4, nheads_k=1)
    bias = rng.standard_normal(BIAS_SHAPES[shape](2, 2, 4, 5))
    dout = rng.standard_normal(q.shape)
    *grads, dbias = attention_backward_reference(dout, q, k, v, bias=bias, return_dbias=True, **variant)
    assert dbias.shape == bias.shape
    np.testing.assert_allclose(dbias, _numeric_bias_grad(dout, q, k, v, bias, **variant), rtol=1e-6, atol=1e-8)
    # q, k, v gradients see the bias too
    want = _numeric_grads(dout, q, k, v, None, variant.get('causal', False), bias=bias,
                          **{n: x for n, x in variant.items() if n != 'causal'})
    for got, w in zip(grads, want):
        np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-8)


def test_blocked_replay_takes_bias_and_mask():
    rng = np.random.default_rng(34)
    q, k, v = _qkv(rng, 2, 37, 53, 2, 8)
    bias = rng.standard_normal((1, 2, 37, 53))
    mask = rng.random((2, 1, 1, 53)) < 0.7
    want = attention_reference(q, k, v, bias=bias, mask=mask, causal=True, softcap=4.0)
    got = blocked_attention(q, k, v, causal=True, block_m=16, block_n=16, bias=bias, mask=mask, softcap=4.0)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('bad', [np.zeros((2, 5, 7)), np.zeros((2, 3, 5, 7)), np.zeros((1, 1, 5, 6))])
def test_bias_and_mask_shapes_must_broadcast_per_dim(bad):
    rng = np.random.default_rng(35)
    q, k, v = _qkv(rng, 2, 5, 7, 2, 8)
    with pytest.raises(ValueError, match='broadcastable'):
        attention_reference(q, k, v, bias=bad)
    with pytest.raises(ValueError, match='broadcastable'):
        attention_reference(q, k, v, mask=bad.astype(bool))
    with pytest.raises(TypeError, match='bool'):
        attention_reference(q, k, v, mask=np.ones((1, 1, 5, 7)))


def _packed(rng, lens_q, lens_k, nheads, nheads_k, headdim):
    tq, tk = sum(lens_q), sum(lens_k)
    q = rng.standard_normal((tq, nheads, headdim))
    k = rng.standard_normal((tk, nheads_k, headdim))
    v = rng.standard_normal((tk, nheads_k, headdim))
    cu = lambda lens: np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)  # noqa: E731
    return q, k, v, cu(lens_q), cu(lens_k)


@settings(max_examples=30, deadline=None)
@given(lens=st.lists(st.tuples(st.sampled_from([0, 1, 2, 5, 17]), st.sampled_from([0, 1, 3, 6, 17])),
                     min_size=1, max_size=4),
       causal=st.booleans(), alibi=st.sampled_from([None, 'heads', 'batch']), seed=st.integers(0, 2**31))
def test_varlen_is_each_sequence_on_its_own(lens, causal, alibi, seed):
    rng = np.random.default_rng(seed)
    lens_q, lens_k = [a for a, _ in lens], [b for _, b in lens]
    q, k, v, cq, ck = _packed(rng, lens_q, lens_k, 4, 2, 8)
    slopes = {None: None, 'heads': rng.uniform(0.1, 1, 4), 'batch': rng.uniform(0.1, 1, (len(lens), 4))}[alibi]
    variant = dict(causal=causal, softcap=3.0, alibi_slopes=slopes)
    out, lse = attention_varlen_reference(q, k, v, cq, ck, **variant)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = attention_varlen_backward_reference(dout, q, k, v, cq, ck, **variant)
    assert out.shape == q.shape and lse.shape == (4, q.shape[0])
    for i in range(len(lens)):
        (q0, q1), (k0, k1) = cq[i:i + 2], ck[i:i + 2]
        if q1 == q0:
            continue
        if k1 == k0:  # no keys: 0 output, -inf lse, zero gradient
            assert (out[q0:q1] == 0).all() and (lse[:, q0:q1] == -np.inf).all() and (dq[q0:q1] == 0).all()
            continue
        s = None if slopes is None or slopes.ndim == 1 else slopes[i:i + 1]
        kw = dict(variant, alibi_slopes=slopes if s is None else s)
        o, l = attention_reference(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], **kw)
        np.testing.assert_allclose(out[q0:q1], o[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(lse[:, q0:q1], l[0], rtol=1e-12, atol=1e-12)
        g = attention_backward_reference(dout[None, q0:q1], q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], **kw)
        for got, want in zip((dq[q0:q1], dk[k0:k1], dv[k0:k1]), g):
            np.testing.assert_allclose(got, want[0], rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(b=st.sampled_from([1, 2]), h=st.sampled_from([1, 3]), m=st.integers(1, 40), n=st.integers(1, 40),
       block_m=st.sampled_from([4, 8, 16]), block_n=st.sampled_from([4, 8]),
       broadcast=st.sampled_from(['none', 'rows', 'keys']), density=st.sampled_from([0.0, 0.5, 0.97, 1.0]),
       seed=st.integers(0, 2**31))
def test_mask_block_summary_matches_a_tile_loop(b, h, m, n, block_m, block_n, broadcast, density, seed):
    rng = np.random.default_rng(seed)
    shape = (b, h, 1 if broadcast == 'rows' else m, 1 if broadcast == 'keys' else n)
    # blocky masks: whole 4x4 blocks on or off, then a few flipped elements
    blocks = rng.random((b, h, -(-shape[2] // 4), -(-shape[3] // 4))) < density
    mask = np.repeat(np.repeat(blocks, 4, axis=2), 4, axis=3)[:, :, :shape[2], :shape[3]].copy()
    mask ^= rng.random(shape) < 0.02
    got = mask_block_summary(mask, block_m, block_n)
    tm = 1 if shape[2] == 1 else -(-m // block_m)
    tn = 1 if shape[3] == 1 else -(-n // block_n)
    assert got.shape == (b, h, tm, tn) and got.dtype == np.int8
    for idx in np.ndindex(b, h, tm, tn):
        r = slice(None) if shape[2] == 1 else slice(idx[2] * block_m, (idx[2] + 1) * block_m)
        c = slice(None) if shape[3] == 1 else slice(idx[3] * block_n, (idx[3] + 1) * block_n)
        tile = mask[idx[0], idx[1], r, c]
        assert got[idx] == (1 if tile.all() else 2 if tile.any() else 0), (idx, tile)


def test_backward_reference_takes_d_from_a_given_output():
    """out=: D = rowsum(dO * O) from the given output. The exact output changes nothing; a perturbed one moves
    dbias of a key-broadcast bias (exactly 0 without softcap: sum_j P_j (dP_j - D) = D_exact - D) by -delta D."""
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 5, 9, 2, 8)
    dout = rng.standard_normal(q.shape)
    bias = rng.standard_normal((1, 2, 5, 1))
    out = attention_reference(q, k, v, bias=bias)[0]
    exact = attention_backward_reference(dout, q, k, v, bias=bias, return_dbias=True)
    same = attention_backward_reference(dout, q, k, v, bias=bias, return_dbias=True, out=out)
    for a, b in zip(exact, same):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert np.abs(exact[3]).max() < 1e-12
    moved = out + 1e-3
    delta = (dout * 1e-3).sum(-1).transpose(0, 2, 1)  # (B, H, Sq): D's change
    dbias = attention_backward_reference(dout, q, k, v, bias=bias, return_dbias=True, out=moved)[3]
    np.testing.assert_allclose(dbias[..., 0], -delta, atol=1e-12)
