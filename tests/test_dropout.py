"""Dropout without a GPU: DropoutState's threshold, scale and mask (cupyflash/_dropout.py) against the documented
Philox formula, the keep rate, Generator and the rng_state checks, the float64 reference with dropout (finite
differences, probs @ v, packed batches), the kernel names and parameters a dropout call gets, and an NVRTC compile
of the three tile kernels with dropout on, without register spills."""
import math
import threading

import numpy as np
import pytest

from conftest import require_nvrtc
from test_reference import _numeric_grads, _qkv
from test_validate import problem

import cupyflash as cf
from cupyflash import _dropout, _launch, _nvrtc
from cupyflash._dropout import DropoutState, Generator, check_rng_state, resolve
from cupyflash._philox import philox4x32_10
from cupyflash._validate import check_dropout
from cupyflash.configs import DeviceLimits, select_config
from cupyflash.families import KINDS, MMA_SM80, MMA_TF32
from cupyflash.problem import Variant
from cupyflash.reference import (attention_backward_naive_lowp, attention_backward_reference, attention_naive_lowp,
                                 attention_probs, attention_reference, attention_varlen_backward_reference,
                                 attention_varlen_reference)

H100 = DeviceLimits(90, smem_per_block_optin=232448, smem_per_sm=233472, sm_count=132, name="H100")
BIG_SEED = 0x1234_5678_9ABC_DEF0  # both key words nonzero


def direct_keep(state, nheads, b, h, i, j):
    """The documented rule (cuda_src/dropout.cuh), element by element on broadcast index arrays: word
    (i / 8 % 2) * 2 + j / 8 % 2 of Philox4x32-10((i / 16 * 8 + i % 8, j / 16 * 8 + j % 8, b * nheads + h, offset),
    key = (seed % 2^32, seed / 2^32)) is below the threshold."""
    b, h, i, j = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (b, h, i, j)))
    counter = (i // 16 * 8 + i % 8, j // 16 * 8 + j % 8, b * nheads + h, np.full(b.shape, state.offset))
    words = np.stack(philox4x32_10([c.astype(np.uint32) for c in counter], (state.seed % 2**32, state.seed // 2**32)))
    word = np.take_along_axis(words, ((i // 8 % 2) * 2 + j // 8 % 2)[None], axis=0)[0]
    return word < state.threshold


# --- DropoutState -------------------------------------------------------------------------------------------------

def test_threshold_and_scale():
    s = DropoutState(0.1, 0, 0)
    assert s.threshold == round(0.9 * 2**32) and s.scale == 2**32 / s.threshold
    assert DropoutState(0.5, 0, 0).threshold == 2**31 and DropoutState(0.5, 0, 0).scale == 2.0
    # the keep probability actually used, threshold / 2^32, is within 2^-33 of 1 - p; the scale is its inverse
    for p in (1e-3, 0.1, 0.3, 0.77, 0.9):
        t = DropoutState(p, 0, 0).threshold
        assert abs(t / 2**32 - (1 - p)) <= 2.0**-33
        assert DropoutState(p, 0, 0).scale == pytest.approx(2**32 / t, rel=1e-15)


def test_threshold_clamps_at_the_extremes():
    near_one = DropoutState(1 - 1e-12, 0, 0)  # (1 - p) 2^32 rounds to 0: at least one word in 2^32 is kept
    assert near_one.threshold == 1 and near_one.scale == 2**32
    tiny = DropoutState(1e-12, 0, 0)  # rounds to 2^32, which no uint32 word is below: clamped to 2^32 - 1
    assert tiny.threshold == 2**32 - 1 and tiny.scale == 2**32 / (2**32 - 1)


@pytest.mark.parametrize("seqlen_q", [1, 17, 97])
@pytest.mark.parametrize("seqlen_k", [1, 33])
def test_keep_is_the_documented_formula(seqlen_q, seqlen_k):
    state = DropoutState(0.3, BIG_SEED, 12345)
    batches, nheads = [0, 4], 3  # batch indices need not be 0, 1, ... (a packed batch passes its sequence's)
    got = state.keep(batches, nheads, seqlen_q, seqlen_k)
    assert got.shape == (2, nheads, seqlen_q, seqlen_k) and got.dtype == bool
    b, h, i, j = np.ix_(batches, range(nheads), range(seqlen_q), range(seqlen_k))
    np.testing.assert_array_equal(got, direct_keep(state, nheads, b, h, i, j))
    multiplier = state.multiplier(batches, nheads, seqlen_q, seqlen_k)
    np.testing.assert_array_equal(multiplier, np.where(got, state.scale, 0.0))


def test_keep_at_random_pairs_of_a_large_problem():
    """Scalar spot checks, counters far from 0 (i, j in the hundreds, stream b * nheads + h up to 11)."""
    state = DropoutState(0.15, 2**64 - 1, 2**32 - 1)  # the largest seed and offset
    nheads, seqlen_q, seqlen_k = 4, 300, 257
    mask = state.keep(range(3), nheads, seqlen_q, seqlen_k)
    rng = np.random.default_rng(0)
    for b, h, i, j in zip(*(rng.integers(0, n, 25) for n in (3, nheads, seqlen_q, seqlen_k))):
        assert mask[b, h, i, j] == direct_keep(state, nheads, b, h, i, j), (b, h, i, j)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p(p):
    mask = DropoutState(p, 2024, 3).keep(range(2), 4, 512, 512)
    n = mask.size
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(mask.mean() - (1 - p)) < 5 * sigma
    # each of the 16 x 16 positions of a pair group (each Philox word and lane slot) keeps at the same rate
    by_position = mask.reshape(2, 4, 32, 16, 32, 16).mean(axis=(0, 1, 2, 4))
    assert np.abs(by_position - (1 - p)).max() < 5 * math.sqrt(p * (1 - p) / (n / 256))


def test_masks_of_other_states_heads_and_batches_are_independent():
    """Each change of seed (either key word), offset, head or batch gives another mask: two independent masks of
    keep rate 1/2 agree on half their pairs (5 sigma)."""
    nheads, sq, sk = 2, 128, 96
    base = DropoutState(0.5, BIG_SEED, 7)
    mask = base.keep(range(2), nheads, sq, sk)
    others = [DropoutState(0.5, BIG_SEED, 8).keep(range(2), nheads, sq, sk)[0, 0],
              DropoutState(0.5, BIG_SEED + 1, 7).keep(range(2), nheads, sq, sk)[0, 0],
              DropoutState(0.5, BIG_SEED + 2**32, 7).keep(range(2), nheads, sq, sk)[0, 0],
              mask[0, 1], mask[1, 0], mask[1, 1]]
    bound = 5 * 0.5 / math.sqrt(sq * sk)
    for other in others:
        assert abs(np.mean(mask[0, 0] == other) - 0.5) < bound
    # the same state is the same mask, whichever batches are asked for alongside
    np.testing.assert_array_equal(base.keep([1], nheads, sq, sk)[0], mask[1])


# --- Generator ----------------------------------------------------------------------------------------------------

def test_generator_hands_out_offsets_in_order():
    g = Generator(123)
    assert [g.next_state() for _ in range(3)] == [(123, 0), (123, 1), (123, 2)]
    assert g.manual_seed(2**64 - 1) is g
    assert g.next_state() == (2**64 - 1, 0)
    g.offset = 2**32 - 1  # offsets wrap modulo 2^32 (the kernels' offset is 32 bits)
    assert [g.next_state() for _ in range(2)] == [(2**64 - 1, 2**32 - 1), (2**64 - 1, 0)]
    a, b = Generator(), Generator()  # seeded from the OS: 64 random bits each
    assert a.seed != b.seed and a.offset == b.offset == 0


def test_generator_is_thread_safe():
    g = Generator(5)
    drawn = []

    def draw():
        drawn.extend(g.next_state() for _ in range(500))

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(offset for _, offset in drawn) == list(range(4000))


def test_manual_seed_reseeds_the_default_generator(default_generator_restored):
    assert cf.default_generator is _dropout.default_generator
    assert cf.manual_seed(42) is cf.default_generator
    first = [cf.default_generator.next_state() for _ in range(2)]
    assert first == [(42, 0), (42, 1)]
    cf.manual_seed(42)
    assert resolve(0.2) == DropoutState(0.2, 42, 0)  # calls without a state draw from the default generator
    assert cf.default_generator.next_state() == (42, 1)


@pytest.mark.parametrize("seed", [-1, 2**64, True, 1.0, "3", None])
def test_bad_seeds(seed, default_generator_restored):
    if seed is not None:  # Generator(None) is the documented "seed from the OS"
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^64\)"):
            Generator(seed)
    g = Generator(9)
    g.next_state()
    with pytest.raises(ValueError, match="seed"):
        g.manual_seed(seed)
    assert (g.seed, g.offset) == (9, 1)  # a refused seed leaves the generator as it was
    with pytest.raises(ValueError, match="seed"):
        cf.manual_seed(seed)


# --- rng_state checks and resolve ---------------------------------------------------------------------------------

def test_check_rng_state_accepts_pairs_of_ints():
    assert check_rng_state((BIG_SEED, 2**32 - 1)) == (BIG_SEED, 2**32 - 1)
    got = check_rng_state([np.uint64(7), np.int32(3)])  # a list, NumPy ints: plain int pair back
    assert got == (7, 3) and all(type(x) is int for x in got)


@pytest.mark.parametrize("state, exc, match", [
    ((1, 2, 3), TypeError, r"rng_state must be a \(seed, offset\) pair"),
    ((1,), TypeError, r"rng_state must be a \(seed, offset\) pair"),
    (5, TypeError, r"rng_state must be a \(seed, offset\) pair"),
    (np.array([1, 2]), TypeError, r"rng_state must be a \(seed, offset\) pair"),
    (("1", 0), ValueError, r"seed must be an int"),
    ((1.0, 0), ValueError, r"seed must be an int"),
    ((-1, 0), ValueError, r"seed must be an int in \[0, 2\^64\)"),
    ((2**64, 0), ValueError, r"seed must be an int in \[0, 2\^64\)"),
    ((0, 1.5), ValueError, r"offset must be an int in \[0, 2\^32\)"),
    ((0, 2**32), ValueError, r"offset must be an int in \[0, 2\^32\)"),
    ((0, -1), ValueError, r"offset must be an int in \[0, 2\^32\)"),
    ((0, True), ValueError, r"offset must be an int"),
])
def test_malformed_rng_state(state, exc, match):
    with pytest.raises(exc, match=match):
        check_rng_state(state)
    with pytest.raises(exc, match=match):  # what the forward and backward call
        resolve(0.1, state)
    with pytest.raises(exc, match=match):
        resolve(0.1, state, backward=True)


def test_resolve():
    g = Generator(11)
    assert resolve(0.0, generator=g) is None and resolve(0.0, backward=True) is None
    assert g.offset == 0  # no dropout draws nothing
    assert resolve(0.25, (3, 4)) == DropoutState(0.25, 3, 4)
    assert resolve(0.25, (3, 4), backward=True) == DropoutState(0.25, 3, 4)
    assert [resolve(0.25, generator=g) for _ in range(2)] == [DropoutState(0.25, 11, 0), DropoutState(0.25, 11, 1)]
    with pytest.raises(ValueError, match="not both"):
        resolve(0.25, (3, 4), g)
    with pytest.raises(TypeError, match="generator must be a cupyflash.Generator"):
        resolve(0.25, generator=np.random.default_rng(0))
    # the backward cannot draw: it must regenerate the forward's pairs
    with pytest.raises(ValueError, match=r"the backward needs the forward's rng_state"):
        resolve(0.25, backward=True)
    assert g.offset == 2


@pytest.mark.parametrize("p", [-0.1, 1.0, True, "x", None, float("nan")])
def test_check_dropout_refuses(p):
    with pytest.raises(ValueError, match=r"dropout_p must be a number in \[0, 1\)"):
        check_dropout(p)


def test_check_dropout_accepts():
    assert check_dropout(0) == 0.0 and check_dropout(np.float32(0.25)) == 0.25
    assert type(check_dropout(np.float32(0.25))) is float


# --- the float64 reference ----------------------------------------------------------------------------------------

# name: (seqlen_q, seqlen_k, nheads, nheads_k, causal, variant)
REFERENCE_CASES = {
    "causal_gqa": (5, 6, 4, 2, True, {}),
    "mha_window_softcap": (6, 5, 2, 2, False, dict(window_size=(2, 1), softcap=0.8)),
}


@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_backward_reference_with_dropout_matches_finite_differences(name):
    seqlen_q, seqlen_k, nheads, nheads_k, causal, variant = REFERENCE_CASES[name]
    rng = np.random.default_rng(40)
    q, k, v = _qkv(rng, 2, seqlen_q, seqlen_k, nheads, 3, scale=1.5, nheads_k=nheads_k)
    dout = rng.standard_normal(q.shape)
    state = DropoutState(0.4, BIG_SEED, 5)
    kept = state.keep(range(2), nheads, seqlen_q, seqlen_k)
    assert kept.any() and not kept.all()  # some pairs dropped, some kept: the test can tell
    got = attention_backward_reference(dout, q, k, v, causal=causal, dropout=state, **variant)
    want = _numeric_grads(dout, q, k, v, None, causal, dropout=state, **variant)
    for g, w in zip(got, want):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    undropped = attention_backward_reference(dout, q, k, v, causal=causal, **variant)
    assert not np.allclose(got[2], undropped[2])  # dropout does enter the gradient


def test_probs_with_dropout_rebuild_out():
    rng = np.random.default_rng(41)
    q, k, v = _qkv(rng, 2, 17, 33, 4, 8, nheads_k=2)
    state = DropoutState(0.3, 99, 1)
    out, lse = attention_reference(q, k, v, causal=True, dropout=state)
    _, undropped_lse = attention_reference(q, k, v, causal=True)
    np.testing.assert_array_equal(lse, undropped_lse)  # lse is of the undropped logits
    probs = attention_probs(q, k, lse, causal=True, dropout=state)
    np.testing.assert_array_equal(probs == 0, ~state.keep(range(2), 4, 17, 33) | (np.triu(np.ones((17, 33)), 17) > 0))
    again = np.einsum("bhqk,bkhd->bqhd", probs, np.repeat(v, 2, axis=2))
    np.testing.assert_allclose(again, out, rtol=1e-12, atol=1e-12)


def test_naive_baselines_take_the_same_dropout():
    """The GPU tests' error bound comes from the naive 16-bit computation: it must drop the same pairs."""
    rng = np.random.default_rng(42)
    q, k, v = _qkv(rng, 1, 40, 50, 2, 16)
    dout = rng.standard_normal(q.shape)
    state = DropoutState(0.2, 8, 8)
    ref, _ = attention_reference(q, k, v, dropout=state)
    undropped, _ = attention_reference(q, k, v)
    lowp, _ = attention_naive_lowp(q, k, v, dropout=state)
    assert 0 < np.abs(lowp - ref).max() < 1e-2 < np.abs(undropped - ref).max()
    grads = attention_backward_reference(dout, q, k, v, dropout=state)
    naive = attention_backward_naive_lowp(dout, q, k, v, dropout=state)
    for g, n in zip(grads, naive):
        assert 0 < np.abs(g - n).max() < 2e-2 * (1 + np.abs(g).max())


def test_packed_sequences_are_numbered_like_batches():
    """A packed batch of equal-length sequences drops what the dense batch does: sequence i is batch i."""
    rng = np.random.default_rng(43)
    batch, sq, sk, nheads, nheads_k = 3, 9, 20, 4, 2
    q, k, v = _qkv(rng, batch, sq, sk, nheads, 8, nheads_k=nheads_k)
    dout = rng.standard_normal(q.shape)
    state = DropoutState(0.3, BIG_SEED, 77)
    cu_q, cu_k = np.arange(batch + 1) * sq, np.arange(batch + 1) * sk
    packed = [x.reshape((-1,) + x.shape[2:]) for x in (q, k, v, dout)]
    out, lse = attention_varlen_reference(*packed[:3], cu_q, cu_k, causal=True, dropout=state)
    dense_out, dense_lse = attention_reference(q, k, v, causal=True, dropout=state)
    np.testing.assert_allclose(out, dense_out.reshape(out.shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, dense_lse.transpose(1, 0, 2).reshape(lse.shape), rtol=1e-12, atol=1e-12)
    grads = attention_varlen_backward_reference(packed[3], *packed[:3], cu_q, cu_k, causal=True, dropout=state)
    dense = attention_backward_reference(dout, q, k, v, causal=True, dropout=state)
    for g, d in zip(grads, dense):
        np.testing.assert_allclose(g, d.reshape(g.shape), rtol=1e-12, atol=1e-12)


# --- what a call with dropout compiles and passes -----------------------------------------------------------------

@pytest.mark.parametrize("family, dtype, precision", [(MMA_SM80, "float16", ""), (MMA_SM80, "bfloat16", ""),
                                                      (MMA_TF32, "float32", "tf32")])
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_names_carry_the_dropout_policy(family, dtype, precision, kind):
    on = Variant(dtype, "band", softcap=True, precision=precision, dropout=True)
    off = Variant(dtype, "band", softcap=True, precision=precision)
    config = select_config(kind, H100, 128, variant=on)
    with_dropout = family.kernel_name(kind, config, 128, on, True)
    without = family.kernel_name(kind, config, 128, off, True)
    assert "cf::Dropout" in with_dropout and "cf::NoDropout" not in with_dropout
    assert "cf::NoDropout" in without and "cf::Dropout" not in without  # the generator compiles out
    assert with_dropout.replace("cf::Dropout", "cf::NoDropout") == without  # nothing else differs


def test_a_dropout_call_describes_its_problem_and_parameters():
    p = problem(dropout_p=0.1)
    assert p.variant.dropout and p.dropout_p == 0.1
    assert not problem().variant.dropout and not problem(dropout_p=0.0).variant.dropout
    record = _launch.static_params(p).array[0]
    assert int(record["dropout_threshold"]) == DropoutState(0.1, 0, 0).threshold
    assert record["dropout_scale"] == np.float32(DropoutState(0.1, 0, 0).scale)
    # the per-call fields: seed and offset as given (written with the pointers), zeros without dropout
    assert _launch.dropout_fields(DropoutState(0.1, BIG_SEED, 2**32 - 1)) == (BIG_SEED, 2**32 - 1)
    assert _launch.dropout_fields(None) == (0, 0)


def _dropout_instances():
    """The three tile kernels with dropout on the tiles an H100 gets at head dim 128: plain float16 (dK/dV with and
    without atomic dQ) and bfloat16 with the band mask, softcap and ALiBi; 6 instances (CI time)."""
    out = []
    for variant, kinds in ((Variant("float16", dropout=True), (("fwd", False), ("bwd", True), ("bwd", False),
                                                               ("bwd_dq", False))),
                           (Variant("bfloat16", "band", True, True, dropout=True), (("fwd", False), ("bwd", True)))):
        for kind, atomic in kinds:
            config = select_config(kind, H100, 128, variant=variant)
            out.append((MMA_SM80.sources[kind], MMA_SM80.kernel_name(kind, config, 128, variant, atomic)))
    return out


INSTANCES = _dropout_instances()


@pytest.fixture(scope="module")
def dropout_reports():
    require_nvrtc("the dropout kernels' compile check")
    return _nvrtc.compile_all(("sm_90",), jobs=2, instances=INSTANCES)  # one NVRTC program per source file


@pytest.mark.parametrize("name", [n for _, n in INSTANCES])
def test_dropout_kernels_compile_without_spills(dropout_reports, name):
    r = dropout_reports[("sm_90", name)]
    assert r.registers > 0, "ptxas report not parsed"
    assert (r.spill_stores, r.spill_loads) == (0, 0), f"{name} spills: {r}"
    assert r.stack_frame == 0, f"{name} uses {r.stack_frame} bytes of local memory"
