"""How close float32 at precision "highest" comes to issue 9's accuracy bar, "error within 2x of a plain fp32
computation against float64", kernel path by kernel path (twenty-fifth session). The GPU tests hold "highest" to 16x
plain float32 (`_accuracy.NAIVE_FACTOR`) plus a floor of 4e-6 (x (1 + the largest gradient) for gradients), which on
unit-scale inputs is itself about 10x plain float32's error: this survey prints the ratios the tests do not show.

For each head dim (wgmma_tf32 paths at 64 (forward and dK/dV) and 128 (forward); mma_tf32 elsewhere and for the
backward at 128), seqlens 1024 and 4096, batch 1, 2 heads, standard-normal float32 inputs, causal and not, plain
scores and (at 64 and 128) a float32 pair bias: the largest |error| against float64 of out, lse, dq, dk and dv, plain
float32 arithmetic's (cupyflash.reference.attention_naive_lowp / attention_backward_naive_lowp in float32, every
intermediate rounded), and their ratio. Expected from the bench (errors against SDPA's float32): the wgmma paths
within 1-2x; the mma_tf32 paths, which add each product into long-lived accumulators on the tensor cores, above 2x
where the sums are long (dK, dV over the queries; out over the keys). From the checkout root:
python docs/measurements/2026-11-27-highest-error-survey.py"""
import itertools
import os

import cupy

import cupyflash as cf
from cupyflash.reference import (attention_backward_naive_lowp, attention_backward_reference, attention_naive_lowp,
                                 attention_reference)

# (env: HEAD_DIMS, SEQLENS, CAUSAL ("0 1"), BIAS ("0 1"): a share of the cases, for processes side by side)
HEAD_DIMS = tuple(int(d) for d in os.environ.get("HEAD_DIMS", "32 64 96 128 160 256").split())
SEQLENS = tuple(int(s) for s in os.environ.get("SEQLENS", "1024 4096").split())
CAUSAL = tuple(bool(int(c)) for c in os.environ.get("CAUSAL", "0 1").split())
BIAS = tuple(bool(int(b)) for b in os.environ.get("BIAS", "0 1").split())
print("| D | S | causal | bias | forward family | out | lse | dq | dk | dv |")
print("|---|---|---|---|---|---|---|---|---|---|")
worst = {}
for d, s, causal in itertools.product(HEAD_DIMS, SEQLENS, CAUSAL):
    for with_bias in (b for b in BIAS if not b or d in (64, 128)):
        rng = cupy.random.default_rng(d * 7 + s + causal)
        q, k, v, do = (rng.standard_normal((1, s, 2, d), dtype=cupy.float32) for _ in range(4))
        bias = rng.standard_normal((1, 2, s, s), dtype=cupy.float32) if with_bias else None
        kw = dict(bias=bias) if with_bias else {}
        out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, precision="highest", **kw)
        grads = cf.flash_attn_backward(do, q, k, v, out, lse, causal=causal, precision="highest", **kw)
        q64, k64, v64, do64 = (x.astype(cupy.float64) for x in (q, k, v, do))
        kw64 = dict(bias=bias.astype(cupy.float64)) if with_bias else {}
        ref_out, ref_lse = attention_reference(q64, k64, v64, None, causal, **kw64)
        low_out, low_lse = attention_naive_lowp(q64, k64, v64, None, causal, "float32", **kw64)
        out64 = out.astype(cupy.float64)
        refs = attention_backward_reference(do64, q64, k64, v64, None, causal, out=out64, **kw64)
        lows = attention_backward_naive_lowp(do64, q64, k64, v64, None, causal, "float32", out=out64, **kw64)
        cells = []
        lse64 = lse.astype(cupy.float64)
        for name, got, ref, low in (("out", out64, ref_out, low_out), ("lse", lse64, ref_lse, low_lse),
                                    *zip(("dq", "dk", "dv"), (g.astype(cupy.float64) for g in grads), refs, lows)):
            err, base = float(cupy.abs(got - ref).max()), float(cupy.abs(low - ref).max())
            ratio = err / base if base else float("inf")
            worst[name] = max(worst.get(name, 0.0), ratio)
            mark = "**" if ratio > 2 else ""
            cells.append(f"{err:.1e} / {base:.1e} = {mark}{ratio:.2f}{mark}")
        from cupyflash.forward import plan_for

        try:
            fam = plan_for(q, k, v, causal=causal, precision="highest", **kw).config.family
        except Exception:  # (the plan's signature is internal: the path column is informative only)
            fam = "?"
        print(f"| {d} | {s} | {causal} | {with_bias} | {fam} | " + " | ".join(cells) + " |", flush=True)
        del q, k, v, do, out, lse, grads, bias
        cupy.get_default_memory_pool().free_all_blocks()
print()
print("largest ratio (error / plain float32's) per output: " + ", ".join(f"{n} {r:.2f}" for n, r in worst.items()))
