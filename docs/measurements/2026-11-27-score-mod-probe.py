"""Probe: the score modifiers' forward cost on the warpgroup (wgmma) tiles (twentieth session). Bars: softcap and
ALiBi forward >= 0.9x plain; measured before (sixteenth session, bf16): softcap 0.66-0.69 at head dim 64,
0.77-0.79 at 128; ALiBi 0.86-0.87 at 64, 0.79-0.88 at 128. Two changes, each experiment in its own process with
the kernel source edited:
- softcap adds a MUFU operation a score (tanh.approx) beside the softmax's ex2. Per warp and score at 64: two MUFU
  operations of 8 cycles against ~9 instructions issued; an exponential on the FMA pipe (online_softmax.cuh
  exp2_fma) costs 9 issue slots and frees 8 MUFU cycles. Expected: a split near 3/8 to 1/2 cuts the MUFU-bound
  time by ~20% (softcap / plain 0.67 -> ~0.8 at 64; at 128, where MUFU about equals the tensor work, 0.78 ->
  0.85-0.9). Experiments eK: K eighths of the exponentials on the FMA pipe.
- ALiBi took two instructions a score (the distance, then an FFMA); on tiles off the diagonal it now takes one
  (score_mod.cuh apply_score_mod_rows: an FFMA by the key's constant column, a row's term added to its max).
  Expected: +4-7% (ALiBi / plain 0.86 -> 0.90-0.93 at 64). Experiment "old": the general form everywhere and every
  exponential on MUFU (the tree before both changes); the eK experiments all take the new ALiBi form.
Measured (one H100, `2026-11-27-h100-s20-score-mod-probe.md`): every FMA split slower than none (softcap /
plain at 64: 0.59-0.73 with none, 0.57-0.69 with 3/8 or 4/8; at 128: 0.69-0.80 against 0.64-0.73), so exp2_fma
was taken out again and the eK edits no longer apply; ALiBi's form: no change at 64 (0.83-0.90 against
0.86-0.89), +5-20% at 128 (0.71-0.87 -> 0.84-0.94), kept. Each experiment's first-round results (batch 0's out and
lse) are compared with old's at the end: the new forms change only roundings.
From the checkout root: python docs/measurements/2026-11-27-score-mod-probe.py"""
import os
import sys

EXPERIMENTS = ("old", "e0", "e2", "e3", "e4")
SHAPES = ((64, 2048), (64, 8192), (128, 2048), (128, 8192))
SOFTCAP = 30.0


def patched(text, exp):
    fraction = "constexpr int EXP2_FMA_EIGHTHS = Core::WARPGROUPS && Score::MUFU_OPS > 0 ? 3 : 0;"
    if fraction in text:
        text = text.replace(fraction, fraction.replace("? 3 :", f"? {0 if exp == 'old' else int(exp[1:])} :"))
    offsets = "static constexpr bool ROW_OFFSETS = ALIBI;"
    if offsets in text and exp == "old":
        text = text.replace(offsets, "static constexpr bool ROW_OFFSETS = false;")
    return text


def variants():
    from cupyflash.problem import Variant

    for mask in ("none", "band"):
        yield Variant("bfloat16", mask)
        yield Variant("bfloat16", mask, softcap=True)
        yield Variant("bfloat16", mask, alibi=True)


SAVED = "/tmp/score-mod-probe"


def compare():
    """Each experiment's first-round outputs (batch 0) against the "old" experiment's: the largest |difference| of
    out (over the largest |out|) and of lse, and whether any is NaN."""
    import glob

    import numpy

    for path in sorted(glob.glob(f"{SAVED}/old-*.npz")):
        old = numpy.load(path)
        for other in sorted(glob.glob(path.replace("/old-", "/e*-"))):
            new = numpy.load(other)
            d_out = numpy.abs(new["out"] - old["out"]).max() / numpy.abs(old["out"]).max()
            finite = numpy.isfinite(old["lse"])
            d_lse = numpy.abs(new["lse"][finite] - old["lse"][finite]).max()
            same_inf = numpy.array_equal(finite, numpy.isfinite(new["lse"]))
            nan = numpy.isnan(new["out"]).any() or numpy.isnan(new["lse"]).any()
            print(f"{os.path.basename(other)[:-4]:40s} vs old: out {d_out:.2e} (of max |out|), lse {d_lse:.2e}, "
                  f"same -inf rows {same_inf}, NaN {nan}", flush=True)


def child(exp, timing):
    import cupy
    import numpy

    import cupyflash as cf
    from cupyflash.bench import HIDDEN, TOKENS, make_inputs, time_fn

    if not timing:  # compile the experiment's kernels in parallel (forked workers keep the edited source)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from cupyflash._nvrtc import BIG_GPU  # the H100's limits, without touching CUDA before the fork
        from cupyflash.configs import select_config
        from cupyflash.precompile import _compile

        instances = [[("fwd", d, select_config("fwd", BIG_GPU, d, variant=v), v)]
                     for d in sorted({d for d, _ in SHAPES}) for v in variants()]
        with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(_compile, instances))
        return
    for d, s in SHAPES:
        batch, nheads = TOKENS // s, HIDDEN // d
        cupy.random.seed(d + s)  # the same inputs in every experiment's process (compared at the end)
        q, k, v = make_inputs(batch, s, nheads, d, "bfloat16")
        slopes = cupy.asarray([2.0 ** (-8.0 * (h + 1) / nheads) for h in range(nheads)], dtype=cupy.float32)
        for causal in (False, True):
            for name, kw in (("softcap", dict(softcap=SOFTCAP)), ("alibi", dict(alibi_slopes=slopes))):
                path = f"{SAVED}/{exp}-{name}-d{d}-s{s}-{causal}.npz"
                if not os.path.exists(path):  # the first round keeps its results, compared across experiments below
                    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, **kw)
                    numpy.savez(path, out=out[:1].astype(cupy.float32).get(), lse=lse[:1].get())
            plain = time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal))
            capped = time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal, softcap=SOFTCAP))
            alibi = time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal, alibi_slopes=slopes))
            print(f"{exp:4s} d{d} S={s:5d} causal={causal!s:5}: plain {plain * 1e3:7.1f} us, "
                  f"softcap {capped * 1e3:7.1f} us ({plain / capped:.3f}x plain), "
                  f"ALiBi {alibi * 1e3:7.1f} us ({plain / alibi:.3f}x plain)", flush=True)
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
