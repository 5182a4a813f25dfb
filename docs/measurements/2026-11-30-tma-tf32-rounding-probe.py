"""How does a bulk tensor copy through a TFLOAT32 map (CU_TENSOR_MAP_DATA_TYPE_TFLOAT32) round a float32? The
twenty-first session found it rounds, "not bit for bit as cvt.rna" (2026-11-29-tma-tf32-probe.py); the guess was
round-to-nearest-even. Here one box of 8 rows x 32 floats lands by TMA and is written back, beside cvt.rna.tf32.f32
and cvt.rn.tf32.f32 (sm_90) of the same values, and each is compared bit for bit with numpy emulations of
round-to-nearest-even (RNE), round-to-nearest ties away (RNA) and truncation (RZ). The values put every pattern of
the 13 dropped bits that decides a mode (0, 1, 0xfff, a tie 0x1000, 0x1001, 0x1fff) under even and odd kept
mantissas, both signs, plus random floats.
Expectation: TMA = RNE (ties to even) on every value, cvt.rna = RNA, cvt.rn = RNE.
Measured (H100, twenty-second session, `2026-11-30-h100-s22-tma-tf32-rounding-probe.md`): TMA equals RNE on all 256
values (and on the 48 patterns), cvt.rna differs from it on the two ties with an even kept mantissa (as RNA must),
cvt.rn equals RNE. So cupyflash stages TF32 operands rounded to nearest even (mma_tf32.cuh to_tf32_even).
Run: ``python docs/measurements/2026-11-30-tma-tf32-rounding-probe.py``."""
import ctypes

import numpy as np

KERNELS = r'''
#include "pipeline.cuh"
extern "C" __global__ void tma_copy(const __grid_constant__ cf::TensorMap map, float* out) {
    __shared__ alignas(1024) float tile[8 * 32];
    __shared__ alignas(8) unsigned long long bar;
    const cf::u32 tile_addr = static_cast<cf::u32>(__cvta_generic_to_shared(tile));
    const cf::u32 bar_addr = static_cast<cf::u32>(__cvta_generic_to_shared(&bar));
    if (threadIdx.x == 0) {
        cf::mbarrier_init(bar_addr, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        cf::mbarrier_arrive_expect_bytes(bar_addr, sizeof(tile));
        cf::tma_load_4d(tile_addr, map, 0, 0, 0, 0, bar_addr);
    }
    cf::mbarrier_wait(bar_addr, 0);
    for (int i = threadIdx.x; i < 8 * 32; i += blockDim.x) out[i] = tile[i];
}
extern "C" __global__ void cvt_both(const float* x, unsigned* rna, unsigned* rn, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x[i]));
    rna[i] = r;
    asm("cvt.rn.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x[i]));
    rn[i] = r;
}
'''


def inputs():
    rng = np.random.default_rng(0)
    bits = []
    for kept in (0, 1, 0x2AB, 0x3FF):  # kept mantissa's last bit even and odd
        for dropped in (0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF):
            for sign in (0, 1):
                bits.append((sign << 31) | (127 << 23) | (kept << 13) | dropped)
    bits = np.array(bits, np.uint32)
    rand = rng.standard_normal(256 - len(bits)).astype(np.float32).view(np.uint32)
    return np.concatenate([bits, rand]).view(np.float32)


def emulate(x):
    u = x.view(np.uint32).astype(np.uint64)
    low = u & 0x1FFF
    rz = u & ~np.uint64(0x1FFF)
    rna = (u + 0x1000) & ~np.uint64(0x1FFF)
    rne = (u + 0xFFF + ((u >> 13) & 1)) & ~np.uint64(0x1FFF)
    del low
    return {m: v.astype(np.uint32) for m, v in (("RNE", rne), ("RNA", rna), ("RZ", rz))}


def main():
    import cupy
    from cupy_backends.cuda.api import driver

    from cupyflash import _tma
    from cupyflash._kernels import load_source

    source = KERNELS.replace('#include "pipeline.cuh"', load_source("pipeline.cuh"))
    module = cupy.RawModule(code=source, options=("-std=c++17", "-arch=sm_90a"))
    x = inputs()
    xd = cupy.asarray(x).reshape(1, 8, 1, 32)
    out = cupy.full(256, np.nan, cupy.float32)
    raw = np.zeros(128 + 64, np.uint8)
    start = -raw.ctypes.data % 64
    tmap = raw[start:start + 128]
    _tma._DATA_TYPES["tf32"] = 11
    _tma.ITEMSIZE["tf32"] = 4
    _tma.encode(tmap.ctypes.data, "tf32", xd.data.ptr, xd.shape, tuple(s for s in xd.strides), 8)
    out_ptr = np.array([out.data.ptr], np.uint64)
    argv = np.array([tmap.ctypes.data, out_ptr.ctypes.data], np.uint64)
    func = module.get_function("tma_copy")
    driver.launchKernel(func.kernel.ptr, 1, 1, 1, 128, 1, 1, 0, 0, argv.ctypes.data, 0)
    phys = cupy.asnumpy(out).reshape(8, 8, 4)  # rows, 16-byte chunks, floats
    tma = np.empty_like(phys)
    for r in range(8):
        for c in range(8):
            tma[r, c] = phys[r, c ^ r]  # the 128-byte swizzle: chunk c of row r lands at chunk c ^ (r % 8)
    tma = tma.reshape(-1)
    rna, rn = cupy.zeros(256, cupy.uint32), cupy.zeros(256, cupy.uint32)
    module.get_function("cvt_both")((1,), (256,), (cupy.asarray(x), rna, rn, np.int32(256)))
    results = {"TMA TFLOAT32": tma.view(np.uint32), "cvt.rna": cupy.asnumpy(rna), "cvt.rn": cupy.asnumpy(rn)}
    modes = emulate(x)
    print("| rounding | " + " | ".join(f"= {m} (of 256)" for m in modes) + " | = RNE on the 48 patterns |")
    print("|---|" + "---|" * (len(modes) + 1))
    for name, got in results.items():
        print(f"| {name} | " + " | ".join(str(int((got == want).sum())) for want in modes.values())
              + f" | {int((got[:48] == modes['RNE'][:48]).sum())} |")
    differ = np.nonzero(results["TMA TFLOAT32"] != modes["RNE"])[0]
    for i in differ[:8]:
        print(f"differs from RNE: input {x.view(np.uint32)[i]:#010x} -> {results['TMA TFLOAT32'][i]:#010x}, "
              f"RNE {modes['RNE'][i]:#010x}, RNA {modes['RNA'][i]:#010x}")


if __name__ == "__main__":
    main()
