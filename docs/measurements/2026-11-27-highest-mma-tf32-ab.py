"""float32 "highest" on mma_tf32: forward / backward TFLOP/s at head dim 32 (plain) and 64 with a float32 pair bias,
seqlen 1k/4k (16k tokens, hidden 2048); median of 20 after 3 warm-ups, CUDA events."""
import sys
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
rng = cupy.random.default_rng(0)
out = []
for d, with_bias in ((32, False), (64, True)):
    for s in (1024, 4096):
        b, h = 16384 // s, 2048 // d
        q, k, v, do = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(4))
        kw = dict(bias=rng.standard_normal((1, h, s, s), dtype=cupy.float32)) if with_bias else {}
        for causal in (False, True):
            fl = 4 * b * h * s * s * d / (2 if causal else 1)
            tf = timeit(lambda: cf.flash_attn_func(q, k, v, causal=causal, precision="highest", **kw))
            o, lse = cf.flash_attn_func(q, k, v, causal=causal, precision="highest", return_lse=True, **kw)
            tb = timeit(lambda: cf.flash_attn_backward(do, q, k, v, o, lse, causal=causal, precision="highest", **kw))
            out.append(f"{d}{'b' if with_bias else ''}/{s // 1024}k{'c' if causal else 'n'} "
                       f"{fl / tf / 1e9:.1f}/{2.5 * fl / tb / 1e9:.1f}")
        del q, k, v, do, kw
        cupy.get_default_memory_pool().free_all_blocks()
print(tag, " ".join(out), flush=True)
