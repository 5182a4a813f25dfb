"""Probe: softcap's tanh by a polynomial on the FMA pipe (twenty-fifth session, issue 7's bar: softcap forward >= 0.9x
plain; measured 0.67-0.70 at head dim 64, 0.76-0.78 at 128 with tanh.approx, one MUFU operation a score beside the
softmax's ex2).

score_mod.cuh now caps a warp fragment whose every |score * softmax_scale / c| <= 0.75 by an odd polynomial of degree
7 (6 FMA-pipe instructions a score with the fragment's check, no MUFU), any other by tanh.approx as before (2 FMA-pipe
instructions and one MUFU operation a score, plus the check). Expected, forward / plain at 2k-8k: if the softmax phase
is MUFU-bound (plain's ~330 instructions a warp and tile against 64 ex2 of 8 cycles), the polynomial's 4 more
instructions a score cost about half of tanh.approx's MUFU time: 0.67-0.70 -> 0.80-0.85 at 64, 0.76-0.78 -> 0.85-0.88
at 128; if instruction issue and MUFU time add up (the exponentials-on-FMA probe of the twentieth session fits that
better), little: 0.70-0.75 at 64. A cap of 2 keeps every fragment on tanh.approx (standard normal inputs: scaled
scores ~N(0, 1)): the check's cost there, expected <= 3%.

Measured (one H100, two rounds, `2026-11-27-h100-s25-softcap-poly-probe.md`): no gain. softcap 30 / plain, "poly" against
"mufu": 0.66-0.71 against 0.65-0.70 at 64, 0.66-0.77 against 0.70-0.80 at 128; softcap 2 (every fragment on
tanh.approx, with the check) lost 5-10%. (In that run the coefficients read as zeros, a namespace-scope constexpr
array read from device code, so "poly"'s outputs were wrong; the instructions were the intended ones.) Beside it,
`2026-11-27-clocks-under-load.py`: the board sits at its 700 W power cap through plain and softcap alike, so a
score's cost is its energy, whichever pipe spends it. The change was not kept.

Experiments: "mufu" = tanh.approx everywhere (POLY_TANH off), "poly" = the tree. Each in its own process, two rounds.
From the checkout root: python docs/measurements/2026-11-27-softcap-poly-probe.py"""
import os
import sys

EXPERIMENTS = ("mufu", "poly")
SHAPES = ((64, 2048), (64, 8192), (128, 2048), (128, 8192))
CAPS = (30.0, 2.0)
SAVED = "/tmp/softcap-poly-probe"


def patched(text, exp):
    line = "static constexpr bool POLY_TANH = SOFTCAP && !EXACT_TANH;"
    if exp == "mufu" and line in text:
        text = text.replace(line, "static constexpr bool POLY_TANH = false;")
    return text


def variants():
    from cupyflash.problem import Variant

    for mask in ("none", "band"):
        yield Variant("bfloat16", mask)
        yield Variant("bfloat16", mask, softcap=True)


def compare():
    import glob

    import numpy

    for path in sorted(glob.glob(f"{SAVED}/mufu-*.npz")):
        old, new = numpy.load(path), numpy.load(path.replace("/mufu-", "/poly-"))
        d_out = numpy.abs(new["out"] - old["out"]).max() / numpy.abs(old["out"]).max()
        finite = numpy.isfinite(old["lse"])
        d_lse = numpy.abs(new["lse"][finite] - old["lse"][finite]).max()
        nan = numpy.isnan(new["out"]).any() or numpy.isnan(new["lse"]).any()
        print(f"{os.path.basename(path)[5:-4]:32s} poly vs mufu: out {d_out:.2e} (of max |out|), lse {d_lse:.2e}, "
              f"NaN {nan}", flush=True)


def child(exp, timing):
    import cupy
    import numpy

    import cupyflash as cf
    from cupyflash.bench import HIDDEN, TOKENS, make_inputs, time_fn

    if not timing:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from cupyflash._nvrtc import BIG_GPU
        from cupyflash.configs import select_config
        from cupyflash.precompile import _compile

        instances = [[("fwd", d, select_config("fwd", BIG_GPU, d, variant=v, seqlen_q=s), v)]
                     for d, s in SHAPES for v in variants()]
        with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(_compile, instances))
        return
    for d, s in SHAPES:
        batch, nheads = TOKENS // s, HIDDEN // d
        cupy.random.seed(d + s)
        q, k, v = make_inputs(batch, s, nheads, d, "bfloat16")
        for causal in (False, True):
            plain = time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal))
            line = f"{exp:4s} d{d} S={s:5d} causal={causal!s:5}: plain {plain * 1e3:7.1f} us"
            for cap in CAPS:
                path = f"{SAVED}/{exp}-cap{cap:g}-d{d}-s{s}-{causal}.npz"
                if not os.path.exists(path):
                    out, lse = cf.flash_attn_func(q, k, v, causal=causal, softcap=cap, return_lse=True)
                    numpy.savez(path, out=out[:1].astype(cupy.float32).get(), lse=lse[:1].get())
                capped = time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal, softcap=cap))
                line += f", softcap {cap:g} {capped * 1e3:7.1f} us ({plain / capped:.3f}x plain)"
            print(line, flush=True)
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from source_probe import run

    if len(sys.argv) == 1:
        os.makedirs(SAVED, exist_ok=True)
    run(__file__, EXPERIMENTS, patched, child)
    if len(sys.argv) == 1:
        compare()
