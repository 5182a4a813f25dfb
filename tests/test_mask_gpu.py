"""Boolean masks on a GPU (read by the kernels as a 0 / -inf bias): forward and backward against float64 attention
with the same mask, every broadcast pattern and layout, fully hidden rows and heads, with every other variant;
NaN-poisoned outputs."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import requires_gpu
from gpu_helpers import check_against_reference, check_grads_against_reference, make_problem, to_float64

import cupyflash as cf

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = ["float16", "bfloat16"]
LAYOUTS = ["contiguous", "broadcast_view", "squeezed", "strided_keys", "unaligned"]


def make_mask(rng, full, broadcast, layout, density):
    """A device bool mask broadcastable to ``full`` (flagged dims are 1), True with probability ``density``."""
    import cupy

    dims = tuple(1 if b else n for n, b in zip(full, broadcast))
    host = rng.random(dims) < density
    ref = cupy.asarray(host)
    if layout == "contiguous":
        dev = cupy.asarray(host)
    elif layout == "broadcast_view":
        dev = cupy.broadcast_to(cupy.asarray(host), full)
    elif layout == "squeezed":
        lead = next((i for i, d in enumerate(dims) if d != 1), 3)
        dev = cupy.asarray(host)[(0,) * lead]
    elif layout == "strided_keys":
        wide = np.zeros(dims[:3] + (2 * dims[3],), bool)
        wide[..., ::2] = host
        dev = cupy.asarray(wide)[..., ::2]
    else:
        flat = np.zeros(host.size + 1, bool)
        flat[1:] = host.ravel()
        dev = cupy.asarray(flat)[1:].reshape(dims)
    return dev, ref


def run_mask(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, broadcast, layout, density,
             causal=False, mode=None, **variant):
    (q, k, v, dout), (q64, k64, v64, dout64) = make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k,
                                                            head_dim, dtype)
    mask, ref = make_mask(np.random.default_rng(seed + 1), (batch, nheads, seqlen_q, seqlen_k), broadcast, layout,
                          density)
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, mask=mask, **variant)
    scale = 1 / math.sqrt(head_dim)
    check_against_reference(out, lse, q64, k64, v64, scale, causal, dtype, mask=ref, **variant)
    if mode is None:
        return
    kw = {"deterministic": True} if mode == "deterministic" else {"atomic_dq": True} if mode == "atomic" else {}
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, mask=mask, **variant, **kw)
    check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, dtype, mask=ref, **variant)


seqlens = st.one_of(st.sampled_from([1, 17, 97, 130, 257]), st.integers(1, 200))
head_dims = st.one_of(st.sampled_from([16, 59, 64, 128, 256]), st.integers(1, 32).map(lambda i: 8 * i))
sides = st.one_of(st.just(-1), st.integers(0, 40))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 2), seqlen_q=seqlens, seqlen_k=seqlens,
       nheads_k=st.integers(1, 2), group=st.sampled_from([1, 2]), head_dim=head_dims, dtype=st.sampled_from(DTYPES),
       broadcast=st.tuples(*[st.booleans()] * 4), layout=st.sampled_from(LAYOUTS), causal=st.booleans(),
       window=st.tuples(sides, sides), softcap=st.sampled_from([0.0, 0.0, 15.0]),
       density=st.sampled_from([0.05, 0.5, 0.95, 1.0]), mode=st.sampled_from([None, "default", "deterministic",
                                                                                "atomic"]))
def test_mask_matches_float64(seed, batch, seqlen_q, seqlen_k, nheads_k, group, head_dim, dtype, broadcast, layout,
                              causal, window, softcap, density, mode):
    run_mask(seed, batch, seqlen_q, seqlen_k, nheads_k * group, nheads_k, head_dim, dtype, broadcast, layout,
             density, causal, mode, window_size=window, softcap=softcap)


@pytest.mark.parametrize("broadcast", [(False,) * 4, (False, True, True, False)], ids=["full", "key_padding"])
@pytest.mark.parametrize("mode", ["default", "deterministic"])
def test_long_sequences(broadcast, mode):
    run_mask(7, 2, 1025, 1100, 4, 2, 128, "bfloat16", broadcast, "contiguous", 0.5, causal=True, mode=mode)


def test_fully_hidden_rows_and_heads():
    import cupy

    (q, k, v, dout), _ = make_problem(3, 1, 40, 50, 2, 2, 64, "float16")
    mask = cupy.ones((1, 2, 40, 50), bool)
    mask[0, 1] = False  # a whole head
    mask[0, 0, 5] = False  # one row
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, mask=mask)
    assert bool((to_float64(out[0, :, 1]) == 0).all()) and bool(cupy.isneginf(lse[0, 1]).all())
    assert bool((to_float64(out[0, 5, 0]) == 0).all()) and int(cupy.isneginf(lse[0, 0]).sum()) == 1
    grads = cf.flash_attn_backward(dout, q, k, v, out, lse, mask=mask)
    assert bool((to_float64(grads[0][0, :, 1]) == 0).all())
    for g in grads:
        assert bool(cupy.isfinite(to_float64(g)).all())


def test_mask_and_bias_together_are_refused_before_any_launch():
    import cupy

    (q, k, v, _), _ = make_problem(4, 1, 8, 8, 1, 1, 32, "float16")
    with pytest.raises(NotImplementedError, match="a mask and a bias together"):
        cf.flash_attn_func(q, k, v, mask=cupy.ones((8, 8), bool), bias=cupy.zeros((8, 8), cupy.float32))
    with pytest.raises(TypeError, match="mask must be bool"):
        cf.flash_attn_func(q, k, v, mask=cupy.ones((8, 8), cupy.float16))
