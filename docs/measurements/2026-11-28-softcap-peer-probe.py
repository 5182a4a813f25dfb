"""Issue 7 (softcap forward >= 0.9x plain): what the bar costs a peer. PyTorch's FlexAttention (Triton, compiled by
torch.compile) with a softcap score_mod against its own plain call, beside cupyflash's softcap against its plain, same
process, same inputs: bf16, 16k tokens, hidden 2048, non-causal, head dims 64 and 128, seqlens 4k and 8k. CUDA events,
3 warm-ups, median of 20. Forward only. python docs/measurements/2026-11-28-softcap-peer-probe.py"""
import cupy
import numpy as np
import torch
from torch.nn.attention.flex_attention import flex_attention

import cupyflash as cf
from cupyflash.bench import _cupy_dtype

CAP = 30.0


def timeit(fn, n=20):
    for _ in range(3):
        fn()
    ev = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(n)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    b.synchronize()
    return float(np.median([cupy.cuda.get_elapsed_time(a, b) for a, b in ev]))


def softcap_mod(score, b, h, q_idx, kv_idx):
    return CAP * torch.tanh(score / CAP)


flex = torch.compile(flex_attention, dynamic=False)
print("| D | seqlen | cupyflash plain / softcap TFLOP/s | ratio | flex plain / softcap TFLOP/s | ratio |")
print("|---|---|---|---|---|---|")
for d in (64, 128):
    for s in (4096, 8192):
        b, h = 16384 // s, 2048 // d
        fl = 4 * b * h * s * s * d
        rng = cupy.random.default_rng(0)
        q32, k32, v32 = (rng.standard_normal((b, s, h, d), dtype=cupy.float32) for _ in range(3))
        tq, tk, tv = (torch.from_dlpack(x).to(torch.bfloat16) for x in (q32, k32, v32))
        q, k, v = (x.astype(_cupy_dtype("bfloat16")) for x in (q32, k32, v32))
        t_plain = timeit(lambda: cf.flash_attn_func(q, k, v))
        t_cap = timeit(lambda: cf.flash_attn_func(q, k, v, softcap=CAP))
        fq, fk, fv = (x.transpose(1, 2) for x in (tq, tk, tv))
        try:
            f_plain = timeit(lambda: flex(fq, fk, fv))
            f_cap = timeit(lambda: flex(fq, fk, fv, score_mod=softcap_mod))
            flex_cells = f"{fl / f_plain / 1e9:.0f} / {fl / f_cap / 1e9:.0f} | {f_plain / f_cap:.2f}"
        except Exception as e:  # no Triton on the machine: say so in the row
            flex_cells = f"{type(e).__name__} | -"
        print(f"| {d} | {s} | {fl / t_plain / 1e9:.0f} / {fl / t_cap / 1e9:.0f} | {t_plain / t_cap:.2f} | "
              f"{flex_cells} |", flush=True)
