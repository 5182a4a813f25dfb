"""CPU checks of the launch geometry: the grids of the kernels that add a bias (coords.cuh QueryBlock) and of the
dK/dV kernels that write dbias (KeyBlock) take batches fastest."""
import dataclasses

import pytest

from cupyflash._launch import key_grid, query_grid
from cupyflash.problem import BiasLayout, Problem, Variant


def problem(dims=None, batch=2, nheads=3, seqlen_q=1000, seqlen_k=300):
    bias = None if dims is None else BiasLayout("bfloat16", 2, dims, (0, 0, 0, 0), False, dims)
    return Problem(batch, seqlen_q, seqlen_k, nheads, nheads, 64, 0, 0.125, False, (-1, -1), 0.0, 0,
                   Variant("bfloat16", bias="none" if bias is None else "bfloat16"), bias=bias)


def test_without_a_bias_query_tiles_come_first():
    assert query_grid(problem(), 128) == (8, 3, 2)  # query tiles, heads, batches


@pytest.mark.parametrize("dims", [(1, 3, 1000, 300), (2, 3, 1000, 300), (2, 1, 1, 300), (1, 1, 1000, 1)])
def test_with_a_bias_batches_come_first(dims):
    assert query_grid(problem(dims), 128) == (2, 8, 3)  # batches, query tiles, heads


def test_query_tiles_of_a_biased_grid_are_limited_by_its_y_dimension():
    assert query_grid(problem((2, 1, 1, 300), seqlen_q=65535 * 64), 64) == (2, 65535, 3)
    with pytest.raises(ValueError, match=r"seqlen_q may be at most 4194240 .* got seqlen_q 4194241"):
        query_grid(problem((2, 1, 1, 300), seqlen_q=65535 * 64 + 1), 64)


@pytest.mark.parametrize("dbias, expected", [(False, (3, 6, 2)), (True, (2, 3, 6))])
def test_dkdv_grid_takes_batches_first_with_dbias(dbias, expected):
    p = problem((1, 3, 1000, 300))
    p = dataclasses.replace(p, nheads_k=3, variant=dataclasses.replace(p.variant, dbias=dbias))
    assert key_grid(p, 128, 2) == expected  # 3 key tiles of 300 keys, 3 K/V heads x 2 splits, 2 batches


@pytest.mark.parametrize("dtype, precision, rounds", [("float32", "tf32", True), ("float32", "highest", False),
                                                      ("bfloat16", "", False)])
def test_only_tf32_operands_are_staged_rounded(monkeypatch, dtype, precision, rounds):
    # precision "tf32": the kernels take Q, K, V and dO rounded (mma_tf32.cuh Mma<tf32>), so each is copied through
    # round_tf32 into a contiguous buffer, even where it could be read in place; other inputs are staged as any
    from cupyflash import _kernels, _launch
    from cupyflash._validate import ArraySpec

    monkeypatch.setattr(_kernels, "get_function", lambda family, kind, *args: f"{family}:{kind}")
    p = dataclasses.replace(problem(), variant=Variant(dtype, precision=precision))
    kernel = _launch.tf32_rounding_kernel(p, "mma_tf32")
    assert kernel == ("mma_tf32:round_tf32" if rounds else None)
    itemsize = 4 if dtype == "float32" else 2
    spec = ArraySpec((2, 1000, 3, 64), _launch.contiguous_strides((2, 1000, 3, 64), itemsize), dtype, itemsize, 0, 256)
    staging = _launch.operand_staging(spec, 64, None, kernel)
    assert isinstance(staging, _launch.Tf32Staging if rounds else _launch.Staging)
    assert staging.copy is rounds  # a contiguous, aligned array is read in place unless it must be rounded
    assert staging.kernel_strides == spec.strides
