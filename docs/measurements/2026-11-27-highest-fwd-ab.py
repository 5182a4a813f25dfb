"""float32 "highest" forward TFLOP/s, head dims 64 and 128, seqlen 1k/4k/8k (16k tokens, hidden 2048); median of 30
after 5 warm-ups, CUDA events. Run once per tree, trees alternated by the caller."""
import sys
import cupy, numpy as np
import cupyflash as cf

def timeit(fn, n=30):
    for _ in range(5): fn()
    ev = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(n)]
    for a, b in ev:
        a.record(); fn(); b.record()
    b.synchronize()
    return float(np.median([cupy.cuda.get_elapsed_time(a, b) for a, b in ev]))

tag = sys.argv[1]
rng = cupy.random.default_rng(0)
out = []
for d in (64, 128):
    for s in (1024, 4096, 8192):
        b, h = 16384 // s, 2048 // d
        q, k, v = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(3))
        for causal in (False, True):
            t = timeit(lambda: cf.flash_attn_func(q, k, v, causal=causal, precision="highest"))
            fl = 4 * b * h * s * s * d / (2 if causal else 1)
            out.append(f"{d}/{s}/{'c' if causal else 'n'} {fl / t / 1e9:.1f}")
        del q, k, v
print(tag, " ".join(out), flush=True)
