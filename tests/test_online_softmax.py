"""cuda_src/online_softmax.cuh's exp2_fma (2^x on the FMA pipe, for part of the softmax's exponentials under
softcap): a NumPy mirror of its arithmetic with the header's own coefficients (CPU), the NVRTC compile with no MUFU
instruction left (CPU), and the device function against float64 (GPU)."""
import re

import numpy as np
import pytest

from conftest import require_nvrtc, requires_gpu

ROUND = np.float32(12582912.0)  # 1.5 * 2^23
#: exp2_fma's relative error bound on [-126, 16] (the polynomial's own 3.0e-6 plus float32 rounding)
BOUND = 4e-6

_KERNEL = r'''
extern "C" __global__ void exp2_fma_kernel(const float* x, float* y, float* sum_of_y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = cf::exp2_fma(x[i]);
    sum_of_y[i] = y[i] + 0.f;  // as the row sums read it (-ftz: a denormal counts as 0)
}
'''


def _source():
    from cupyflash._kernels import load_source

    return load_source("online_softmax.cuh") + _KERNEL


def _coefficients():
    """The polynomial's coefficients, highest degree first, as the header writes them."""
    from cupyflash._kernels import load_source

    line = next(l for l in load_source("online_softmax.cuh").splitlines() if "const float poly =" in l)
    return [np.float32(c) for c in re.findall(r"(\d\.\d+)f", line)]


def _mirror(x):
    """exp2_fma's arithmetic in NumPy float32 (an FMA rounded once: float64 product and sum, then float32)."""
    x = np.maximum(np.asarray(x, np.float32), np.float32(-127))
    j = np.floor(x)  # add.rm with 1.5 * 2^23 leaves 1.5 * 2^23 + floor(x) exactly
    t = (ROUND + j).astype(np.float32)
    f = (x - j).astype(np.float32)
    poly = np.full_like(f, _coefficients()[0])
    for c in [*_coefficients()[1:], np.float32(1)]:
        poly = (poly.astype(np.float64) * f + np.float64(c)).astype(np.float32)
    bits = poly.view(np.int32).astype(np.int64) + (t.view(np.int32).astype(np.int64) << 23)
    return (bits & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


def test_the_polynomial_is_read_from_the_header():
    assert len(_coefficients()) == 4 and abs(float(_coefficients()[-1]) - np.log(2)) < 1e-3


def test_the_mirror_is_within_the_bound_and_exact_at_integers():
    x = np.linspace(-126, 16, 2_000_001, dtype=np.float32)
    rel = np.abs(_mirror(x).astype(np.float64) / np.exp2(x.astype(np.float64)) - 1)
    assert rel.max() < BOUND
    ints = np.arange(-126, 17, dtype=np.float32)
    np.testing.assert_array_equal(_mirror(ints), np.exp2(ints))


def test_hidden_scores_give_an_exponent_field_of_zero():
    # -inf (a hidden score) and anything at or below -127 land on a denormal (or 0), which -ftz arithmetic reads as
    # 0: a row that sees no key keeps l_i = 0 and gets lse -inf
    y = _mirror(np.array([-np.inf, -1e30, -200, -127.5, -127], np.float32))
    assert np.all((y.view(np.uint32) >> 23) == 0)


def test_it_compiles_without_mufu():
    require_nvrtc("the exp2_fma compile check")
    from cupyflash import _nvrtc

    ptx = _nvrtc.compile_ptx(_source(), "compute_90")
    body = ptx[ptx.index("exp2_fma_kernel"):]
    assert "add.rm.ftz.f32" in body and "ex2" not in body


@requires_gpu
def test_the_device_function_against_float64():
    import cupy

    x = np.concatenate([np.linspace(-126, 16, 1 << 20, dtype=np.float32),
                        np.random.default_rng(0).uniform(-30, 8, 1 << 16).astype(np.float32),
                        np.array([0, 1, -1, 8, -126, -0.0], np.float32)])
    hidden = np.array([-np.inf, -1e30, -200, -127.5, -127], np.float32)
    kernel = cupy.RawModule(code=_source(), options=("-std=c++17", "-ftz=true")).get_function("exp2_fma_kernel")
    xs = cupy.asarray(np.concatenate([x, hidden]))
    y, summed = cupy.full(xs.size, np.nan, cupy.float32), cupy.full(xs.size, np.nan, cupy.float32)
    kernel(((xs.size + 255) // 256,), (256,), (xs, y, summed, np.int32(xs.size)))
    y, summed = y.get(), summed.get()
    rel = np.abs(y[:x.size].astype(np.float64) / np.exp2(x.astype(np.float64)) - 1)
    assert rel.max() < BOUND
    np.testing.assert_array_equal(y, _mirror(xs.get()))  # the device does what the mirror says
    np.testing.assert_array_equal(summed[x.size:], 0)


@pytest.mark.parametrize("eighths,expected", [(0, 0), (3, 12), (4, 16), (8, 32)])
def test_the_share_on_the_fma_pipe(eighths, expected):
    # exp2_on_fma<K>(e): (e * K) % 8 < K, over a row's 32 elements of a 128-key tile
    assert sum((e * eighths) % 8 < eighths for e in range(32)) == expected
