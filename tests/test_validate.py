"""Input checks (cupyflash._validate) on ArraySpec metadata: no GPU needed."""
import math

import numpy as np
import pytest

from cupyflash._validate import (ArraySpec, AttentionShape, as_cuda_array, check_qkv, check_softmax_scale,
                                 needs_aligned_copy)

ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "uint16": 2}


def spec(shape, dtype="float16", strides=None, device=0, ptr=0):
    """An array's metadata; strides default to C-contiguous, in bytes."""
    itemsize = ITEMSIZE[dtype]
    if strides is None:
        strides, step = [], itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
    return ArraySpec(tuple(shape), tuple(strides), dtype, itemsize, device, ptr)


def qkv(q_shape=(2, 5, 3, 64), kv_shape=(2, 7, 3, 64), **kw):
    return spec(q_shape, **kw), spec(kv_shape, **kw), spec(kv_shape, **kw)


@pytest.mark.parametrize("dtype, device", [("float16", 0), ("bfloat16", 3)])
def test_check_qkv_accepts_and_reports_the_shape(dtype, device):
    got = check_qkv(*qkv(dtype=dtype, device=device))
    assert got == AttentionShape(batch=2, seqlen_q=5, seqlen_k=7, nheads=3, head_dim=64, dtype=dtype,
                                 device=device)


@pytest.mark.parametrize("head_dim", [8, 40, 256])
def test_check_qkv_accepts_head_dims_from_8_to_256(head_dim):
    assert check_qkv(*qkv((1, 1, 1, head_dim), (1, 2, 1, head_dim))).head_dim == head_dim


def raises(exc, q, k, v, *substrings):
    with pytest.raises(exc) as info:
        check_qkv(q, k, v)
    for s in substrings:
        assert s in str(info.value), (s, str(info.value))


def test_wrong_rank():
    q, k, v = qkv()
    raises(ValueError, spec((2, 5, 64)), k, v, "q must have 4 dimensions", "(2, 5, 64)")
    raises(ValueError, q, spec((1, 2, 7, 3, 64)), v, "k must have 4 dimensions", "(1, 2, 7, 3, 64)")


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_unsupported_dtype(dtype):
    raises(TypeError, *qkv(dtype=dtype), "float16 or bfloat16", dtype)


@pytest.mark.parametrize("which", [1, 2])
def test_mismatched_dtypes(which):
    arrays = list(qkv())
    arrays[which] = spec(arrays[which].shape, dtype="bfloat16")
    raises(TypeError, *arrays, "one dtype", f"{'qkv'[which]} bfloat16", "q float16")


def test_different_devices():
    q, k, v = qkv()
    raises(ValueError, q, k, spec(v.shape, device=1), "one GPU", "v 1", "q 0")


def test_batch_mismatch():
    q, k, v = qkv()
    raises(ValueError, q, spec((4, 7, 3, 64)), v, "batch size of k (4)", "q's (2)")


def test_nheads_mismatch_mentions_grouped_query():
    q, k, v = qkv()
    raises(ValueError, q, k, spec((2, 7, 1, 64)), "nheads of v (1)", "q's (3)", "grouped-query")


def test_head_dim_mismatch():
    q, k, v = qkv()
    raises(ValueError, q, k, spec((2, 7, 3, 32)), "head dim of v (32)", "q's (64)")


def test_k_v_seqlen_mismatch():
    q, k, v = qkv()
    raises(ValueError, q, k, spec((2, 6, 3, 64)), "same seqlen", "7 and 6")


@pytest.mark.parametrize("head_dim", [0, 4, 60, 100, 264, 512])
def test_bad_head_dim(head_dim):
    raises(ValueError, *qkv((1, 4, 2, head_dim), (1, 4, 2, head_dim)), "multiple of 8 between 8 and 256",
           f"got {head_dim}")


@pytest.mark.parametrize("which", [0, 1, 2])
def test_last_dim_not_contiguous(which):
    # Every other element of a (.., 128) buffer: 4-byte steps along the head dim.
    arrays = list(qkv((1, 4, 2, 64), (1, 4, 2, 64)))
    arrays[which] = spec((1, 4, 2, 64), strides=(4 * 2 * 256, 2 * 256, 256, 4))
    raises(ValueError, *arrays, f"{'qkv'[which]}'s last dimension", "contiguous", "2 elements")


@pytest.mark.parametrize("shape", [(65536, 1, 1, 8), (1, 1, 65536, 8), (70000, 1, 70000, 8)])
def test_grid_limits(shape):
    raises(ValueError, *qkv(shape, shape), "at most 65535", str(max(shape[0], shape[2])))


def test_grid_limits_are_inclusive():
    shape = (65535, 1, 65535, 8)
    got = check_qkv(*qkv(shape, shape))
    assert (got.batch, got.nheads) == (65535, 65535)


def bhsd_as_bshd(b, h, s, d, ptr=0):
    """A contiguous (B, H, S, D) fp16 buffer transposed to (B, S, H, D) without copying."""
    contiguous = spec((b, h, s, d)).strides
    return spec((b, s, h, d), strides=(contiguous[0], contiguous[2], contiguous[1], 2), ptr=ptr)


def test_permuted_strided_views_are_accepted():
    q, k, v = bhsd_as_bshd(2, 3, 5, 64), bhsd_as_bshd(2, 3, 7, 64), bhsd_as_bshd(2, 3, 7, 64)
    assert check_qkv(q, k, v) == AttentionShape(2, 5, 7, 3, 64, "float16", 0)
    assert not needs_aligned_copy(q)  # rows of 128 bytes: used in place


@pytest.mark.parametrize("ptr", [0, 16, 256, 1 << 40])
def test_contiguous_aligned_needs_no_copy(ptr):
    assert not needs_aligned_copy(spec((2, 5, 3, 64), ptr=ptr))
    assert not needs_aligned_copy(spec((2, 5, 3, 8), dtype="bfloat16", ptr=ptr))


@pytest.mark.parametrize("ptr", [2, 8, 1 << 40 | 6])
def test_misaligned_address_needs_copy(ptr):
    assert needs_aligned_copy(spec((2, 5, 3, 64), ptr=ptr))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_stride_not_multiple_of_16_bytes_needs_copy(dim):
    strides = list(spec((2, 5, 3, 64)).strides)
    strides[dim] += 8  # still a whole number of fp16 elements, no longer 16-byte aligned
    assert needs_aligned_copy(spec((2, 5, 3, 64), strides=strides))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_stride_of_a_size_1_dimension_does_not_matter(dim):
    shape = [2, 5, 3, 64]
    shape[dim] = 1
    strides = list(spec(shape).strides)
    strides[dim] = 8  # never used to move, so its value is irrelevant
    assert not needs_aligned_copy(spec(shape, strides=strides))


@pytest.mark.parametrize("head_dim", [8, 64, 128, 200])
def test_default_softmax_scale(head_dim):
    assert check_softmax_scale(None, head_dim) == pytest.approx(1 / math.sqrt(head_dim), rel=1e-15)


@pytest.mark.parametrize("value", [0.5, 2, np.float32(0.25), np.float64(1e-3), np.int64(3)])
def test_softmax_scale_accepts_positive_numbers(value):
    got = check_softmax_scale(value, 64)
    assert type(got) is float and got == float(value)


@pytest.mark.parametrize("value", [0, 0.0, -0.125, -1, math.inf, -math.inf, math.nan, np.float32("nan")])
def test_softmax_scale_rejects_non_positive_or_non_finite(value):
    with pytest.raises(ValueError, match="finite and positive"):
        check_softmax_scale(value, 64)


@pytest.mark.parametrize("value", ["abc", object(), [0.5]])
def test_softmax_scale_rejects_non_numbers(value):
    with pytest.raises(TypeError, match="real number"):
        check_softmax_scale(value, 64)


@pytest.mark.parametrize("value", ["0.5", True])
def test_softmax_scale_rejects_numeric_strings_and_bools(value):
    with pytest.raises(TypeError):
        check_softmax_scale(value, 64)


def test_as_cuda_array_rejects_numpy_naming_cuda_and_the_type():
    a = np.zeros((2, 2), np.float16)
    assert a.__dlpack_device__()[0] == 1  # kDLCPU: the path this test exercises
    with pytest.raises(TypeError) as info:
        as_cuda_array(a, "q")
    msg = str(info.value)
    assert msg.startswith("q ") and "CUDA" in msg and "numpy.ndarray" in msg and "device type is 1" in msg


def test_as_cuda_array_rejects_a_list():
    with pytest.raises(TypeError, match=r"^k must be a CUDA array.*builtins\.list"):
        as_cuda_array([1.0, 2.0], "k")


def test_as_cuda_array_wraps_a_failed_dlpack_import_in_type_error():
    class FakeCuda:  # claims CUDA memory but cannot export it
        def __dlpack_device__(self):
            return (2, 0)

        def __dlpack__(self, *args, **kwargs):
            raise RuntimeError("cannot export")

    with pytest.raises(TypeError, match="v: could not import the CUDA array through DLPack"):
        as_cuda_array(FakeCuda(), "v")
