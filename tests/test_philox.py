"""The counter-based generator for dropout: cupyflash/_philox.py against Random123's known answers, and
cuda_src/philox.cuh against it (NVRTC on the CPU; the values on a GPU)."""
import numpy as np
import pytest

from conftest import requires_gpu
from cupyflash._philox import philox4x32_10

# Random123's tests/kat_vectors, the three "philox4x32 10" lines: (counter, key, output).
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

_KERNEL = r'''
extern "C" __global__ void philox_kernel(const unsigned* counters, const unsigned* keys, unsigned* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint4 c = make_uint4(counters[4 * i], counters[4 * i + 1], counters[4 * i + 2], counters[4 * i + 3]);
    const uint4 r = cf::Philox4x32::generate(c, make_uint2(keys[2 * i], keys[2 * i + 1]));
    out[4 * i] = r.x, out[4 * i + 1] = r.y, out[4 * i + 2] = r.z, out[4 * i + 3] = r.w;
}
'''


def _source():
    from cupyflash._kernels import load_source

    return load_source("philox.cuh") + _KERNEL


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


def test_arrays_of_counters_give_each_its_own_answer():
    words = [np.array([kat[0][i] for kat in KNOWN_ANSWERS], np.uint32) for i in range(4)]
    keys = [np.array([kat[1][i] for kat in KNOWN_ANSWERS], np.uint32) for i in range(2)]
    out = philox4x32_10(words, keys)
    assert [tuple(int(w[j]) for w in out) for j in range(3)] == [kat[2] for kat in KNOWN_ANSWERS]


def test_the_words_look_uniform():
    # 2^16 counters: each output bit is set about half the time (4 sigma ~ 0.4% of the count)
    n = 1 << 16
    out = np.stack(philox4x32_10((np.arange(n, dtype=np.uint32), 0, 7, 0), (12345, 678)))
    bits = (out[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.abs(bits.mean(axis=1) - 0.5).max() < 4 * 0.5 / np.sqrt(n)


def test_the_device_generator_compiles_with_nvrtc():
    from cupyflash import _nvrtc

    ptx = _nvrtc.compile_ptx(_source(), "compute_80")
    assert "philox_kernel" in ptx and "mul.hi.u32" in ptx


@requires_gpu
def test_the_device_generator_equals_the_host_one():
    import cupy

    rng = np.random.default_rng(0)
    n = 4096
    counters = rng.integers(0, 2**32, (n, 4), dtype=np.uint64).astype(np.uint32)
    keys = rng.integers(0, 2**32, (n, 2), dtype=np.uint64).astype(np.uint32)
    counters[:3], keys[:3] = [kat[0] for kat in KNOWN_ANSWERS], [kat[1] for kat in KNOWN_ANSWERS]
    kernel = cupy.RawModule(code=_source(), options=("-std=c++17",)).get_function("philox_kernel")
    out = cupy.empty((n, 4), cupy.uint32)
    kernel(((n + 127) // 128,), (128,), (cupy.asarray(counters), cupy.asarray(keys), out, np.int32(n)))
    host = np.stack(philox4x32_10(counters.T, keys.T), axis=1)
    np.testing.assert_array_equal(out.get(), host)
    assert [tuple(int(w) for w in out[j].get()) for j in range(3)] == [kat[2] for kat in KNOWN_ANSWERS]
