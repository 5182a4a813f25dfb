"""GPU facts for the wgmma TF32 plan (docs/wip/2026-11-28-fp32-wgmma-plan.md, step 1), one warpgroup, m64n8k8:
(1) which thread and register hold A[m][k] when A comes from registers: B = e_j (one 1 at k = j, n = 0), A's
    registers hold codes 4 * thread + register, so D[m][0] names the (thread, register) of A[m][j]; compared with
    the mma.sync m16n8k8 TF32 layout (register r of lane l: row 16 w + l / 4 + 8 (r % 2), column l % 4 + 4 (r / 2)
    for warp w);
(2) whether floats read as TF32 are rounded or truncated: x = 1 + 2^-11 + 2^-12 (0.75 of TF32's last place above
    1) times 1, from shared memory (A and B) and from registers (A): 1 + 2^-10 if rounded, 1 if truncated.
Prints both. Compile-checked without a GPU: python docs/measurements/2026-11-28-tf32-wgmma-probe.py --compile-only
Measured (H100, twentieth session; `2026-11-27-h100-s20-tf32-wgmma-probe.md`): (1) the mma.sync layout exactly (0 of
512 entries differ); (2) truncated, from shared memory and from registers."""
import sys

from cupyflash._kernels import load_source

SOURCE = r'''
namespace cf {
// B (8 x 8, K-major: [n][k]) and A (64 x 8, K-major: [m][k]) in 128-byte-swizzled rows (one 32-byte k step of
// 8 floats in the first two 16-byte chunks of each 128-byte row), as kmajor_desc reads them.
__device__ __forceinline__ u32 kmajor_f32(int row, int k) {
    return static_cast<u32>(row * 128 + (((k * 4) / 16) ^ (row % 8)) * 16 + (k * 4) % 16);
}
__device__ __forceinline__ void mma_rs(float (&d)[4], const u32 (&a)[4], u64 b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n8k8.f32.tf32.tf32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, 0, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
__device__ __forceinline__ void mma_ss(float (&d)[4], u64 a, u64 b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n8k8.f32.tf32.tf32 {%0, %1, %2, %3}, %4, %5, 0, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "l"(a), "l"(b));
}
}  // namespace cf

// out[j * 64 + m] = the code (4 * thread + register) of the register that holds A[m][j]
extern "C" __global__ void __launch_bounds__(128) a_layout(float* out) {
    using namespace cf;
    __shared__ __align__(1024) float b[8 * 32];
    const int t = threadIdx.x, lane = t % 32, warp = t / 32;
    const u32 b_addr = static_cast<u32>(__cvta_generic_to_shared(b));
    u32 a[4];
    for (int r = 0; r < 4; ++r) a[r] = __float_as_uint(static_cast<float>(4 * t + r));
    for (int j = 0; j < 8; ++j) {
        for (int i = t; i < 8 * 32; i += 128) b[i] = 0.f;
        __syncthreads();
        if (t == 0) b[kmajor_f32(0, j) / 4] = 1.f;
        async_proxy_fence();
        __syncthreads();
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        wgmma_fence();
        mma_rs(d, a, kmajor_desc(b_addr));
        wgmma_commit();
        wgmma_wait<0>();
        if (lane % 4 == 0) {  // column 0: d[0] row 16 w + lane / 4, d[2] that row + 8
            out[j * 64 + 16 * warp + lane / 4] = d[0];
            out[j * 64 + 16 * warp + lane / 4 + 8] = d[2];
        }
        __syncthreads();
    }
}

// out[0]: (1 + 2^-11 + 2^-12) * 1 with A and B from shared memory; out[1]: with A from registers
extern "C" __global__ void __launch_bounds__(128) tf32_rounding(float* out) {
    using namespace cf;
    __shared__ __align__(1024) float a_s[64 * 32];
    __shared__ __align__(1024) float b[8 * 32];
    const int t = threadIdx.x, lane = t % 32, warp = t / 32;
    const float x = 1.f + 0x1p-11f + 0x1p-12f;
    for (int i = t; i < 64 * 32; i += 128) a_s[i] = 0.f;
    for (int i = t; i < 8 * 32; i += 128) b[i] = 0.f;
    __syncthreads();
    if (t == 0) {
        a_s[kmajor_f32(0, 0) / 4] = x;  // A[0][0] = x
        b[kmajor_f32(0, 0) / 4] = 1.f;  // B[0][0] = 1
    }
    async_proxy_fence();
    __syncthreads();
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    wgmma_fence();
    mma_ss(d, kmajor_desc(static_cast<u32>(__cvta_generic_to_shared(a_s))),
           kmajor_desc(static_cast<u32>(__cvta_generic_to_shared(b))));
    wgmma_commit();
    wgmma_wait<0>();
    if (t == 0) out[0] = d[0];
    // A from registers: x in every register, so that A[0][0] = x whatever the layout
    u32 a[4];
    for (int r = 0; r < 4; ++r) a[r] = __float_as_uint(x);
    float e[4] = {0.f, 0.f, 0.f, 0.f};
    wgmma_fence();
    mma_rs(e, a, kmajor_desc(static_cast<u32>(__cvta_generic_to_shared(b))));
    wgmma_commit();
    wgmma_wait<0>();
    if (t == 0) out[1] = e[0];
    (void)lane; (void)warp;
}
'''


def source():
    return load_source("wgmma.cuh") + SOURCE


def main():
    if "--compile-only" in sys.argv:
        from cupyflash._nvrtc import compile_report

        for name, r in compile_report(source(), ["a_layout", "tf32_rounding"], "sm_90a").items():
            print(f"{name}: {r.registers} registers, {r.spill_stores} bytes spilled")
        return
    import cupy

    from cupyflash.families import WGMMA_SM90

    module = cupy.RawModule(code=source(), options=WGMMA_SM90.compile_options)  # as the family's kernels
    out = cupy.full(8 * 64, -1.0, cupy.float32)
    module.get_function("a_layout")((1,), (128,), (out,))
    codes = out.get().reshape(8, 64).astype(int)  # [k][m]
    mismatches = 0
    for k in range(8):
        for m in range(64):
            thread, reg = divmod(codes[k, m], 4)
            warp, lane = divmod(thread, 32)
            expected = (m // 16 == warp and m % 16 == lane // 4 + 8 * (reg % 2) and k == lane % 4 + 4 * (reg // 2))
            mismatches += not expected
    print(f"A from registers: {mismatches} of 512 entries differ from the mma.sync m16n8k8 TF32 layout")
    print("codes [k][m] (4 * thread + register):")
    print(codes)
    r = cupy.zeros(2, cupy.float32)
    module.get_function("tf32_rounding")((1,), (128,), (r,))
    got = r.get()
    for where, v in zip(("A, B from shared memory", "A from registers"), got):
        verdict = {1.0: "truncated", 1.0 + 2**-10: "rounded to nearest"}.get(float(v), "neither")
        print(f"{where}: (1 + 2^-11 + 2^-12) * 1 = {float(v)!r}: {verdict}")


if __name__ == "__main__":
    main()
