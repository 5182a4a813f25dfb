"""Probe: where the packed head-dim-64 forward loses 23% against the dense one on the same work (eighteenth
session, CUPTI: 580.9 against 474.0 us, 11 x 1489 tokens packed, non-causal). The two kernels differ in two places
a block: PackedRows::of (four loads of cu_seqlens at the start of every warp, before the producer's first copy and
the consumers' first wait) and, with bulk copies, values_landed (the entry's last key tile: the values past its end
zeroed, a proxy fence, a barrier of all consumer warps). Each experiment runs in its own process with the kernel
source edited before compiling (timing only; the edits are not correct for other lengths): base; nozero (no
zeroing); noload (the entry's rows computed from the batch index, as for equal lengths); both. Expected: if the
barrier costs ~1-2 us a block, nozero recovers a third to a half of the gap; the loads ~0.5-1 us a block.
From the checkout root: python docs/measurements/2026-11-27-packed-cost-probe.py"""
import os
import re
import sys

EXPERIMENTS = ("base", "nozero", "noload", "both")


def patched(text, exp):
    if exp in ("nozero", "both"):
        old = "if (t != 0 || valid >= BLOCK_N) return;"
        assert old in text
        text = text.replace(old, "return;")
    if exp in ("noload", "both"):
        body = re.compile(r"(static __device__ __forceinline__ Seq of\(const AttnParams& p, int batch\) \{\n"
                          r"        const int q0 = p\.cu_seqlens_q\[batch\].*?return \{row_q, row_k, len_q, len_k, true\};)",
                          re.S)
        assert body.search(text)
        text = body.sub("static __device__ __forceinline__ Seq of(const AttnParams& p, int batch) {\n"
                        "        return {batch * p.seqlen_q, batch * p.seqlen_k, p.seqlen_q, p.seqlen_k, true};", text)
    return text


def child(exp, timing):
    import numpy as np
    import cupy as cp

    import cupyflash as cf
    from cupyflash.bench import make_inputs, time_fn, varlen_lengths

    real = varlen_lengths()
    mean = round(sum(real) / len(real))
    for kd, causal in ((64, False), (64, True), (128, False)):
        H = 2048 // kd
        dense = make_inputs(len(real), mean, H, kd, "bfloat16")
        qkv = [x[0] for x in make_inputs(1, mean * len(real), H, kd, "bfloat16")]
        cu = cp.asarray(np.arange(len(real) + 1, dtype=np.int32) * mean)
        if not timing:  # compile (and run once) only
            cf.flash_attn_func(*dense, causal=causal)
            cf.flash_attn_varlen_func(*qkv, cu, cu, mean, mean, causal=causal)
            continue
        d = time_fn(lambda: cf.flash_attn_func(*dense, causal=causal))
        p = time_fn(lambda: cf.flash_attn_varlen_func(*qkv, cu, cu, mean, mean, causal=causal))
        print(f"{exp:7s} d{kd} causal={causal}: dense {d * 1e3:6.1f} us, packed equal {p * 1e3:6.1f} us "
              f"({p / d:.3f}x)", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from source_probe import run

    run(__file__, EXPERIMENTS, patched, child)
