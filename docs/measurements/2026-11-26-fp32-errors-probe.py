"""float32 "highest" errors vs float64 (max abs / RMS), forward and backward, beside naive CuPy float32 and SDPA
float32 (efficient backend or PyTorch's default). Head dims 64/128, S 1k/4k, 4 heads, batch 1."""
import cupy, numpy as np
import cupyflash as cf
from cupyflash.reference import (attention_reference, attention_naive_lowp, attention_backward_reference,
                                 attention_backward_naive_lowp)

def stats(x, ref):
    e = cupy.abs(cupy.asarray(x).astype(cupy.float64) - ref)
    return f"{float(e.max()):.1e}/{float(cupy.sqrt((e ** 2).mean())):.1e}"

import torch
torch.backends.cuda.matmul.allow_tf32 = False
rng = cupy.random.RandomState(0)
print("max/rms errors: out | dq dk dv", flush=True)
for d in (64, 128):
    for s in (1024, 4096):
        q, k, v, do = (rng.standard_normal((1, s, 4, d), dtype=cupy.float32) for _ in range(4))
        q64, k64, v64, do64 = (a.astype(cupy.float64) for a in (q, k, v, do))
        ref, _ = attention_reference(q64, k64, v64, xp=cupy)
        gref = attention_backward_reference(do64, q64, k64, v64, xp=cupy)
        out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
        g = cf.flash_attn_backward(do, q, k, v, out, lse)
        rows = [("highest", out, g)]
        naive, _ = attention_naive_lowp(q, k, v, dtype_name="float32", xp=cupy)
        gn = attention_backward_naive_lowp(do, q, k, v, dtype_name="float32", xp=cupy)
        rows.append(("naive32", naive, gn))
        tq, tk, tv = (torch.as_tensor(a, device="cuda").transpose(1, 2).requires_grad_() for a in (q, k, v))
        o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
        tg = torch.autograd.grad(o, (tq, tk, tv), torch.as_tensor(do, device="cuda").transpose(1, 2))
        rows.append(("sdpa32", cupy.asarray(o.detach().transpose(1, 2).contiguous()),
                     [cupy.asarray(x.transpose(1, 2).contiguous()) for x in tg]))
        for name, o_, g_ in rows:
            print(f"D={d} S={s} {name:8s} {stats(o_, ref)} | " + " ".join(stats(a, b) for a, b in zip(g_, gref)),
                  flush=True)
