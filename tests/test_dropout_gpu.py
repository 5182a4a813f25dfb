"""Dropout on a GPU: the kernels' own mask pair for pair against DropoutState.keep (forward, dK/dV and both dQ
paths, read off one-hot inputs), forward and backward with dropout against the float64 reference with the same
state (every dtype and precision, the variants, GQA with split groups, packed batches, random problems), keep rate
and unbiasedness, reproducibility (rng_state, Generator, flash_attn_vjp), return_attn_probs, errors before any
launch, and dropout_p=0 unchanged; NaN-poisoned outputs."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import requires_gpu
from cupyflash._accuracy import (HOST_DTYPES, PRECISION, assert_within_bounds, check_against_reference,
                                 check_grads_against_reference, forward_errors, grad_errors, random_array,
                                 to_float64)
from gpu_helpers import backward_mode, make_bias, make_mask, make_problem
from test_variants_gpu import alibi
from test_varlen_gpu import offsets

import cupyflash as cf
from cupyflash._dropout import DropoutState

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

BIG_SEED = 0x1234_5678_9ABC_DEF0  # both halves of the Philox key nonzero
HEAD_DIM = 128  # one kernel head dim for most tests, so that each dropout variant compiles once


def bits(x):
    """x's raw bits, for bitwise comparisons whatever the dtype."""
    return x.view(f"uint{8 * x.dtype.itemsize}")


def same_bits(a, b):
    import cupy

    return bool(cupy.array_equal(bits(a), bits(b)))


def device(host, dtype):
    """A host array as test dtype ``dtype`` on the GPU (exact for the 0s and 1s used here)."""
    import cupy

    a = np.ascontiguousarray(host).astype(HOST_DTYPES[dtype])
    return cupy.asarray(a.view(np.uint16)).view(a.dtype) if a.itemsize == 2 else cupy.asarray(a)


def visible(seqlen_q, seqlen_k, causal=False, window_size=(-1, -1)):
    """Host bool (seqlen_q, seqlen_k): which keys each query sees (bottom-right aligned, reference.py's rule)."""
    left, right = window_size
    right = 0 if causal else right
    level = np.arange(seqlen_q)[:, None] + seqlen_k - seqlen_q
    j = np.arange(seqlen_k)[None, :]
    seen = np.ones((seqlen_q, seqlen_k), bool)
    if left >= 0:
        seen &= j >= level - left
    if right >= 0:
        seen &= j <= level + right
    return seen


# --- 1. the kernels' mask, exactly ---------------------------------------------------------------------------------
# With q = 0 every visible probability of a row is 1 / n (n: the keys it sees), so one-hot values and upstream
# gradients read off each kept pair's weight: out[b, i, h, j] = keep_ij scale / n_i with v[b, j, :, :] = e_j, and
# dv[b, j, h, i] = keep_ij scale / n_i with dout[b, i, :, :] = e_i. Every length is at most the head dim.

# name: batch, seqlen_q, seqlen_k, nheads, nheads_k, variant
MASK_CASES = {
    "causal_gqa_more_queries": (2, 100, 37, 4, 2, dict(causal=True)),  # rows 0..62 see no key
    "more_keys": (3, 37, 100, 3, 3, {}),
    "window_mqa": (2, 90, 128, 2, 1, dict(window_size=(20, 5))),
}
EXACT_DTYPES = ["float16", "float32"]  # float32: precision "highest"
EXACT_RTOL = {"float16": 2.0**-9, "float32": 1e-5}  # 1 / n and scale rounded to the output dtype, and once more


def host_mask(state, batch, nheads, seqlen_q, seqlen_k, variant):
    """(kept and visible, bool (B, H, Sq, Sk); visible pairs, (Sq, Sk); keys each row sees, (Sq,))."""
    seen = visible(seqlen_q, seqlen_k, variant.get("causal", False), variant.get("window_size", (-1, -1)))
    return state.keep(range(batch), nheads, seqlen_q, seqlen_k) & seen, seen, seen.sum(axis=1)


def one_hot_rows(batch, seqlen, nheads, dtype, column=None):
    """(batch, seqlen, nheads, HEAD_DIM) with row s = e_s (or e_column for every row)."""
    rows = np.eye(seqlen, HEAD_DIM) if column is None else np.eye(1, HEAD_DIM, column).repeat(seqlen, axis=0)
    return device(np.broadcast_to(rows[None, :, None, :], (batch, seqlen, nheads, HEAD_DIM)), dtype)


def zero_queries_problem(case, dtype, seed):
    """q = 0, random keys and values (q = 0 makes the keys irrelevant), the rng_state and its DropoutState."""
    batch, seqlen_q, seqlen_k, nheads, nheads_k, variant = MASK_CASES[case]
    rng = np.random.default_rng(seed)
    k, _ = random_array(rng, (batch, seqlen_k, nheads_k, HEAD_DIM), dtype)
    v, _ = random_array(rng, (batch, seqlen_k, nheads_k, HEAD_DIM), dtype)
    rng_state = (BIG_SEED + seed, 1000 * seed + 7)
    return device(np.zeros((batch, seqlen_q, nheads, HEAD_DIM)), dtype), k, v, rng_state, DropoutState(0.3,
                                                                                                       *rng_state)


@pytest.mark.parametrize("case", list(MASK_CASES))
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_forward_keeps_exactly_the_host_mask(dtype, case):
    batch, seqlen_q, seqlen_k, nheads, nheads_k, variant = MASK_CASES[case]
    q, k, _, rng_state, state = zero_queries_problem(case, dtype, 1)
    v = one_hot_rows(batch, seqlen_k, nheads_k, dtype)
    out = cf.flash_attn_func(q, k, v, 0.3, rng_state=rng_state, precision=PRECISION[dtype], **variant)
    got = to_float64(out).get().transpose(0, 2, 1, 3)  # (B, H, Sq, D): column j holds key j's weight
    kept, _, n = host_mask(state, batch, nheads, seqlen_q, seqlen_k, variant)
    assert kept.any() and (~kept).any()
    np.testing.assert_array_equal(got[..., :seqlen_k] != 0, kept)
    assert (got[..., seqlen_k:] == 0).all()
    want = np.where(kept, state.scale / np.maximum(n, 1)[:, None], 0.0)
    np.testing.assert_allclose(got[..., :seqlen_k], want, rtol=EXACT_RTOL[dtype], atol=0)


@pytest.mark.parametrize("case", list(MASK_CASES))
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_dkdv_kernel_keeps_exactly_the_host_mask(dtype, case):
    batch, seqlen_q, seqlen_k, nheads, nheads_k, variant = MASK_CASES[case]
    q, k, v, rng_state, state = zero_queries_problem(case, dtype, 2)
    dout = one_hot_rows(batch, seqlen_q, nheads, dtype)
    kw = dict(precision=PRECISION[dtype], **variant)
    out, lse = cf.flash_attn_func(q, k, v, 0.3, rng_state=rng_state, return_lse=True, **kw)
    dq, dk, dv = cf.flash_attn_backward(dout, q, k, v, out, lse, dropout_p=0.3, rng_state=rng_state, atomic_dq=True,
                                        **kw)
    kept, _, n = host_mask(state, batch, nheads, seqlen_q, seqlen_k, variant)
    # dv[b, j, hk, i] sums the group's heads: (heads of the group that keep (i, j)) scale / n_i
    count = kept.reshape(batch, nheads_k, nheads // nheads_k, seqlen_q, seqlen_k).sum(axis=2)
    got = to_float64(dv).get().transpose(0, 2, 3, 1)  # (B, Hk, D, Sk): row i holds query i's weight
    np.testing.assert_array_equal(got[:, :, :seqlen_q] != 0, count > 0)
    assert (got[:, :, seqlen_q:] == 0).all()
    want = count * state.scale / np.maximum(n, 1)[:, None]
    np.testing.assert_allclose(got[:, :, :seqlen_q], want, rtol=EXACT_RTOL[dtype], atol=0)
    assert bool((to_float64(dk) == 0).all())  # dK = softmax_scale dS^T Q, Q = 0
    assert bool(np.isfinite(to_float64(dq).get()).all())


@pytest.mark.parametrize("mode", ["deterministic", "atomic"])
@pytest.mark.parametrize("case", list(MASK_CASES))
@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_dq_keeps_exactly_the_host_mask(dtype, case, mode):
    """The dQ kernel (deterministic) and the dK/dV kernel's atomic dQ: with k[b, j] = e_j, v = dout = e_0 in every
    row, dP = dO V^T = 1 and D_i = out[i, 0], so dS_ij = P_ij (Z_ij - D_i) = (Z_ij - D_i) / n_i and
    dq[b, i, h, j] = softmax_scale dS_ij: Z = dq n / softmax_scale + D."""
    batch, seqlen_q, seqlen_k, nheads, nheads_k, variant = MASK_CASES[case]
    q, _, _, rng_state, state = zero_queries_problem(case, dtype, 3)
    k = one_hot_rows(batch, seqlen_k, nheads_k, dtype)
    v = one_hot_rows(batch, seqlen_k, nheads_k, dtype, column=0)
    dout = one_hot_rows(batch, seqlen_q, nheads, dtype, column=0)
    kw = dict(precision=PRECISION[dtype], **variant)
    out, lse = cf.flash_attn_func(q, k, v, 0.3, rng_state=rng_state, return_lse=True, **kw)
    dq, _, _ = cf.flash_attn_backward(dout, q, k, v, out, lse, dropout_p=0.3, rng_state=rng_state, **kw,
                                      **backward_mode(mode))
    kept, seen, n = host_mask(state, batch, nheads, seqlen_q, seqlen_k, variant)
    got = to_float64(dq).get().transpose(0, 2, 1, 3)  # (B, H, Sq, D): column j is key j's dS
    assert (got[..., seqlen_k:] == 0).all()
    got = got[..., :seqlen_k]
    assert (got[:, :, ~seen] == 0).all()  # hidden pairs add nothing
    d = to_float64(out).get().transpose(0, 2, 1, 3)[..., :1]
    z = got * n[:, None] * math.sqrt(HEAD_DIM) + d
    np.testing.assert_array_equal((z > state.scale / 2)[:, :, seen], kept[:, :, seen])
    np.testing.assert_allclose(z[:, :, seen], (kept * state.scale)[:, :, seen], rtol=0,
                               atol=4 * EXACT_RTOL[dtype] * state.scale)


# --- 2. against the float64 reference with the same DropoutState --------------------------------------------------

def run_dropout(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, causal, p, rng_state,
                mode=None, kv_splits=None, bias=None, mask=None, **variant):
    """Forward (and with a dQ mode the backward) with dropout against the float64 reference dropping the same
    pairs, by _accuracy's criterion. ``bias``, ``mask``: (device array, reference array) pairs."""
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k,
                                                            head_dim, dtype)
    state = DropoutState(p, *rng_state)
    dev, ref = dict(variant), dict(variant, dropout=state)
    for name, pair in (("bias", bias), ("mask", mask)):
        if pair is not None:
            dev[name], ref[name] = pair
    precision = PRECISION[dtype]
    out, lse = cf.flash_attn_func(q, k, v, p, causal=causal, return_lse=True, precision=precision,
                                  rng_state=rng_state, **dev)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (batch, nheads, seqlen_q)
    scale = 1 / math.sqrt(head_dim)
    check_against_reference(out, lse, q64, k64, v64, scale, causal, dtype, **ref)
    if mode is None:
        return
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, dropout_p=p, rng_state=rng_state,
                                   precision=precision, kv_splits=kv_splits, return_dbias=bias is not None,
                                   **dev, **backward_mode(mode))
    for g, x in zip(grads, (q, k, v)):
        assert g.shape == x.shape and g.dtype == x.dtype
    # D from the kernels' output, as the kernels take it: with dropout O is no longer P V exactly (a one-key row
    # gets O = v / keep, rounded), so D = rowsum(dO o O) differs from sum(P o Z o dP) by O's rounding, whose exact
    # gradient contribution can be all there is (one key: dS = 0 exactly; found by hypothesis, H100). With a bias it
    # also keeps dbias summed over keys honest, as in test_bias_gpu.
    check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, dtype, out=out, **ref)


def variant_of(name, dtype, batch, nheads, seqlen_q, seqlen_k):
    """run_dropout's keywords for a named variant."""
    rng = np.random.default_rng(len(name))
    full = (batch, nheads, seqlen_q, seqlen_k)
    if name == "window":
        return dict(causal=False, window_size=(40, 7))
    if name == "softcap_alibi":
        return dict(causal=True, softcap=15.0, alibi_slopes=alibi("batch_heads", batch, nheads))
    if name == "bias":  # shared by the batches (dbias summed over them), a few -inf entries
        bias_dtype = "float32" if HOST_DTYPES[dtype] is np.float32 else "float16"
        return dict(causal=False, bias=make_bias(rng, full, (True, False, False, False), bias_dtype, "contiguous",
                                                 hidden=0.05))
    if name == "mask":  # key padding per batch, with the causal band
        return dict(causal=True, mask=make_mask(rng, full, (False, True, True, False), "contiguous", 0.7))
    return dict(causal=True)  # "causal", "gqa"


# (dtype, variant, dQ mode): each variant in two dtypes and both dQ modes; float32 at both precisions
ACCURACY_CASES = [
    ("float16", "causal", "atomic"), ("bfloat16", "causal", "deterministic"),
    ("float32", "causal", "atomic"), ("tf32", "causal", "deterministic"),
    ("float16", "window", "deterministic"), ("tf32", "window", "atomic"),
    ("bfloat16", "softcap_alibi", "atomic"), ("float32", "softcap_alibi", "deterministic"),
    ("bfloat16", "gqa", "atomic"), ("float16", "gqa", "deterministic"),
    ("float16", "bias", "deterministic"), ("float32", "bias", "atomic"),
    ("bfloat16", "mask", "deterministic"), ("tf32", "mask", "atomic"),
]


@pytest.mark.parametrize("dtype, name, mode", ACCURACY_CASES)
def test_forward_and_backward_match_float64(dtype, name, mode):
    # bias and mask at head dim 64 (float32 with a bias and dbias fits the H100 there); 111: a padded head dim
    batch, seqlen_q, seqlen_k = 2, 97, 211
    nheads, nheads_k = (8, 2) if name == "gqa" else (4, 2)
    head_dim = 64 if name in ("bias", "mask") else 111 if dtype == "bfloat16" else HEAD_DIM
    variant = variant_of(name, dtype, batch, nheads, seqlen_q, seqlen_k)
    seed = ACCURACY_CASES.index((dtype, name, mode))
    run_dropout(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, p=0.2,
                rng_state=(BIG_SEED ^ seed, 2**32 - 1 - seed), mode=mode, **variant)


@pytest.mark.parametrize("mode", ["deterministic", "atomic"])
@pytest.mark.parametrize("kv_splits", [2, 4])
def test_grouped_query_heads_over_split_blocks(kv_splits, mode):
    """dK/dV of a K/V head summed over its query heads in kv_splits blocks: each query head its own mask."""
    run_dropout(70 + kv_splits, 2, 257, 300, 8, 2, HEAD_DIM, "bfloat16", True, p=0.35, rng_state=(5, kv_splits),
                mode=mode, kv_splits=kv_splits)


@pytest.mark.parametrize("dtype, causal, mode", [("float16", True, "deterministic"), ("bfloat16", False, "atomic")])
def test_varlen_matches_the_packed_reference(dtype, causal, mode):
    import cupy

    from cupyflash.reference import attention_varlen_backward_reference, attention_varlen_reference

    lens_q, lens_k = [130, 1, 0, 97, 17, 40], [97, 7, 33, 0, 300, 40]
    nheads, nheads_k, p, rng_state = 4, 2, 0.25, (BIG_SEED, 3)
    rng = np.random.default_rng(61)
    q, q64 = random_array(rng, (sum(lens_q), nheads, HEAD_DIM), dtype)
    k, k64 = random_array(rng, (sum(lens_k), nheads_k, HEAD_DIM), dtype)
    v, v64 = random_array(rng, (sum(lens_k), nheads_k, HEAD_DIM), dtype)
    dout, dout64 = random_array(rng, q.shape, dtype)
    cu_q, cu_k = offsets(lens_q), offsets(lens_k)
    lengths = (cu_q, cu_k, max(lens_q), max(lens_k))
    out, lse = cf.flash_attn_varlen_func(q, k, v, *lengths, p, causal=causal, return_lse=True, rng_state=rng_state)
    grads = cf.flash_attn_varlen_backward(dout, q, k, v, out, lse, *lengths, causal=causal, dropout_p=p,
                                          rng_state=rng_state, **backward_mode(mode))
    scale = 1 / math.sqrt(HEAD_DIM)
    fwd, bwd = [], []
    bq, bk = cu_q.get(), cu_k.get()
    for i in range(len(lens_q)):
        (q0, q1), (k0, k1) = bq[i:i + 2], bk[i:i + 2]
        if q1 == q0 or k1 == k0:  # nothing attends (test_varlen_gpu checks the zeros; the reference gives 0 too)
            continue
        own = dict(dropout=DropoutState(p, *rng_state), dropout_batches=[i])  # numbered as sequence i
        fwd.append(forward_errors(out[None, q0:q1], lse[None, :, q0:q1], q64[None, q0:q1], k64[None, k0:k1],
                                  v64[None, k0:k1], scale, causal, dtype, **own))
        bwd.append(grad_errors((grads[0][None, q0:q1], grads[1][None, k0:k1], grads[2][None, k0:k1]),
                               dout64[None, q0:q1], q64[None, q0:q1], k64[None, k0:k1], v64[None, k0:k1], scale,
                               causal, dtype, **own))
    out_error, grad_error = assert_within_bounds(fwd, dtype), assert_within_bounds(bwd, dtype)
    # the per-sequence references are the packed reference: the same errors against it
    state = DropoutState(p, *rng_state)
    ref, _ = attention_varlen_reference(q64, k64, v64, cu_q, cu_k, causal=causal, xp=cupy, dropout=state)
    assert float(cupy.abs(to_float64(out) - ref).max()) <= out_error + 1e-9
    refs = attention_varlen_backward_reference(dout64, q64, k64, v64, cu_q, cu_k, causal=causal, xp=cupy,
                                               dropout=state)
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
        assert float(cupy.abs(to_float64(g) - r).max()) <= grad_error[name] + 1e-9, name


# --- 3. random problems --------------------------------------------------------------------------------------------

AWKWARD_SEQLENS = [1, 17, 97, 1025]
seqlens = st.one_of(st.sampled_from(AWKWARD_SEQLENS), st.integers(1, 300))
# head dims of two kernel head dims (64, 128), odd and full widths: few enough dropout kernels to compile
head_dims = st.sampled_from([33, 59, 64, 111, 128])
sides = st.one_of(st.just(-1), st.integers(0, 8), st.integers(0, 400))


@st.composite
def dropout_problems(draw):
    nheads_k, group, batch = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2])), draw(st.integers(1, 2))
    seqlen_q, seqlen_k = draw(seqlens), draw(seqlens)
    while batch * nheads_k * group * seqlen_q * seqlen_k > 2**22 and seqlen_q > 64:
        seqlen_q //= 2
    mask = draw(st.sampled_from(["none", "causal", "window"]))
    return dict(seed=draw(st.integers(0, 2**32 - 1)), batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                nheads=nheads_k * group, nheads_k=nheads_k, head_dim=draw(head_dims),
                dtype=draw(st.sampled_from(["float16", "bfloat16"])), causal=mask == "causal",
                window_size=(draw(sides), draw(sides)) if mask == "window" else (-1, -1),
                p=draw(st.floats(0, 0.9, exclude_min=True)),
                rng_state=(draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**32 - 1))))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=dropout_problems(), mode=st.sampled_from(["default", "deterministic", "atomic"]))
def test_random_problems_match_float64(problem, mode):
    run_dropout(**problem, mode=mode)


# --- 4. statistics -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.6])
def test_kernel_keep_rate(p):
    """The forward's mask over 8.4M pairs (one-hot values as in test 1): kept at rate 1 - p within 5 sigma, and
    pair for pair the host's (DropoutState.keep on the GPU)."""
    import cupy

    batch, seqlen_q, seqlen_k, nheads = 2, 4096, HEAD_DIM, 8
    rng_state = (2024, 99)
    q = device(np.zeros((batch, seqlen_q, nheads, HEAD_DIM)), "float16")
    v = one_hot_rows(batch, seqlen_k, nheads, "float16")
    out = cf.flash_attn_func(q, v, v, p, rng_state=rng_state)
    kept = (out != 0).transpose(0, 2, 1, 3)  # (B, H, Sq, Sk)
    assert abs(float(kept.mean()) - (1 - p)) < 5 * math.sqrt(p * (1 - p) / kept.size)
    host = DropoutState(p, *rng_state).keep(range(batch), nheads, seqlen_q, seqlen_k, xp=cupy)
    assert bool((kept == host).all())


def test_the_output_is_unbiased():
    """E[out] = the output without dropout. out_id = sum_j P_ij Z_ij v_jd with independent Z_ij in {0, scale}, keep
    probability kappa = threshold / 2^32 = 1 / scale: E Z = 1, Var Z = (1 - kappa) / kappa. The mean of N calls at
    different offsets has per element sigma = sqrt((1 - kappa) / kappa * sum_j P_ij^2 v_jd^2 / N) (P exact, float64)
    and, a sum over 128 keys averaged N = 200 times, is close to Gaussian: over the 2 * 128 * 128 elements a 6 sigma
    excursion happens by chance with probability below 1e-4. float32 at precision "highest" errs ~1e-6, far below
    sigma (~0.05): a floor of 1e-4 covers it. A missing or wrong scale moves the mean by a multiple of out itself
    (values around 1 here: v + 1), far outside the bound."""
    import cupy

    from cupyflash.reference import attention_probs, attention_reference

    n_calls, p = 200, 0.5
    (q, k, v, _), (q64, k64, _, _) = make_problem(51, 1, 128, 128, 2, 2, HEAD_DIM, "float32")
    v = v + 1  # out of order 1, so that a biased scale shows against it
    v64 = to_float64(v)
    plain = to_float64(cf.flash_attn_func(q, k, v, precision="highest"))
    generator = cf.Generator(BIG_SEED)
    total = cupy.zeros_like(plain)
    for _ in range(n_calls):
        total += to_float64(cf.flash_attn_func(q, k, v, p, precision="highest", generator=generator))
    mean = total / n_calls
    _, lse = attention_reference(q64, k64, v64, xp=cupy)
    probs = attention_probs(q64, k64, lse, xp=cupy)  # (B, H, Sq, Sk), nheads == nheads_k
    kappa = DropoutState(p, 0, 0).threshold / 2**32
    sigma = cupy.sqrt((1 - kappa) / kappa * cupy.einsum("bhqk,bkhd->bqhd", probs**2, v64**2) / n_calls)
    excess = float((cupy.abs(mean - plain) / (6 * sigma + 1e-4)).max())
    assert excess < 1, f"mean of {n_calls} dropped outputs off by {excess:.2f} x (6 sigma + floor)"


# --- 5. reproducibility --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_same_state_gives_the_same_bits(dtype):
    (q, k, v, dout), _ = make_problem(21, 2, 300, 257, 4, 2, HEAD_DIM, dtype)
    kw = dict(causal=True, precision=PRECISION[dtype])
    state = (BIG_SEED, 5)
    out, lse = cf.flash_attn_func(q, k, v, 0.2, rng_state=state, return_lse=True, **kw)
    again, lse2 = cf.flash_attn_func(q, k, v, 0.2, rng_state=state, return_lse=True, **kw)
    assert same_bits(out, again) and same_bits(lse, lse2)
    # another offset, another seed (low or high key word): other pairs dropped, the same lse (it is undropped)
    for other in ((BIG_SEED, 6), (BIG_SEED + 1, 5), (BIG_SEED + 2**32, 5)):
        out2, lse2 = cf.flash_attn_func(q, k, v, 0.2, rng_state=other, return_lse=True, **kw)
        assert not same_bits(out, out2), other
        assert same_bits(lse, lse2), other
    # the backward: bitwise reproducible with the deterministic dQ kernel
    kw.update(dropout_p=0.2, rng_state=state, deterministic=True)
    first = cf.flash_attn_backward(dout, q, k, v, out, lse, **kw)
    second = cf.flash_attn_backward(dout, q, k, v, out, lse, **kw)
    assert all(same_bits(a, b) for a, b in zip(first, second))
    other = cf.flash_attn_backward(dout, q, k, v, out, lse, **dict(kw, rng_state=(BIG_SEED, 6)))
    assert not any(same_bits(a, b) for a, b in zip(first, other))


def test_generators_seeded_alike_repeat_their_outputs(default_generator_restored):
    (q, k, v, _), _ = make_problem(22, 1, 200, 200, 2, 2, HEAD_DIM, "bfloat16")
    runs = []
    for _ in range(2):
        g = cf.Generator(31)
        runs.append([cf.flash_attn_func(q, k, v, 0.2, causal=True, generator=g) for _ in range(3)])
        assert g.offset == 3  # one state per call
    assert all(same_bits(a, b) for a, b in zip(*runs))
    assert not same_bits(runs[0][0], runs[0][1])  # successive calls drop other pairs
    # the default generator: cf.manual_seed repeats the calls that draw from it, state (seed, 0) first
    cf.manual_seed(31)
    first = cf.flash_attn_func(q, k, v, 0.2, causal=True)
    cf.manual_seed(31)
    assert same_bits(first, cf.flash_attn_func(q, k, v, 0.2, causal=True))
    assert same_bits(first, runs[0][0])
    assert cf.default_generator.next_state() == (31, 1)


def test_vjp_uses_the_state_it_drew():
    (q, k, v, dout), _ = make_problem(23, 2, 257, 300, 8, 2, HEAD_DIM, "bfloat16")
    kw = dict(causal=True, window_size=(100, 0))
    out, vjp = cf.flash_attn_vjp(q, k, v, 0.3, deterministic=True, generator=cf.Generator(17), **kw)
    grads = vjp(dout)
    state = cf.Generator(17).next_state()
    out2, lse = cf.flash_attn_func(q, k, v, 0.3, rng_state=state, return_lse=True, **kw)
    assert same_bits(out, out2)
    explicit = cf.flash_attn_backward(dout, q, k, v, out2, lse, dropout_p=0.3, rng_state=state, deterministic=True,
                                      **kw)
    assert all(same_bits(a, b) for a, b in zip(grads, explicit))
    assert all(same_bits(a, b) for a, b in zip(grads, vjp(dout)))  # the closure keeps its state


def test_varlen_vjp_uses_the_state_it_drew():
    lens_q, lens_k = [30, 0, 64], [50, 9, 64]
    rng = np.random.default_rng(24)
    q, _ = random_array(rng, (sum(lens_q), 4, HEAD_DIM), "float16")
    k, _ = random_array(rng, (sum(lens_k), 2, HEAD_DIM), "float16")
    dout, _ = random_array(rng, q.shape, "float16")
    lengths = (offsets(lens_q), offsets(lens_k), max(lens_q), max(lens_k))
    out, vjp = cf.flash_attn_varlen_vjp(q, k, k, *lengths, 0.3, causal=True, deterministic=True,
                                        generator=cf.Generator(18))
    state = cf.Generator(18).next_state()
    out2, lse = cf.flash_attn_varlen_func(q, k, k, *lengths, 0.3, causal=True, return_lse=True, rng_state=state)
    assert same_bits(out, out2)
    explicit = cf.flash_attn_varlen_backward(dout, q, k, k, out2, lse, *lengths, causal=True, dropout_p=0.3,
                                             rng_state=state, deterministic=True)
    assert all(same_bits(a, b) for a, b in zip(vjp(dout), explicit))


# --- 6. return_attn_probs ------------------------------------------------------------------------------------------

def test_attn_probs_are_the_dropped_matrix():
    import cupy

    batch, seqlen_q, seqlen_k, nheads, nheads_k = 2, 33, 70, 4, 2
    (q, k, v, _), (q64, k64, v64, _) = make_problem(31, batch, seqlen_q, seqlen_k, nheads, nheads_k, HEAD_DIM,
                                                    "float16")
    rng_state = (5, 9)
    state = DropoutState(0.4, *rng_state)
    out, lse, probs = cf.flash_attn_func(q, k, v, 0.4, None, True, return_attn_probs=True, rng_state=rng_state)
    check_against_reference(out, lse, q64, k64, v64, 1 / math.sqrt(HEAD_DIM), True, "float16", dropout=state)
    assert probs.shape == (batch, nheads, seqlen_q, seqlen_k) and probs.dtype == cupy.float32
    kept, _, _ = host_mask(state, batch, nheads, seqlen_q, seqlen_k, dict(causal=True))
    np.testing.assert_array_equal((probs != 0).get(), kept)  # 0 where dropped or hidden
    again = cupy.einsum("bhqk,bkhd->bqhd", probs.astype(cupy.float64),
                        cupy.repeat(v64, nheads // nheads_k, axis=2))
    out64 = to_float64(out)
    # out rounded to float16 (half an ulp) and the kernel's float16 P: within an ulp of out's largest values
    assert float(cupy.abs(again - out64).max()) < 2.0**-10 * (1 + float(cupy.abs(out64).max()))


# --- 7. errors before any launch -----------------------------------------------------------------------------------

def test_a_backward_without_the_state_raises_before_writing(default_generator_restored):
    import cupy

    (q, k, v, dout), _ = make_problem(41, 1, 64, 80, 4, 2, HEAD_DIM, "float16")
    out, lse = cf.flash_attn_func(q, k, v, 0.1, rng_state=(1, 2), return_lse=True)
    bufs = {name: cupy.full(x.shape, 7, x.dtype) for name, x in zip(("dq", "dk", "dv"), (q, k, v))}
    drawn = cf.default_generator.offset
    # twice: once building the plan, once from the cache
    for _ in range(2):
        with pytest.raises(ValueError, match="rng_state"):
            cf.flash_attn_backward(dout, q, k, v, out, lse, dropout_p=0.1, **bufs)
    bad = [((1, 2, 3), TypeError, "pair"), ((1, 2**32), ValueError, "offset"), ((-1, 0), ValueError, "seed"),
           ((1.5, 0), ValueError, "seed"), ([1, None], ValueError, "offset")]
    for state, exc, match in bad:
        with pytest.raises(exc, match=match):
            cf.flash_attn_backward(dout, q, k, v, out, lse, dropout_p=0.1, rng_state=state, **bufs)
        with pytest.raises(exc, match=match):
            cf.flash_attn_func(q, k, v, 0.1, rng_state=state)
    with pytest.raises(ValueError, match="not both"):
        cf.flash_attn_func(q, k, v, 0.1, rng_state=(1, 2), generator=cf.Generator(1))
    with pytest.raises(TypeError, match="generator must be a cupyflash.Generator"):
        cf.flash_attn_func(q, k, v, 0.1, generator=np.random.default_rng(0))
    for p in (1.0, -0.1, True):
        with pytest.raises(ValueError, match="dropout_p"):
            cf.flash_attn_func(q, k, v, p)
        with pytest.raises(ValueError, match="dropout_p"):
            cf.flash_attn_backward(dout, q, k, v, out, lse, dropout_p=p, rng_state=(1, 2), **bufs)
    assert all(bool((b == 7).all()) for b in bufs.values())  # nothing was written
    assert cf.default_generator.offset == drawn  # refused calls draw no state


def test_a_varlen_backward_without_the_state_raises_before_writing():
    import cupy

    rng = np.random.default_rng(42)
    q, _ = random_array(rng, (40, 2, 64), "float16")
    k, _ = random_array(rng, (50, 2, 64), "float16")
    lengths = (offsets([10, 30]), offsets([20, 30]), 30, 30)
    out, lse = cf.flash_attn_varlen_func(q, k, k, *lengths, 0.1, rng_state=(1, 2), return_lse=True)
    dq = cupy.full(q.shape, 7, q.dtype)
    for state, exc in ((None, ValueError), ((1, 2, 3), TypeError), ((1, -2), ValueError)):
        with pytest.raises(exc, match="rng_state"):
            cf.flash_attn_varlen_backward(out, q, k, k, out, lse, *lengths, dropout_p=0.1, rng_state=state, dq=dq)
    assert bool((dq == 7).all())


# --- 8. dropout_p = 0 ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "tf32"])
def test_no_dropout_is_the_call_without_it(dtype, default_generator_restored):
    (q, k, v, dout), _ = make_problem(81, 2, 150, 130, 4, 2, HEAD_DIM, dtype)
    kw = dict(causal=True, precision=PRECISION[dtype])
    drawn = cf.default_generator.offset
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, **kw)
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, deterministic=True, **kw)
    for p, extra in ((0.0, {}), (0, {}), (0.0, dict(rng_state=(1, 2))), (0.0, dict(generator=cf.Generator(3)))):
        out2, lse2 = cf.flash_attn_func(q, k, v, p, return_lse=True, **kw, **extra)
        assert same_bits(out, out2) and same_bits(lse, lse2), (p, extra)
    for extra in ({}, dict(rng_state=(1, 2))):
        again = cf.flash_attn_backward(dout, q, k, v, out, lse, deterministic=True, dropout_p=0.0, **kw, **extra)
        assert all(same_bits(a, b) for a, b in zip(grads, again)), extra
    out3, vjp = cf.flash_attn_vjp(q, k, v, 0.0, deterministic=True, **kw)
    assert same_bits(out, out3) and all(same_bits(a, b) for a, b in zip(grads, vjp(dout)))
    assert cf.default_generator.offset == drawn  # no dropout draws no state
