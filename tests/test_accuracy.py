"""The error criterion of the GPU tests and the selftest (cupyflash._accuracy), and the selftest's checks, on the
CPU: NumPy arrays and a stand-in for the kernels that returns the float64 reference rounded once to the dtype
(what a correct kernel returns), or a corrupted copy of it."""
import ml_dtypes
import numpy as np
import pytest

from cupyflash import selftest
from cupyflash._accuracy import AccuracyError, check_against_reference, random_array, to_float64
from cupyflash.reference import attention_backward_reference, attention_reference


class RoundedReference:
    """flash_attn_func and flash_attn_backward on NumPy arrays: the reference, rounded to the inputs' dtype;
    ``corrupt(name, array)`` may change an output before it is returned."""

    def __init__(self, corrupt=lambda name, x: x):
        self.corrupt = corrupt

    def flash_attn_func(self, q, k, v, *, return_lse, causal=False, bias=None, **kw):
        assert return_lse
        out, lse = attention_reference(*map(to_float64, (q, k, v)), None, causal, bias=self._64(bias), **kw)
        return self.corrupt("out", out.astype(q.dtype)), lse.astype(np.float32)

    def flash_attn_backward(self, dout, q, k, v, out, lse, *, return_dbias, causal=False, bias=None,
                            atomic_dq=None, **kw):
        grads = attention_backward_reference(*map(to_float64, (dout, q, k, v)), None, causal, bias=self._64(bias),
                                             return_dbias=return_dbias, **kw)
        dtypes = (q.dtype, k.dtype, v.dtype, np.float32)
        return tuple(self.corrupt(name, g.astype(t)) for name, g, t in zip(("dq", "dk", "dv", "dbias"), grads, dtypes))

    @staticmethod
    def _64(x):
        return None if x is None else to_float64(x)


@pytest.mark.parametrize("check", selftest.CHECKS, ids=lambda c: c.name)
def test_selftest_checks_pass_a_correct_result(check):
    ratios = selftest.run_check(check, seed=0, attention=RoundedReference(), xp=np)
    assert set(ratios) == {"out", "dq", "dk", "dv"} | ({"dbias"} if check.bias else set())
    assert max(ratios.values()) <= 1, ratios


def test_selftest_checks_catch_a_wrong_element():
    def shift_one(name, x):
        if name == "dk":
            x = x.copy()
            x.flat[5] += 0.25
        return x

    ratios = selftest.run_check(selftest.CHECKS[0], seed=0, attention=RoundedReference(shift_one), xp=np)
    assert ratios["dk"] > 1 and max(ratios["out"], ratios["dq"], ratios["dv"]) <= 1


def test_nan_fails_with_its_reason():
    def nan(name, x):
        return np.full_like(x, np.nan) if name == "dq" else x

    with pytest.raises(AccuracyError, match="dq holds NaN"):
        selftest.run_check(selftest.CHECKS[0], seed=0, attention=RoundedReference(nan), xp=np)


def test_lse_of_a_row_without_keys_must_be_minus_inf():
    rng = np.random.default_rng(0)
    (q, q64), (k, k64) = (random_array(rng, (1, n, 1, 16), "float16", xp=np) for n in (4, 2))
    out, lse = RoundedReference().flash_attn_func(q, k, k, return_lse=True, causal=True)
    check_against_reference(out, lse, q64, k64, k64, None, True, "float16")
    lse[0, 0, 0] = 0.0  # row 0 sees no key (seqlen_q > seqlen_k, causal)
    with pytest.raises(AccuracyError, match="-inf exactly"):
        check_against_reference(out, lse, q64, k64, k64, None, True, "float16")


def test_to_float64_reads_bfloat16_bits():
    x = np.array([1.5, -2.25, 3e38], dtype=ml_dtypes.bfloat16)
    assert to_float64(x).tolist() == [float(v) for v in x.astype(np.float32)]


def test_float32_gradients_may_carry_the_saved_lse_rounding_only_where_lse_is_large():
    # One key, ALiBi pulling the far queries' logits (and lse) down to about -330: P is 1 exactly, but a backward
    # recomputing it from a float32 lse errs by up to a few |lse| 2^-24, relative (the H100's fp32 kernels: 8.9e-4
    # in dv here). Without ALiBi, |lse| is a few units and the same relative error fails.
    from cupyflash._accuracy import check_grads_against_reference

    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, n, 1, 33)) for n in (1025, 1, 1, 1025))
    scale, slopes = 33**-0.5, np.array([0.32211122])
    for alibi, passes in ((slopes, True), (None, False)):
        grads = attention_backward_reference(dout, q, k, v, scale, xp=np, alibi_slopes=alibi)
        off = (grads[0], grads[1], grads[2] * (1 + 2e-5 * np.sign(dout.sum(axis=1, keepdims=True))))
        if passes:
            check_grads_against_reference(off, dout, q, k, v, scale, False, "float32", alibi_slopes=alibi)
        else:
            with pytest.raises(AccuracyError, match="dv error"):
                check_grads_against_reference(off, dout, q, k, v, scale, False, "float32", alibi_slopes=alibi)


@pytest.mark.parametrize("tanh_error, passes", [(2.0**-10.987, True), (2.0**-8, False)])
def test_tf32_softcap_allows_tanh_approx_error_only(tanh_error, passes):
    # precision "tf32" computes the softcap's tanh by tanh.approx.f32 (relative error up to 2^-10.987): an lse that
    # far off is accepted, one 8x that is not (1 query seeing 5 keys, as the H100 run that found it)
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, n, 2, 64)).astype(np.float32) for n in (1, 293, 293))
    cap = 5.0
    out, lse = attention_reference(*map(to_float64, (q, k, v)), None, False, window_size=(4, -1), softcap=cap)
    lse = lse + cap * tanh_error  # every logit off by as much, in the same direction: the lse moves with them
    check = lambda: check_against_reference(out.astype(np.float32), lse.astype(np.float32), *map(to_float64, (q, k, v)),
                                            1 / 8, False, "tf32", window_size=(4, -1), softcap=cap)
    if passes:
        check()
    else:
        with pytest.raises(AccuracyError, match="lse error"):
            check()
