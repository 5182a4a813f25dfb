"""float32 backward: dQ by atomics in the dK/dV kernel, or by the separate dQ kernel? `configs.use_atomic_dq` takes
atomics from 2048 x 2048 visible pairs a head, a threshold measured on 16-bit inputs; for float32 the table says
"not measured yet". The separate dQ kernel recomputes S and dP (three products of the backward's seven, where the
atomic path has five and the atomics), which costs relatively more where products are slow (TF32: half of 16-bit's
rate, "highest" three passes). Times `flash_attn_backward` with atomic_dq=True and False (not deterministic), the
bench's shapes (16k tokens, hidden 2048, float32), seqlen 1k and 2k, causal and not, head dims 64 and 128, both
precisions; median of CUDA-event times, the two interleaved in one process; the two results' largest difference
in dQ (they differ in summation order only).
Expectation (twenty-first session): at 1k, atomics 1.1-1.3x faster for both precisions (the products saved against
the atomics' traffic); if so, float32 takes atomics at every size.
Measured (one H100, `2026-11-29-h100-s21-fp32-atomic-dq-probe.md`): atomics faster in every case, "tf32" 1.04-1.15x
(64: 1.04-1.08, 128: 1.11-1.15), "highest" 1.13-1.47x (the more so at 128 and without a mask); dQ differs by
2e-6-5e-6 ("tf32") and 1e-7-4e-7 ("highest"). Float32 now takes atomics from 1024 x 512 pairs
(`configs.ATOMIC_DQ_MIN_PAIRS`); `bench --fp32 --seqlen 1024` after it (`2026-11-29-h100-s21-fp32-1k-atomic-dq.md`):
"tf32" backward 80.4 -> 84.7 TFLOP/s at 64, 71.9 -> 81.4 at 128; "highest" 30.2 -> 38.2 and 24.2 -> 35.2.
Run: ``python docs/measurements/2026-11-29-fp32-atomic-dq-probe.py --compile`` then without ``--compile``."""
import os
import sys

SHAPES = [(d, s, c) for d in (64, 128) for s in (1024, 2048) for c in (False, True)]
PRECISIONS = ("tf32", "highest")


def work():
    from cupyflash._device import device_limits
    from cupyflash.configs import select_config
    from cupyflash.problem import Variant

    limits = device_limits(0)
    out = []
    for d, _, causal in SHAPES:
        for precision in PRECISIONS:
            v = Variant("float32", "band" if causal else "none", precision=precision)
            out += [(kind, d, select_config(kind, limits, d, variant=v), v) for kind in ("fwd", "bwd", "bwd_dq")]
    return list(dict.fromkeys(out))


def main():
    import cupy

    import cupyflash as cf
    from cupyflash._device import device_limits
    from cupyflash.bench import HIDDEN, TOKENS, attn_flops, make_inputs, time_fn
    from cupyflash.configs import use_atomic_dq
    from cupyflash.problem import Variant

    print("| precision | D | seqlen | causal | atomic TFLOP/s | dQ kernel TFLOP/s | atomic / dQ kernel speed "
          "| default | max dQ diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for precision in PRECISIONS:
        for d, s, causal in SHAPES:
            nheads = HIDDEN // d
            q, k, v = make_inputs(TOKENS // s, s, nheads, d, "float32")
            dout = cupy.random.standard_normal(q.shape, dtype=cupy.float32)
            out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True, precision=precision)
            flops = 2.5 * attn_flops(TOKENS // s, nheads, s, s, d, causal)
            fns = {a: (lambda a=a: cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, precision=precision,
                                                          atomic_dq=a)) for a in (True, False)}
            times = {a: [] for a in fns}
            for _ in range(3):
                for a, fn in fns.items():
                    times[a].append(time_fn(fn))
            ms = {a: sorted(t)[1] for a, t in times.items()}
            diff = float(abs(fns[True]()[0] - fns[False]()[0]).max())
            default = use_atomic_dq(device_limits(0), d, s, s, causal, Variant("float32", precision=precision))
            strategy = "atomic" if default else "dQ kernel"
            print(f"| {precision} | {d} | {s} | {causal} | {flops / ms[True] / 1e9:.1f} | "
                  f"{flops / ms[False] / 1e9:.1f} | {ms[False] / ms[True]:.2f} | {strategy} | {diff:.1e} |", flush=True)
            del q, k, v, dout, out, lse
            cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from forced_probe import cli

    cli(work, main)
