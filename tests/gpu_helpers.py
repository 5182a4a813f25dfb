"""Inputs and error measures shared by the GPU tests."""
import ml_dtypes
import numpy as np
from hypothesis import strategies as st

# The error criterion and random_array live in the package (python -m cupyflash selftest uses them too).
from cupyflash._accuracy import random_array

_BIAS_HOST = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
#: How make_bias and make_mask lay their arrays out in memory.
LAYOUTS = ["contiguous", "broadcast_view", "squeezed", "strided_keys", "unaligned"]


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


def runs_wgmma():
    """Whether the forward runs on the wgmma family here: a compute capability 9.0 device, the family not disabled
    (CUPYFLASH_DISABLE_FAMILIES=wgmma_sm90 runs the forward suites on mma_sm80, where Hopper's tile picks don't
    apply but every numerical check does)."""
    from cupyflash._device import device_limits
    from cupyflash.families import FAMILIES, WGMMA_SM90

    return device_limits(0).compute_capability == 90 and WGMMA_SM90 in FAMILIES


def backward_mode(mode):
    """flash_attn_backward's keywords for a test's backward mode: "default" (the dispatcher's choice),
    "deterministic" or "atomic" (dQ by atomics)."""
    return {"deterministic": True} if mode == "deterministic" else {"atomic_dq": True} if mode == "atomic" else {}


# hypothesis strategies of the bias and mask suites: short sequences with tile-edge and awkward lengths, head dims
# from the odd (padded) to 256, window sides (-1: unbounded)
BIAS_SEQLENS = st.one_of(st.sampled_from([1, 17, 97, 130, 257]), st.integers(1, 200))
BIAS_HEAD_DIMS = st.one_of(st.sampled_from([16, 59, 64, 128, 256]), st.integers(1, 32).map(lambda i: 8 * i))
BIAS_SIDES = st.one_of(st.just(-1), st.integers(0, 40))
