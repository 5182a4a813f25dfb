"""Tile probe for the short sequences that keep issue 10's bars thin (H100, fifteenth session: head dim 64 causal
0.82x cuDNN at 2k and 0.91x at 4k; 128 0.93-0.95x at 2k). Forced wgmma tiles with bulk copies (those that compile
without spills or ptxas C75xx warnings; some are not table entries, so the config check is switched off here),
compiled in parallel first, each checked against float32 attention on awkward lengths, then TFLOP/s at 2k, 4k
and 8k beside cuDNN in the same process (bf16, 16k tokens, hidden 2048). From the checkout root, after
`pip install --no-deps --no-build-isolation -e .`:
    timeout 500 python docs/measurements/2026-11-27-h100-short-seqlen-probe.py"""
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from cupyflash import families, forward
from cupyflash.configs import _w
from cupyflash.problem import Variant

forward.check_config = lambda *a, **k: None  # tiles outside the table
P, O = dict(producer=True, tma=True), dict(producer=True, overlap=True, tma=True)
CASES = [(64, _w(192, 128, **P)), (64, _w(128, 192, **O)), (64, _w(128, 128, **O)), (64, _w(128, 128, **P)),
         (64, _w(192, 96, **P)), (64, _w(128, 96, **O)),
         (128, _w(128, 128, **O)), (128, _w(128, 96, **O)), (128, _w(128, 64, **O)), (128, _w(192, 96, **P))]


def _compile(job):
    from cupyflash import _kernels
    kd, cfg, mask = job
    _kernels.get_function(families.WGMMA_SM90, "fwd", cfg, kd, Variant("bfloat16", mask), 0)
    return job


def main(cases=CASES, seqlens=(2048, 4096, 8192)):
    """Compiles, checks and times ``cases`` ((head dim, config) pairs) at ``seqlens`` (other probes reuse it)."""
    import cupy as cp
    import torch
    import torch.nn.functional as F
    import cupyflash as cf
    from cupyflash.bench import time_fn

    jobs = [(kd, cfg, m) for kd, cfg in cases for m in ("none", "band")]
    t0 = time.time()
    with ProcessPoolExecutor(16, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_compile, jobs))
    print(f"compiled {len(jobs)} in {time.time() - t0:.0f} s", flush=True)
    for kd, cfg in cases:
        errs = []
        for B, Sq, Sk, H in ((2, 1000, 1000, 3), (1, 97, 1025, 2), (1, 1, 300, 2)):
            qb, kb, vb = (torch.randn(B, s, H, kd, device="cuda", dtype=torch.bfloat16) for s in (Sq, Sk, Sk))
            for causal in (False, True):
                out = torch.from_dlpack(cf.flash_attn_func(*(cp.from_dlpack(x) for x in (qb, kb, vb)),
                                                           causal=causal, config=cfg)).float()
                keep = torch.ones(Sq, Sk, device="cuda", dtype=torch.bool).tril(Sk - Sq) if causal else None
                ref = F.scaled_dot_product_attention(*(x.float().transpose(1, 2) for x in (qb, kb, vb)),
                                                     attn_mask=keep).transpose(1, 2)
                err = (out - torch.nan_to_num(ref, 0.0)).abs().max().item()
                errs.append(err if err == err else float("inf"))
        print(f"d{kd} {cfg} check max err {max(errs):.2e} {'ok' if max(errs) < 2e-2 else 'FAIL'}", flush=True)
        for S in seqlens:
            B, H = 16384 // S, 2048 // kd
            q, k, v = (torch.randn(B, S, H, kd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            qc, kc, vc = (cp.from_dlpack(x) for x in (q, k, v))
            row = []
            for causal in (False, True):
                flops = 4 * B * H * S * S * kd / (2 if causal else 1)
                ms = time_fn(lambda: cf.flash_attn_func(qc, kc, vc, causal=causal, config=cfg))
                with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                    ref = time_fn(lambda: F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                                                         is_causal=causal), "torch")
                row.append(f"{flops / ms / 1e9:6.1f} (cuDNN {flops / ref / 1e9:6.1f})")
            print(f"d{kd} {cfg} S{S}: {' | '.join(row)}", flush=True)


if __name__ == "__main__":
    main()
