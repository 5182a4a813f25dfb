"""Probe: ping-pong between the two consumer warpgroups of the overlapped forward tiles (twentieth session). The
score-modifier probes found softcap's extra MUFU time added to the head-dim-64 lead's time rather than hidden, and
no tile or ring depth that hides it: the consumers wait for the same key tile and run their softmax at the same
time. FlashAttention-3's schedule makes the two warpgroups issue their products in turn (pipeline.cuh take_turn /
pass_turn, named barriers), so that one's softmax runs while the other's products hold the tensor cores.
Expected (the overlapped tiles: head dim 128's lead, 192's and 256's): softcap at 128 0.76-0.78x plain -> 0.85-0.9
(its softmax, twice plain's, is what the turns hide), plain +0-8% (FA3's ablation: ~+8% at 128), ALiBi as plain.
Experiments: on (the patch), off (PINGPONG = false: the consumers as before). bf16, 16k tokens, two rounds.
Measured (one H100, `2026-11-27-h100-s20-pingpong-probe.md`): nothing moves beyond the rounds' spread (softcap at 128
0.69-0.80x plain off, 0.74-0.80 on; plain at 128, 192, 256 within -4% to +3%): the two warpgroups' softmax phases are
not what serializes softcap; not landed. The change is `2026-11-27-pingpong.patch` (git apply it before running).
From the checkout root: python docs/measurements/2026-11-27-pingpong-probe.py"""
import os
import sys

EXPERIMENTS = ("off", "on")
SHAPES = ((128, 2048), (128, 8192), (192, 8192), (256, 8192))
SOFTCAP = 30.0


def patched(text, exp):
    old = "static constexpr bool PINGPONG = OVERLAP;"
    if old in text and exp == "off":
        text = text.replace(old, "static constexpr bool PINGPONG = false;")
    return text


def child(exp, timing):
    import cupyflash as cf
    from cupyflash.bench import time_fn

    for d, s, q, k, v, slopes in inputs(SHAPES):
        calls = {"plain": {}, "softcap": dict(softcap=SOFTCAP), "ALiBi": dict(alibi_slopes=slopes)}
        if d != 128:
            calls = {"plain": {}}
        for causal in (False, True):
            if not timing:
                for kw in calls.values():
                    cf.flash_attn_func(q, k, v, causal=causal, **kw)
                continue
            times = {name: time_fn(lambda: cf.flash_attn_func(q, k, v, causal=causal, **kw))
                     for name, kw in calls.items()}
            print(f"{exp:3s} d{d} S={s:5d} causal={causal!s:5}: "
                  + ", ".join(f"{name} {t * 1e3:7.1f} us ({times['plain'] / t:.3f}x plain)"
                              for name, t in times.items()), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from forced_probe import inputs
    from source_probe import run

    run(__file__, EXPERIMENTS, patched, child)
