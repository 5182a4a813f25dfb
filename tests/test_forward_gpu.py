"""The forward kernels on a GPU against float64 attention, on fresh random inputs with NaN-poisoned outputs."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import GPU_SKIP_REASON, cases_or_skip, requires_gpu
from cupyflash._accuracy import check_against_reference, random_array

import cupyflash as cf
from cupyflash.configs import KERNEL_HEAD_DIMS, fwd_candidates

pytestmark = [requires_gpu, pytest.mark.usefixtures("poisoned_outputs")]

AWKWARD_SEQLENS = [1, 17, 97, 1025, 4097]
HEAD_DIMS = list(range(8, 257, 8))
DTYPES = ["float16", "bfloat16"]


def run_case(seed, batch, seqlen_q, seqlen_k, nheads, head_dim, dtype, causal, config=None, scale=None):
    rng = np.random.default_rng(seed)
    q, q64 = random_array(rng, (batch, seqlen_q, nheads, head_dim), dtype)
    k, k64 = random_array(rng, (batch, seqlen_k, nheads, head_dim), dtype)
    v, v64 = random_array(rng, (batch, seqlen_k, nheads, head_dim), dtype)
    out, lse = cf.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_lse=True, config=config)
    assert out.shape == q.shape and out.dtype == q.dtype and out.flags.c_contiguous
    assert lse.shape == (batch, nheads, seqlen_q) and lse.dtype == np.float32
    scale = scale or 1 / math.sqrt(head_dim)
    return check_against_reference(out, lse, q64, k64, v64, scale, causal, dtype)


seqlens = st.one_of(st.sampled_from(AWKWARD_SEQLENS), st.integers(1, 300))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3), seqlen_q=seqlens, seqlen_k=seqlens,
       nheads=st.integers(1, 3), head_dim=st.sampled_from(HEAD_DIMS), dtype=st.sampled_from(DTYPES),
       causal=st.booleans())
def test_forward_matches_float64(seed, batch, seqlen_q, seqlen_k, nheads, head_dim, dtype, causal):
    # Keep the float64 reference's score matrix modest when both sides are long.
    while batch * nheads * seqlen_q * seqlen_k > 2**26 and batch * nheads > 1:
        batch, nheads = max(1, batch // 2), max(1, nheads // 2)
    run_case(seed, batch, seqlen_q, seqlen_k, nheads, head_dim, dtype, causal)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_every_head_dim(head_dim, dtype, causal):
    run_case(head_dim, 2, 97, 211, 3, head_dim, dtype, causal)


def _device_candidates():
    from cupyflash._device import device_limits

    limits = device_limits(0)
    return [(kd, c) for kd in KERNEL_HEAD_DIMS for c in fwd_candidates(limits, kd)]


# Without a GPU the module is skipped; with one, a failure to list candidates must fail loudly, not parametrize
# the test away.
CANDIDATES = [] if GPU_SKIP_REASON else _device_candidates()


@pytest.mark.parametrize("kd,config", CANDIDATES, ids=[f"d{kd}-{c}" for kd, c in CANDIDATES])
@pytest.mark.parametrize("causal", [False, True])
def test_every_candidate_config(kd, config, causal):
    # head dim kd - 8 exercises the zero-padded columns, kd the full tile; seqlens straddle tile edges.
    for i, head_dim in enumerate((kd - 8, kd)):
        run_case(kd + i, 1, config.block_m * 2 + 5, config.block_n * 3 + 7, 2, head_dim,
                 DTYPES[(kd // 32 + i) % 2], causal, config=config)


_VARIANTS = {"window-softcap-gqa": dict(causal=True, window_size=(150, 7), softcap=20.0, group=4),
             "alibi-window": dict(causal=False, window_size=(40, 300), alibi=True, group=1),
             "split": dict(causal=True, num_splits=3, group=2)}
_VARIANT_FEATURES = {"window-softcap-gqa": dict(softcap=True), "alibi-window": dict(alibi=True),
                     "split": dict(split_kv=True)}


def _producer_cases():
    """(kd, config, variant name) for every producer-warpgroup candidate and each variant its table entry takes (an
    entry that avoids softcap or ALiBi is no candidate for them: config= would refuse it)."""
    from cupyflash._device import device_limits
    from cupyflash.configs import candidates
    from cupyflash.problem import Variant

    limits = device_limits(0)
    return [(kd, c, name) for kd, c in CANDIDATES if c.producer_warps for name in _VARIANTS
            if c in candidates("fwd", limits, kd, Variant(DTYPES[kd // 64 % 2], "band", **_VARIANT_FEATURES[name]))]


PRODUCER_CASES = [] if GPU_SKIP_REASON else _producer_cases()


# Tiles of the wgmma_sm90 family only (compute capability 9.0, not disabled by CUPYFLASH_DISABLE_FAMILIES).
_WGMMA_ONLY = "{} tiles are the wgmma_sm90 family's: none on this GPU or with CUPYFLASH_DISABLE_FAMILIES naming it"


@pytest.mark.parametrize("kd,config,name", cases_or_skip(PRODUCER_CASES,
                                                         [f"d{kd}-{c}-{n}" for kd, c, n in PRODUCER_CASES],
                                                         _WGMMA_ONLY.format("Producer-warpgroup"), 3))
def test_producer_warpgroup_tiles_take_the_variants(kd, config, name):
    # The producer-warpgroup pipeline (cuda_src/pipeline.cuh) with the mask, score, GQA and split-key policies.
    import cupy

    from gpu_helpers import make_problem

    variant = dict(_VARIANTS[name])
    group, causal = variant.pop("group"), variant.pop("causal")
    num_splits = variant.pop("num_splits", 0)
    nheads_k = 2
    if variant.pop("alibi", False):
        variant["alibi_slopes"] = cupy.asarray(np.linspace(0.05, 0.4, nheads_k * group, dtype=np.float32))
    (q, k, v, _), (q64, k64, v64, _) = make_problem(kd, 2, config.block_m * 3 + 11, config.block_n * 5 + 3,
                                                    nheads_k * group, nheads_k, kd - 8, DTYPES[kd // 64 % 2])
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, config=config, num_splits=num_splits,
                                  **variant)
    check_against_reference(out, lse, q64, k64, v64, 1 / math.sqrt(kd - 8), causal, DTYPES[kd // 64 % 2], **variant)


TMA_CANDIDATES = [(kd, c) for kd, c in CANDIDATES if c.tma]


@pytest.mark.parametrize("kd,config", cases_or_skip(TMA_CANDIDATES, [f"d{kd}-{c}" for kd, c in TMA_CANDIDATES],
                                                    _WGMMA_ONLY.format("Bulk-copy (TMA)"), 2))
def test_tensor_maps_follow_each_calls_arrays(kd, config):
    # One plan, its tensor maps encoded once (cupyflash/_tma.py): calls whose q, k, v sit elsewhere (one moved, all
    # moved, back to the first) must read their own arrays. The second batch alone is an extent-1 batch with its
    # parent's stride (a stride the map never uses, and replaces). Head dim kd - 8: the boxes' last columns lie past
    # the rows and must come in as zeros.
    from cupyflash.forward import plan_for

    dtype = DTYPES[kd // 64 % 2]
    rng = np.random.default_rng(kd)
    shape = (2, 2 * config.block_m + 3, 4, kd - 8)
    arrays = [random_array(rng, shape, dtype) for _ in range(4)]
    (q0, _), (k0, _), (v0, _), (x, _) = arrays
    in_float64 = {id(a): a64 for a, a64 in arrays}
    plan = plan_for(q0, k0, v0, causal=True, config=config)
    assert plan.config.tma  # the case really runs bulk copies
    for q, k, v in ((q0, k0, v0), (x, k0, v0), (q0, x, v0), (q0, k0, x), (x, x, x), (q0, k0, v0)):
        for rows in (slice(None), slice(1, 2)):  # both batches, and the second alone
            out, lse = cf.flash_attn_func(q[rows], k[rows], v[rows], causal=True, return_lse=True, config=config)
            check_against_reference(out, lse, *(in_float64[id(t)][rows] for t in (q, k, v)), 1 / math.sqrt(kd - 8),
                                    True, dtype)
    assert plan_for(q0, k0, v0, causal=True, config=config) is plan


PERSISTENT_CANDIDATES = [(kd, c) for kd, c in CANDIDATES if c.persistent]
# (batch, query tiles, key rows in block_n units, nheads, nheads_k, causal, num_splits): more (query tile, head,
# batch) items than an H100 has SMs (132), so that each persistent block takes several in turn; causal with fewer
# keys than queries gives tiles no key at all (no Q copy, a zero output). "tiles-without-keys" gives some block a
# keyless tile after one with keys (checked below): its zero output is staged in sQ while the last one's may still
# be read. (In the causal order, longest tiles first, keyless tiles come last: none falls between two with keys,
# where the Q tile's barriers once fell two phases apart in the query-tiles-fastest order.)
_PERSISTENT_CASES = {"many-tiles": (3, 7, 2.5, 8, 8, False, 1), "tiles-without-keys": (3, 8, 2.2, 12, 4, True, 1),
                     "split-gqa": (2, 5, 6.3, 16, 2, True, 2)}
_H100_SMS = 132


def _key_tile_counts(config, batch, seqlen_q, seqlen_k, nheads, causal, splits):
    """Key tiles of each persistent work item, in flash_fwd.cu's order (WorkItem: query tiles fastest, or under a
    mask slowest; causal: last query tile first; KeySplits: runs from the last key tile)."""
    q_tiles = -(-seqlen_q // config.block_m)
    counts = []
    for item in range(q_tiles * splits * nheads * batch):
        tile = item // (nheads * batch) if causal else item % (q_tiles * splits)
        q_tile, split = divmod(tile, splits)
        m0 = (q_tiles - 1 - q_tile if causal else q_tile) * config.block_m
        n = -(-max(0, min(seqlen_k, m0 + config.block_m + seqlen_k - seqlen_q) if causal else seqlen_k)
              // config.block_n)
        run = -(-n // splits)
        end = max(0, n - split * run)
        counts.append(end - max(0, end - run))
    return counts


def _some_block_takes_a_keyless_tile_after_a_keyed_one(counts, blocks):
    for b in range(min(blocks, len(counts))):
        keyed = [c > 0 for c in counts[b::blocks]]
        if any(not k and any(keyed[:i]) for i, k in enumerate(keyed)):
            return True
    return False


@pytest.mark.parametrize("kd,config", cases_or_skip(PERSISTENT_CANDIDATES,
                                                    [f"d{kd}-{c}" for kd, c in PERSISTENT_CANDIDATES],
                                                    _WGMMA_ONLY.format("Persistent-block"), 2))
@pytest.mark.parametrize("case", list(_PERSISTENT_CASES))
def test_persistent_blocks_take_tile_after_tile(kd, config, case):
    # Persistent blocks (pipeline.cuh ProducerWarpgroup<_, _, true>): ring slots, barrier phases and the Q tile's
    # barriers carry on from one work item to the next.
    from gpu_helpers import make_problem

    batch, q_tiles, keys, nheads, nheads_k, causal, splits = _PERSISTENT_CASES[case]
    seqlen_q, seqlen_k = q_tiles * config.block_m - 3, int(keys * config.block_n)
    assert batch * nheads * q_tiles * splits > _H100_SMS
    if case == "tiles-without-keys":  # the geometry that the case is for
        counts = _key_tile_counts(config, batch, seqlen_q, seqlen_k, nheads, causal, splits)
        assert _some_block_takes_a_keyless_tile_after_a_keyed_one(counts, _H100_SMS), case
    dtype = DTYPES[kd // 64 % 2]
    (q, k, v, _), (q64, k64, v64, _) = make_problem(kd + q_tiles, batch, seqlen_q, seqlen_k, nheads, nheads_k, kd - 8,
                                                    dtype)
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, config=config, num_splits=splits)
    check_against_reference(out, lse, q64, k64, v64, 1 / math.sqrt(kd - 8), causal, dtype)


@pytest.mark.parametrize("seqlen_q,seqlen_k", [(300, 50), (1025, 17), (64, 1), (1, 1)])
def test_causal_rows_without_keys_are_zero(seqlen_q, seqlen_k):
    import cupy

    run_case(7, 2, seqlen_q, seqlen_k, 2, 64, "float16", True)
    rng = np.random.default_rng(8)
    q, _ = random_array(rng, (1, seqlen_q, 1, 64), "float16")
    k, _ = random_array(rng, (1, seqlen_k, 1, 64), "float16")
    out, lse = cf.flash_attn_func(q, k, k, causal=True, return_lse=True)
    empty = max(0, seqlen_q - seqlen_k)
    assert bool((out[:, :empty] == 0).all()) and bool(cupy.isneginf(lse[:, :, :empty]).all())
    assert bool(cupy.isfinite(lse[:, :, empty:]).all())


def test_softmax_scale_is_applied():
    run_case(11, 1, 129, 130, 2, 64, "bfloat16", False, scale=0.5)
    run_case(12, 1, 129, 130, 2, 64, "float16", True, scale=2.0)


def test_one_hot_values_pick_the_attended_key():
    """Structured probe: with q = k * large and V = identity, attention approximates a one-hot selection."""
    import cupy

    n = 64
    k = cupy.eye(n, dtype=cupy.float16).reshape(1, n, 1, n) * 8
    v = cupy.eye(n, dtype=cupy.float16).reshape(1, n, 1, n)
    out = cf.flash_attn_func(k, k, v, softmax_scale=1.0)
    assert bool((cupy.argmax(out[0, :, 0].astype(cupy.float32), axis=1) == cupy.arange(n)).all())
    assert float(out[0, :, 0].astype(cupy.float32).diagonal().min()) > 0.99


def test_strided_bhsd_views_are_used_in_place():
    rng = np.random.default_rng(3)
    b, h, s, d = 2, 4, 333, 128
    q, q64 = random_array(rng, (b, h, s, d), "bfloat16")
    k, k64 = random_array(rng, (b, h, s, d), "bfloat16")
    v, v64 = random_array(rng, (b, h, s, d), "bfloat16")
    t = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    out, lse = cf.flash_attn_func(t(q), t(k), t(v), causal=True, return_lse=True)
    check_against_reference(out, lse, t(q64), t(k64), t(v64), 1 / math.sqrt(d), True, "bfloat16")
    assert not t(q).flags.c_contiguous  # the case really is strided


def test_misaligned_views_are_copied_and_correct():
    rng = np.random.default_rng(4)
    big, big64 = random_array(rng, (1, 100, 2, 72), "float16")
    q, q64 = big[..., 4:68], big64[..., 4:68]  # address 8 bytes off a 16-byte boundary
    out, lse = cf.flash_attn_func(q, q, q, return_lse=True)
    check_against_reference(out, lse, q64, q64, q64, 1 / 8, False, "float16")


def test_runs_on_the_current_stream():
    import cupy

    rng = np.random.default_rng(5)
    q, q64 = random_array(rng, (2, 500, 2, 64), "float16")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        out, lse = cf.flash_attn_func(q, q, q, return_lse=True)
    stream.synchronize()
    check_against_reference(out, lse, q64, q64, q64, 1 / 8, False, "float16")


def test_offsets_beyond_32_bits():
    """A batch stride of 2**31 elements: the second batch lives past what 32-bit indexing can reach."""
    import cupy

    stride = 2**31 + 64
    try:
        pool = cupy.empty(stride + 4096, dtype=cupy.float16)
    except cupy.cuda.memory.OutOfMemoryError:
        pytest.skip("needs 4 GiB of GPU memory")
    b, s, h, d = 2, 16, 1, 64
    view = cupy.ndarray((b, s, h, d), cupy.float16, pool.data, strides=(stride * 2, h * d * 2, d * 2, 2))
    rng = np.random.default_rng(6)
    host = rng.standard_normal((b, s, h, d)).astype(np.float16)
    view[...] = cupy.asarray(host)
    out, lse = cf.flash_attn_func(view, view, view, causal=True, return_lse=True)
    x64 = cupy.asarray(host.astype(np.float64))
    check_against_reference(out, lse, x64, x64, x64, 1 / 8, True, "float16")
    del pool


def test_empty_batch_launches_nothing():
    import cupy

    q = cupy.zeros((0, 5, 2, 64), cupy.float16)
    out, lse = cf.flash_attn_func(q, q, q, return_lse=True)
    assert out.shape == (0, 5, 2, 64) and lse.shape == (0, 2, 5)


def test_bad_inputs_raise_before_launch():
    import cupy

    q = cupy.zeros((1, 8, 2, 64), cupy.float16)
    with pytest.raises(TypeError, match="float32"):
        cf.flash_attn_func(q.astype(cupy.float32), q, q)
    with pytest.raises(ValueError, match="multiple of nheads"):
        cf.flash_attn_func(q[:, :, :2].repeat(3, axis=2)[:, :, :3], q, q)
    with pytest.raises(ValueError, match="contiguous"):
        cf.flash_attn_func(q[..., ::2], q[..., ::2], q[..., ::2])
    with pytest.raises(TypeError, match="CUDA"):
        cf.flash_attn_func(cupy.asnumpy(q), q, q)
    with pytest.raises(ValueError, match="config"):
        cf.flash_attn_func(q, q, q, config=cf.TileConfig("mma_sm80", 48, 48, 3))
