"""Inputs and error measures shared by the GPU tests."""
import ml_dtypes
import numpy as np
from hypothesis import strategies as st

from cupyflash.reference import attention_naive_lowp, attention_reference

#: Test dtypes: the arrays' dtype, or for float32 inputs the precision they run at ("float32" stands for
#: precision="highest", held against plain float32 arithmetic; "tf32" for precision="tf32", held against arithmetic
#: rounded to TF32 at each step).
HOST_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "tf32": np.float32}
PRECISION = {"float16": None, "bfloat16": None, "float32": "highest", "tf32": "tf32"}
_BIAS_HOST = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
#: How make_bias and make_mask lay their arrays out in memory.
LAYOUTS = ["contiguous", "broadcast_view", "squeezed", "strided_keys", "unaligned"]
# Absolute floor added to the "2x the naive low-precision error" criterion (for problems where the naive
# computation happens to be exact, e.g. a single key).
# float32: precision "highest" represents each operand to 2^-22 (16 x that covers unit-scale products, where the
# naive float32 error can be 0: one key); "tf32": 2^-11 per operand, and D = rowsum(dO o O) takes dO unrounded
# while dP = dO V^T takes it rounded (seen on the H100: 3e-4 with one key at head dim 128).
ERROR_FLOOR = {"float16": 1e-4, "bfloat16": 1e-3, "float32": 4e-6, "tf32": 1e-3}
# The bound of one rounding to the dtype, relative (half a unit in the last place): a kernel rounds each gradient
# once more than its terms, so on tiny problems, where the naive baseline can happen to be nearly exact, it may
# exceed 2x naive by about that much (seen on the H100: 1 query, 2 keys, bf16, 1.02x the old bar; with and without
# ALiBi alike, 450 gradients each).
ROUNDING = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "tf32": 2.0**-11}
LSE_FLOOR = 1e-4
# The multiple of the naive computation's error a kernel may make. precision="highest" is held to 16x plain float32
# arithmetic, not 2x: its three TF32 products represent each operand to 2^-22 (not fp32's 2^-24) and the tensor
# cores add each product into the float32 accumulator, key tile after key tile, less exactly than FFMA does
# (measured on the H100: up to 4x at seqlen 1k, growing with seqlen; docs/performance.md).
NAIVE_FACTOR = {"float16": 2, "bfloat16": 2, "float32": 16, "tf32": 2}


def random_array(rng, shape, dtype, scale=1.0):
    """A device array of `dtype` holding rounded standard-normal values, and the same values in float64."""
    import cupy

    host = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(HOST_DTYPES[dtype])
    dev = cupy.asarray(host.view(np.uint16)).view(host.dtype) if host.itemsize == 2 else cupy.asarray(host)
    return dev, cupy.asarray(host.astype(np.float64))


def make_problem(seed, batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype):
    """Device (q, k, v, dout) for nheads query heads and nheads_k K/V heads, and the same values in float64."""
    rng = np.random.default_rng(seed)
    q, q64 = random_array(rng, (batch, seqlen_q, nheads, head_dim), dtype)
    k, k64 = random_array(rng, (batch, seqlen_k, nheads_k, head_dim), dtype)
    v, v64 = random_array(rng, (batch, seqlen_k, nheads_k, head_dim), dtype)
    dout, dout64 = random_array(rng, (batch, seqlen_q, nheads, head_dim), dtype)
    return (q, k, v, dout), (q64, k64, v64, dout64)


def make_bias(rng, full, broadcast, bias_dtype, layout, hidden=0.0):
    """A device bias broadcastable to ``full`` (dims flagged in ``broadcast`` are 1), laid out as ``layout``, and
    its values in float64 (same shape). ``hidden``: fraction of entries set to -inf."""
    import cupy

    dims = tuple(1 if b else n for n, b in zip(full, broadcast))
    host = (rng.standard_normal(dims) * 2).astype(_BIAS_HOST[bias_dtype])
    if hidden:
        host[rng.random(dims) < hidden] = -np.inf
    b64 = cupy.asarray(host.astype(np.float64))

    def device(a):
        a = np.ascontiguousarray(a)
        return cupy.asarray(a.view(np.uint16)).view(a.dtype) if a.itemsize == 2 else cupy.asarray(a)

    if layout == "contiguous":
        dev = device(host).reshape(dims)
    elif layout == "broadcast_view":  # stride-0 dims of full size
        dev = cupy.broadcast_to(device(host).reshape(dims), full)
    elif layout == "squeezed":  # leading broadcast dims dropped
        lead = next((i for i, d in enumerate(dims) if d != 1), 3)
        dev = device(host).reshape(dims)[(0,) * lead]
    elif layout == "strided_keys":  # every other key of a wider array
        wide = np.zeros(dims[:3] + (2 * dims[3],), host.dtype)
        wide[..., ::2] = host
        dev = device(wide).reshape(wide.shape)[..., ::2]
    else:  # "unaligned": one element past a 16-byte boundary
        flat = np.zeros(host.size + 1, host.dtype)
        flat[1:] = host.ravel()
        dev = device(flat)[1:].reshape(dims)
    return dev, b64


def make_mask(rng, full, broadcast, layout, density, blocks=None, uniform=False):
    """A device bool mask broadcastable to ``full`` (flagged dims are 1), True with probability ``density``; with
    ``blocks``, made of blocks x blocks squares each wholly hidden, wholly visible or random (so that kernel tiles
    of every kind, skipped, unmasked and masked, occur); with ``uniform`` too, none random (block-sparse)."""
    import cupy

    dims = tuple(1 if b else n for n, b in zip(full, broadcast))
    host = rng.random(dims) < density
    if blocks:
        kinds = rng.integers(0, 2 if uniform else 3, dims[:2] + tuple(-(-n // blocks) for n in dims[2:]))
        kinds = kinds.repeat(blocks, axis=2).repeat(blocks, axis=3)[..., :dims[2], :dims[3]]
        host = np.where(kinds == 0, False, np.where(kinds == 1, True, host))
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


def backward_mode(mode):
    """flash_attn_backward's keywords for a test's backward mode: "default" (the dispatcher's choice),
    "deterministic" or "atomic" (dQ by atomics)."""
    return {"deterministic": True} if mode == "deterministic" else {"atomic_dq": True} if mode == "atomic" else {}


def to_float64(x):
    """Device float16/bfloat16/float32 array -> float64, going through the raw bits for bfloat16."""
    import cupy

    if str(x.dtype) == "bfloat16":
        bits = x.view(cupy.uint16).astype(cupy.uint32) << 16
        return bits.view(cupy.float32).astype(cupy.float64)
    return x.astype(cupy.float64)


def check_against_reference(out, lse, q64, k64, v64, scale, causal, dtype, **variant):
    """Assert out/lse agree with float64 attention within NAIVE_FACTOR (2 for 16-bit inputs) times the naive low-precision error plus a floor.
    NaN or inf anywhere in out fails; lse must be -inf exactly where the reference row sees no key.
    `variant` (window_size, softcap, alibi_slopes: any float CuPy array) goes straight to the reference functions;
    k64/v64 may have fewer heads than q64 (GQA/MQA)."""
    return assert_within_bounds([forward_errors(out, lse, q64, k64, v64, scale, causal, dtype, **variant)], dtype)


def forward_errors(out, lse, q64, k64, v64, scale, causal, dtype, **variant):
    """The checks of check_against_reference that need no bound (finite out, lse's -inf rows, lse within 2x the
    naive error), and {"out": (error, naive error, floor)} for the bound, which assert_within_bounds applies (to
    several parts together: a packed batch's sequences)."""
    import cupy

    ref_out, ref_lse = attention_reference(q64, k64, v64, scale, causal, xp=cupy, **variant)
    lowp_out, lowp_lse = attention_naive_lowp(*_naive_inputs(dtype, q64, k64, v64), scale, causal, dtype, xp=cupy,
                                              **variant)
    got = to_float64(out)
    assert bool(cupy.isfinite(got).all()), "output holds NaN/inf (unwritten or broken elements)"
    err = float(cupy.abs(got - ref_out).max()) if got.size else 0.0
    base = float(cupy.abs(lowp_out - ref_out).max()) if got.size else 0.0
    # The kernel rounds P before normalising it, the naive computation after: on outputs of a few elements the
    # naive error can happen to be far below one rounding (seen on the H100: 2 queries, head dim 1, bf16).
    floor = ERROR_FLOOR[dtype] + ROUNDING[dtype] * (float(cupy.abs(ref_out).max()) if got.size else 0.0)
    if lse is not None:
        lse = lse.astype(cupy.float64)
        empty = cupy.isneginf(ref_lse)
        assert not bool(cupy.isnan(lse).any()), "lse holds NaN"
        assert bool((cupy.isneginf(lse) == empty).all()), "lse is -inf exactly for rows that see no key"
        live = ~empty
        if bool(live.any()):
            lerr = float(cupy.abs(lse[live] - ref_lse[live]).max())
            lbase = float(cupy.abs(lowp_lse[live] - ref_lse[live]).max())
            factor = NAIVE_FACTOR[dtype]
            assert lerr <= factor * lbase + LSE_FLOOR, f"lse error {lerr:.3g} > {factor} x naive {lbase:.3g} + floor"
    return {"out": (err, base, floor)}


def _naive_inputs(dtype, *arrays):
    """The inputs a naive computation in ``dtype`` multiplies: as given (already in the dtype), or for "tf32"
    rounded to TF32 as the tensor cores take them."""
    if dtype != "tf32":
        return arrays
    from cupyflash.reference import round_to_dtype

    return tuple(round_to_dtype(x, "tf32") for x in arrays)


def assert_within_bounds(parts, dtype):
    """Each output's largest error over the parts within NAIVE_FACTOR (2 for 16-bit inputs) times the naive computation's largest error over the parts,
    plus the largest floor. Returns the out error, or {name: error} for gradients."""
    errors = {}
    for name in parts[0]:
        err = max(p[name][0] for p in parts)
        base = max(p[name][1] for p in parts)
        floor = max(p[name][2] for p in parts)
        factor = NAIVE_FACTOR[dtype]
        assert err <= factor * base + floor, f"{name} error {err:.3g} > {factor} x naive {base:.3g} + {floor:.2g}"
        errors[name] = err
    return errors["out"] if list(errors) == ["out"] else errors


def check_grads_against_reference(grads, dout64, q64, k64, v64, scale, causal, dtype, **variant):
    """Assert each of dq, dk, dv is within NAIVE_FACTOR (2 for 16-bit inputs) times the naive low-precision gradient's error (plus a floor relative to
    the gradient's size) of the float64 analytic gradient; NaN or inf anywhere fails. `variant` as in
    check_against_reference; with GQA/MQA dk and dv have k64's shape (summed over each group's query heads)."""
    return assert_within_bounds([grad_errors(grads, dout64, q64, k64, v64, scale, causal, dtype, **variant)], dtype)


def grad_errors(grads, dout64, q64, k64, v64, scale, causal, dtype, out=None, **variant):
    """Finite-gradient checks, and {name: (error, naive error, floor)} for assert_within_bounds. ``out``: the
    forward output the kernels were given; the reference and the naive baseline then take D = rowsum(dO * O)
    from it as the kernels do, so that both errors exclude what that D's rounding alone causes (which every
    backward given a 16-bit output has, and which dominates dbias summed over keys: its exact value is near 0,
    and the naive baseline's other roundings can happen to cancel D's error; seen on the H200)."""
    import cupy

    from cupyflash.reference import attention_backward_naive_lowp, attention_backward_reference

    with_dbias = len(grads) == 4  # (dq, dk, dv, dbias): dbias against the reference's, in the bias's shape
    out64 = None if out is None else to_float64(out)
    refs = attention_backward_reference(dout64, q64, k64, v64, scale, causal, xp=cupy, return_dbias=with_dbias,
                                        out=out64, **variant)
    lowp = attention_backward_naive_lowp(*_naive_inputs(dtype, dout64, q64, k64, v64), scale, causal, dtype, xp=cupy,
                                         return_dbias=with_dbias, out=out64, **variant)
    errors = {}
    for name, got, ref, base in zip(("dq", "dk", "dv", "dbias"), grads, refs, lowp):
        if name == "dbias":
            assert got.dtype == cupy.float32 and got.size == ref.size, (got.shape, ref.shape)
            ref, base = ref.reshape(got.shape), base.reshape(got.shape)
        got = to_float64(got)
        assert bool(cupy.isfinite(got).all()), f"{name} holds NaN/inf (unwritten or broken elements)"
        if not got.size:
            errors[name] = (0.0, 0.0, 0.0)
            continue
        ref_max = float(cupy.abs(ref).max())
        floor = ERROR_FLOOR[dtype] * (1 + ref_max) + ROUNDING[dtype] * ref_max
        errors[name] = (float(cupy.abs(got - ref).max()), float(cupy.abs(base - ref).max()), floor)
    return errors


# hypothesis strategies of the bias and mask suites: short sequences with tile-edge and awkward lengths, head dims
# from the odd (padded) to 256, window sides (-1: unbounded)
BIAS_SEQLENS = st.one_of(st.sampled_from([1, 17, 97, 130, 257]), st.integers(1, 200))
BIAS_HEAD_DIMS = st.one_of(st.sampled_from([16, 59, 64, 128, 256]), st.integers(1, 32).map(lambda i: 8 * i))
BIAS_SIDES = st.one_of(st.just(-1), st.integers(0, 40))
