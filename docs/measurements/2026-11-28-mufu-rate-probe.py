"""Issue 7 (softcap): is a packed or 16-bit MUFU operation (tanh.approx.f16x2 / .bf16x2, ex2.approx.f16x2 /
.ftz.bf16x2) any faster per element than its float32 form on this GPU? Softcap's forward spends two MUFU operations a
score (tanh and the softmax's ex2); at head dim 64 that alone caps it below 0.9x plain (docs/performance.md). NVRTC
compiles the packed forms to one MUFU instruction a half (twentieth session's SASS), but their issue rate is not
documented. Each kernel runs 8 independent chains a thread, 2048 threads an SM's worth of blocks, and reports
elements a clock an SM (clock read by clock64() inside the kernel, so the power cap's clock drop does not count).
Expected: 16 elements a clock an SM (4 lanes a clock a sub-partition) for every form if packing buys nothing.
python docs/measurements/2026-11-28-mufu-rate-probe.py"""
import cupy
import numpy as np

SRC = r"""
template <int OP> __device__ __forceinline__ unsigned step(unsigned x) {
    unsigned y;
    if (OP == 0) asm volatile("tanh.approx.f32 %0, %1;" : "=r"(y) : "r"(x));
    if (OP == 1) asm volatile("tanh.approx.f16x2 %0, %1;" : "=r"(y) : "r"(x));
    if (OP == 2) asm volatile("tanh.approx.bf16x2 %0, %1;" : "=r"(y) : "r"(x));
    if (OP == 3) asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=r"(y) : "r"(x));
    if (OP == 4) asm volatile("ex2.approx.f16x2 %0, %1;" : "=r"(y) : "r"(x));
    if (OP == 5) asm volatile("ex2.approx.ftz.bf16x2 %0, %1;" : "=r"(y) : "r"(x));
    if (OP == 6) asm volatile("tanh.approx.f16 %0, %1;" : "=h"(*(unsigned short*)&y) : "h"((unsigned short)x));
    return y;
}
template <int OP> __global__ void probe(unsigned *out, long long *cycles, int iters) {
    unsigned c[8];
    for (int i = 0; i < 8; ++i) c[i] = 0x3c003c00u ^ (threadIdx.x * 8 + i);
    long long t0 = clock64();
    for (int it = 0; it < iters; ++it) {
        #pragma unroll
        for (int i = 0; i < 8; ++i) c[i] = step<OP>(c[i]);
    }
    long long t1 = clock64();
    unsigned acc = 0;
    for (int i = 0; i < 8; ++i) acc ^= c[i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
    if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}
"""
NAMES = ["tanh.f32", "tanh.f16x2", "tanh.bf16x2", "ex2.f32", "ex2.f16x2", "ex2.bf16x2", "tanh.f16"]
PER_OP = [1, 2, 2, 1, 2, 2, 1]
mod = cupy.RawModule(code=SRC, options=("-std=c++17",), name_expressions=[f"probe<{i}>" for i in range(7)])
sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
threads, blocks_per_sm, iters = 256, 8, 4096
blocks = sms * blocks_per_sm
out = cupy.zeros(blocks * threads, dtype=cupy.uint32)
cyc = cupy.zeros(blocks, dtype=cupy.int64)
print("| op | elements / clock / SM (in-kernel clocks) | ms | elements / ns (wall) |")
print("|---|---|---|---|")
for i, name in enumerate(NAMES):
    k = mod.get_function(f"probe<{i}>")
    for _ in range(2):
        k((blocks,), (threads,), (out, cyc, np.int32(iters)))
    a, b = cupy.cuda.Event(), cupy.cuda.Event()
    a.record(); k((blocks,), (threads,), (out, cyc, np.int32(iters))); b.record(); b.synchronize()
    ms = cupy.cuda.get_elapsed_time(a, b)
    elems_per_block = threads * 8 * iters * PER_OP[i]
    # blocks of one SM run together (8 x 256 threads = 2048, the SM's limit): elements an SM over the blocks' clocks
    per_clk = elems_per_block * blocks_per_sm / float(cyc.max())
    print(f"| {name} | {per_clk:.2f} | {ms:.3f} | {elems_per_block * blocks / ms / 1e6:.1f} |")
