"""float32 "highest" forward and backward TFLOP/s at head dim HD (env, default 128), seqlen 1k/4k/8k (16k tokens,
hidden 2048); median of 20 after 3 warm-ups, CUDA events. Run once per tree, trees alternated by the caller."""
import os, sys
import cupy, numpy as np
import cupyflash as cf

def timeit(fn, n=20):
    for _ in range(3): fn()
    ev = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(n)]
    for a, b in ev:
        a.record(); fn(); b.record()
    b.synchronize()
    return float(np.median([cupy.cuda.get_elapsed_time(a, b) for a, b in ev]))

tag = sys.argv[1]
d = int(os.environ.get("HD", "128"))
rng = cupy.random.default_rng(0)
out = []
for s in (1024, 4096, 8192):
    b, h = 16384 // s, 2048 // d
    q, k, v, do = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(4))
    for causal in (False, True):
        fl = 4 * b * h * s * s * d / (2 if causal else 1)
        tf = timeit(lambda: cf.flash_attn_func(q, k, v, causal=causal, precision="highest"))
        o, lse = cf.flash_attn_func(q, k, v, causal=causal, precision="highest", return_lse=True)
        tb = timeit(lambda: cf.flash_attn_backward(do, q, k, v, o, lse, causal=causal, precision="highest"))
        out.append(f"{s // 1024}k{'c' if causal else 'n'} {fl / tf / 1e9:.1f}/{2.5 * fl / tb / 1e9:.1f}")
    del q, k, v, do
print(tag, d, " ".join(out), flush=True)
