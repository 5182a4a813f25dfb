"""The float32 forward at precision "tf32": the wgmma_tf32 family (staged operands, TF32 wgmma) against the mma_tf32
family's tile forced with ``config=``, and precision "highest" for scale; the bench's shapes (16k tokens, hidden
2048, float32, standard normal), median of CUDA-event times, old and new interleaved in one process. Also the
staging kernels' share (the wgmma forward's time with its operands already staged is not separable from the
public call, so the staging passes are timed alone: Tf32Staging on the same inputs).

Expectation written before the run (twenty-first session): mma_tf32's "tf32" forward ran 120-150 TFLOP/s; TF32
wgmma has twice mma.sync's TF32 peak per SM and the 16-bit wgmma forward runs 1.6-1.9x mma_sm80's, so 1.5-2x
(180-300 TFLOP/s) less the staging (three reads and writes of the inputs: a few percent at 8k, ~10% at 1k).
Measured (H100, `2026-11-29-h100-s21-tf32-forward-probe.md`, GPU 1 of a 4-H100 host; the first run, on one H100,
agrees within 3%): wgmma / mma_tf32, non-causal / causal, head dim 64: 1.04 / 0.81 at 1k, 1.33 / 1.08 at 2k, 1.57 /
1.37 at 4k, 1.74 / 1.61 at 8k (up to 243 TFLOP/s); 128: 1.46 / 1.18, 1.87 / 1.56, 2.15 / 1.99, 2.31 / 2.35 (up to
289). The staging passes are 8-16% of the call's time at 8k and 38-52% at 1k, where the causal forward at 64 is
slower than mma_tf32's. Outputs of the two families differ by at most 8e-4 (both within the tf32 bound).
Run: ``python docs/measurements/2026-11-29-tf32-wgmma-forward-probe.py``."""
import sys

SHAPES = [(d, s) for d in (64, 128) for s in (1024, 2048, 4096, 8192)]


def main():
    import cupy

    import cupyflash as cf
    from cupyflash.bench import HIDDEN, TOKENS, attn_flops, make_inputs, time_fn

    print("| D | seqlen | causal | wgmma_tf32 config | TFLOP/s | mma_tf32 TFLOP/s | wgmma / mma | highest TFLOP/s "
          "| max abs diff wgmma vs mma | staging ms / wgmma ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d, s in SHAPES:
        nheads = HIDDEN // d
        q, k, v = make_inputs(TOKENS // s, s, nheads, d, "float32")
        for causal in (False, True):
            flops = attn_flops(TOKENS // s, nheads, s, s, d, causal)
            new = cf.select_config_for(q, k, v, causal=causal, precision="tf32")
            old = cf.select_config_for(q, k, v, causal=causal, precision="tf32", family="mma_tf32")
            fns = {"new": lambda: cf.flash_attn_func(q, k, v, causal=causal, precision="tf32"),
                   "old": lambda: cf.flash_attn_func(q, k, v, causal=causal, precision="tf32", config=old),
                   "highest": lambda: cf.flash_attn_func(q, k, v, causal=causal)}
            times = {n: [] for n in fns}
            for _ in range(3):
                for n, fn in fns.items():
                    times[n].append(time_fn(fn))
            ms = {n: sorted(t)[1] for n, t in times.items()}
            diff = float(abs(fns["new"]() - fns["old"]()).max())
            tf = {n: flops / m / 1e9 for n, m in ms.items()}
            plan = cf.forward.plan_for(q, k, v, causal=causal, precision="tf32")
            staging = time_fn(lambda: [st.stage(x) for st, x in zip(plan.staging, (q, k, v))])
            print(f"| {d} | {s} | {causal} | {new} | {tf['new']:.1f} | {tf['old']:.1f} | {ms['old'] / ms['new']:.2f} "
                  f"| {tf['highest']:.1f} | {diff:.2e} | {staging / ms['new']:.2f} |", flush=True)
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    sys.exit(main())
