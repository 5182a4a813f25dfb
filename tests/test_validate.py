"""Input checks (cupyflash._validate) on ArraySpec metadata: no GPU needed."""
import dataclasses
import math
import re

import numpy as np
import pytest

from cupyflash._validate import (ArraySpec, AttentionShape, as_cuda_array, check_bias, check_qkv,
                                 check_softmax_scale, describe, needs_aligned_copy)
from cupyflash.problem import Variant, kernel_window

ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "uint16": 2, "int32": 4, "int64": 8, "bool": 1}


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


@pytest.mark.parametrize("head_dim", [1, 3, 8, 12, 40, 59, 111, 200, 256])
def test_check_qkv_accepts_head_dims_from_1_to_256(head_dim):
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


@pytest.mark.parametrize("dtype", ["float64", "uint16"])
def test_unsupported_dtype(dtype):
    raises(TypeError, *qkv(dtype=dtype), "float16, bfloat16 (ml_dtypes.bfloat16) or float32", dtype)


def test_float32_runs_at_a_precision():
    assert describe(*qkv(dtype="float32")).variant.precision == "highest"
    assert describe(*qkv(dtype="float32"), precision="tf32").variant.precision == "tf32"
    assert describe(*qkv()).variant.precision == ""
    with pytest.raises(ValueError, match="precision must be one of 'highest', 'tf32' or None"):
        describe(*qkv(dtype="float32"), precision="float32")
    with pytest.raises(ValueError, match="precision applies to float32 inputs.*got 'tf32'"):
        describe(*qkv(dtype="bfloat16"), precision="tf32")


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


def test_k_v_shape_mismatch_names_the_layout():
    q, k, v = qkv()
    raises(ValueError, q, k, spec((2, 7, 1, 64)), "same nheads", "(2, 7, 1, 64)", "(batch, seqlen, nheads, headdim)")


@pytest.mark.parametrize("nheads, nheads_k", [(3, 2), (8, 3), (1, 2), (4, 0)])
def test_nheads_not_a_multiple_of_nheads_k(nheads, nheads_k):
    q, k, v = qkv((2, 5, nheads, 64), (2, 7, nheads_k, 64))
    raises(ValueError, q, k, v, f"nheads of q ({nheads})", f"nheads of k and v ({nheads_k})", "grouped-query")


@pytest.mark.parametrize("nheads, nheads_k", [(8, 8), (8, 4), (8, 2), (8, 1), (32, 8)])
def test_grouped_query_heads_are_accepted(nheads, nheads_k):
    got = check_qkv(*qkv((2, 5, nheads, 64), (2, 7, nheads_k, 64)))
    assert (got.nheads, got.nheads_k) == (nheads, nheads_k)


def test_head_dim_mismatch():
    q, k, v = qkv()
    raises(ValueError, q, k, spec((2, 7, 3, 32)), "head dim of v (32)", "q's (64)")


def test_k_v_seqlen_mismatch():
    q, k, v = qkv()
    raises(ValueError, q, k, spec((2, 6, 3, 64)), "same seqlen", "7 and 6")


@pytest.mark.parametrize("head_dim", [0, 257, 264, 512])
def test_bad_head_dim(head_dim):
    raises(ValueError, *qkv((1, 4, 2, head_dim), (1, 4, 2, head_dim)), "between 1 and 256", f"got {head_dim}")


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


# ---- variant arguments and the Problem they describe


def problem(**kw):
    return describe(*qkv((2, 5, 4, 64), (2, 7, 2, 64)), **kw)


def test_plain_problem():
    p = problem()
    assert p.variant == Variant("float16") and p.window == (-1, -1) and p.heads_per_kv == 2
    assert p.softmax_scale == pytest.approx(1 / 8) and p.padded_head_dim == 64


@pytest.mark.parametrize("causal, window, expected, mask", [
    (True, (-1, -1), (-1, 0), "band"), (False, (3, 0), (3, 0), "band"), (True, (3, 5), (3, 0), "band"),
    (False, (100, 100), (-1, -1), "none"), (False, (7, 5), (-1, -1), "none"), (False, (6, 4), (6, 4), "band"),
    (False, (0, 0), (0, 0), "band")])
def test_window_normalisation(causal, window, expected, mask):
    p = problem(causal=causal, window_size=window)  # seqlen_q 5, seqlen_k 7
    assert p.window == expected and p.variant.mask == mask


def test_kernel_window_covers_unbounded_sides():
    assert kernel_window(problem(causal=True)) == (7, 0)
    assert kernel_window(problem(window_size=(2, -1))) == (2, 5)


@pytest.mark.parametrize("window, exc, text", [((-2, 0), ValueError, "-1 (unbounded) or >= 0"),
                                               ((0, -5), ValueError, "right"), ((1.5, 0), TypeError, "int"),
                                               ((True, 0), TypeError, "int"), (3, TypeError, "pair"),
                                               ((1, 2, 3), TypeError, "pair")])
def test_bad_window(window, exc, text):
    with pytest.raises(exc, match=re.escape(text)):
        problem(window_size=window)


@pytest.mark.parametrize("softcap, exc", [(-1.0, ValueError), (math.inf, ValueError), (math.nan, ValueError),
                                          ("1", TypeError), (True, TypeError)])
def test_bad_softcap(softcap, exc):
    with pytest.raises(exc, match="softcap"):
        problem(softcap=softcap)


def test_softcap_variant():
    assert problem(softcap=30.0).variant.softcap and not problem(softcap=0).variant.softcap


@pytest.mark.parametrize("shape, stride", [((4,), 0), ((2, 4), 4), ((1, 4), 0)])
def test_alibi_shapes(shape, stride):
    p = problem(alibi_slopes=spec(shape, "float32"))
    assert p.variant.alibi and p.alibi_batch_stride == (stride if shape[0] == 2 else 0)


@pytest.mark.parametrize("slopes, exc, text", [
    (spec((3,), "float32"), ValueError, "(nheads,) = (4,)"), (spec((2, 2, 4), "float32"), ValueError, "shape"),
    (spec((4,), "float16"), TypeError, "float32"), (spec((4,), "float32", device=1), ValueError, "GPU"),
    (spec((2, 4), "float32", strides=(32, 8)), ValueError, "contiguous")])
def test_bad_alibi(slopes, exc, text):
    with pytest.raises(exc, match=re.escape(text)):
        problem(alibi_slopes=slopes)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.999])
def test_dropout_turns_the_variant_on(p):
    described = problem(dropout_p=p)
    assert described.variant.dropout and described.dropout_p == p
    assert not problem(dropout_p=0).variant.dropout


@pytest.mark.parametrize("p", [-0.1, 1.0, "0", None])
def test_bad_dropout(p):
    with pytest.raises(ValueError, match="dropout_p"):
        problem(dropout_p=p)


@pytest.mark.parametrize("head_dim, padded", [(1, 8), (12, 16), (59, 64), (64, 64), (111, 112), (200, 200)])
def test_padded_head_dim(head_dim, padded):
    assert describe(*qkv((1, 3, 1, head_dim), (1, 3, 1, head_dim))).padded_head_dim == padded


# ---- packed variable-length batches (flash_attn_varlen_func) ----

from cupyflash._validate import check_cu_seqlens_values, describe_varlen  # noqa: E402


def varlen(total_q=10, total_k=12, nheads=4, nheads_k=2, d=64, batch=3, cu_dtype="int32", **kw):
    q, k, v = spec((total_q, nheads, d)), spec((total_k, nheads_k, d)), spec((total_k, nheads_k, d))
    return (q, k, v, spec((batch + 1,), cu_dtype), spec((batch + 1,), cu_dtype))


def test_describe_varlen_builds_a_packed_problem():
    p = describe_varlen(*varlen(), 6, 7, causal=True, window_size=(3, -1))
    assert (p.batch, p.seqlen_q, p.seqlen_k, p.total_q, p.nheads, p.nheads_k) == (3, 6, 7, 10, 4, 2)
    assert p.variant == Variant("float16", "band", rows="packed") and p.window == (3, 0)


@pytest.mark.parametrize("args, error, match", [
    (dict(), None, None),
    (dict(cu_dtype="int64"), TypeError, "cu_seqlens_q must be int32"),
    (dict(batch=-1), ValueError, "batch \\+ 1 offsets"),
])
def test_cu_seqlens_metadata(args, error, match):
    inputs = varlen(**args)
    if error is None:
        describe_varlen(*inputs, 5, 5)
    else:
        with pytest.raises(error, match=match):
            describe_varlen(*inputs, 5, 5)


def test_varlen_inputs_are_three_dimensional_and_offsets_match():
    q, k, v, cu_q, cu_k = varlen()
    with pytest.raises(ValueError, match=r"q must have 3 dimensions \(total_q, nheads, headdim\)"):
        describe_varlen(spec((1, 10, 4, 64)), k, v, cu_q, cu_k, 5, 5)
    with pytest.raises(ValueError, match="same length"):
        describe_varlen(q, k, v, cu_q, spec((5,), "int32"), 5, 5)
    with pytest.raises(ValueError, match="on q's GPU"):
        describe_varlen(q, k, v, cu_q, spec((4,), "int32", device=1), 5, 5)
    for bad in (-1, 2.0, True, None):
        with pytest.raises(TypeError, match="max_seqlen_q must be a non-negative int"):
            describe_varlen(q, k, v, cu_q, cu_k, bad, 5)
    with pytest.raises(ValueError, match="alibi_slopes"):
        describe_varlen(q, k, v, cu_q, cu_k, 5, 5, alibi_slopes=spec((2, 4), "float32"))
    assert describe_varlen(q, k, v, cu_q, cu_k, 5, 5, alibi_slopes=spec((3, 4), "float32")).alibi_batch_stride == 4


@pytest.mark.parametrize("offsets, total, max_seqlen, match", [
    ([0, 3, 3, 10], 10, 7, None),
    ([1, 3, 10], 10, 9, "must start at 0"),
    ([0, 5, 4, 10], 10, 9, "must not decrease; entry 2 \\(4\\) < entry 1 \\(5\\)"),
    ([0, 5, 9], 10, 9, "must end at the number of packed rows 10; got 9"),
    ([0, 2, 10], 10, 7, "a sequence of 8 rows, longer than max_seqlen = 7"),
])
def test_cu_seqlens_values(offsets, total, max_seqlen, match):
    if match is None:
        check_cu_seqlens_values("cu_seqlens_q", offsets, total, max_seqlen)
    else:
        with pytest.raises(ValueError, match=match):
            check_cu_seqlens_values("cu_seqlens_q", offsets, total, max_seqlen)


# ---- additive bias (check_bias): shapes broadcastable to (batch, nheads, seqlen_q, seqlen_k) = (2, 3, 5, 16)

BIAS_TARGET = AttentionShape(batch=2, seqlen_q=5, seqlen_k=16, nheads=3, head_dim=64, dtype="float16", device=0)


@pytest.mark.parametrize("shape, dims, strides", [
    ((2, 3, 5, 16), (2, 3, 5, 16), (240, 80, 16, 1)),
    ((1, 3, 5, 16), (1, 3, 5, 16), (0, 80, 16, 1)),        # a pair bias shared over the batch
    ((3, 5, 16), (1, 3, 5, 16), (0, 80, 16, 1)),           # the same with the batch dim left out
    ((2, 1, 1, 16), (2, 1, 1, 16), (16, 0, 0, 1)),         # a key bias
    ((16,), (1, 1, 1, 16), (0, 0, 0, 1)),
    ((2, 3, 5, 1), (2, 3, 5, 1), (15, 5, 1, 0)),           # one value per query row: keys broadcast
    ((), (1, 1, 1, 1), (0, 0, 0, 0)),
])
def test_bias_layouts(shape, dims, strides):
    layout = check_bias(spec(shape, "float32", ptr=256), BIAS_TARGET)
    assert (layout.dims, layout.strides, layout.copy, layout.dtype) == (dims, strides, False, "float32")
    assert layout.key_step == (1 if dims[3] > 1 else 0)


def test_a_broadcast_to_view_reads_its_stride_zero_dims_as_broadcast():
    view = spec((2, 3, 5, 16), "bfloat16", strides=(0, 160, 32, 2))  # broadcast_to of a (3, 5, 16) array
    layout = check_bias(view, BIAS_TARGET)
    assert layout.dims == (1, 3, 5, 16) and layout.strides == (0, 80, 16, 1) and not layout.copy


@pytest.mark.parametrize("dtype, shape, strides, ptr", [
    ("float16", (2, 3, 5, 16), (480, 160, 32, 4), 0),      # every other key
    ("float16", (2, 3, 5, 16), None, 2),                   # not 16-byte aligned
    ("float32", (2, 3, 5, 16), (1080, 360, 72, 4), 0),     # rows 18 floats apart: not whole 16-byte chunks
])
def test_biases_the_kernels_cannot_read_as_they_are_get_a_padded_copy(dtype, shape, strides, ptr):
    layout = check_bias(spec(shape, dtype, strides=strides, ptr=ptr), BIAS_TARGET)
    assert layout.copy and layout.dims == (2, 3, 5, 16) and layout.strides == (240, 80, 16, 1)


def test_a_bias_whose_rows_are_not_whole_chunks_is_copied_with_padded_rows():
    target = dataclasses.replace(BIAS_TARGET, seqlen_k=13)
    layout = check_bias(spec((1, 3, 5, 13), "float16"), target)
    assert layout.copy and layout.strides == (0, 80, 16, 1)  # rows padded to 16 halves
    assert not check_bias(spec((2, 3, 5, 1), "float16"), target).copy  # keys broadcast: read one by one


@pytest.mark.parametrize("bias, error, match", [
    (spec((2, 3, 5, 16), "int32"), TypeError, "bias must be float16, bfloat16 or float32; got int32"),
    (spec((2, 3, 5, 16), device=1), ValueError, "bias must be on q's GPU 0; got device 1"),
    (spec((1, 2, 3, 5, 16)), ValueError, "at most 4 dimensions"),
    (spec((2, 3, 4, 16)), ValueError, re.escape("does not broadcast to (batch, nheads, seqlen_q, seqlen_k) = "
                                                "(2, 3, 5, 16): each dim must be full or 1, dim 2 is 4")),
    (spec((5, 8)), ValueError, r"bias of shape \(5, 8\) does not .* dim 1 is 8"),
])
def test_bad_biases_are_refused(bias, error, match):
    with pytest.raises(error, match=match):
        check_bias(bias, BIAS_TARGET)


def test_describe_puts_the_bias_dtype_in_the_variant():
    p = describe(*qkv((2, 5, 3, 64), (2, 16, 3, 64)), bias=spec((16,), "bfloat16"))
    assert p.variant == Variant("float16", bias="bfloat16") and p.bias.dims == (1, 1, 1, 16)


# ---- boolean masks: the bias rules with dtype bool (the kernels read it as a 0 / -inf bias)

def test_a_mask_is_a_bool_bias():
    layout = check_bias(spec((2, 1, 1, 16), "bool"), BIAS_TARGET, "mask")
    assert layout.dtype == "bool" and layout.dims == (2, 1, 1, 16) and layout.strides == (16, 0, 0, 1)
    p = describe(*qkv((2, 5, 3, 64), (2, 16, 3, 64)), mask=spec((16,), "bool"))
    assert p.variant == Variant("float16", bool_mask=True) and p.bias is None and p.mask.dims == (1, 1, 1, 16)


@pytest.mark.parametrize("mask, error, match", [
    (spec((2, 3, 5, 16), "float16"), TypeError, "mask must be bool"),
    (spec((2, 3, 4, 16), "bool"), ValueError, "mask of shape"),
    (spec((2, 3, 5, 16), "bool", device=1), ValueError, "mask must be on q's GPU 0"),
])
def test_bad_masks_are_refused(mask, error, match):
    with pytest.raises(error, match=match):
        check_bias(mask, BIAS_TARGET, "mask")


def test_a_mask_and_a_bias_together_each_keep_their_layout():
    p = describe(*qkv((2, 5, 3, 64), (2, 16, 3, 64)), bias=spec((3, 5, 16), "float32"),
                 mask=spec((2, 1, 1, 16), "bool"))
    assert p.variant == Variant("float16", bias="float32", bool_mask=True)
    assert p.bias.dtype == "float32" and p.bias.dims == (1, 3, 5, 16)
    assert p.mask.dtype == "bool" and p.mask.dims == (2, 1, 1, 16)
