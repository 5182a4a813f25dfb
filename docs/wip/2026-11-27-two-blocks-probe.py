"""Probe: producer tiles at two blocks an SM (issue 10's short causal rows, issue 8's masks at 1k-2k). The
seventeenth session's block-cost probe measured a fixed cost of about 8 us a block (head dim 64, 192x128: launch, Q
and first key tile's latency, pipeline fill and drain, output store) beside 1.4 us a key tile, about 40% of a 2k
causal block; with one block an SM nothing overlaps it. Small producer tiles fit two blocks an SM (72-107 KB of
shared memory; 256 threads at 128 registers each, the consumers raised to 216 by setmaxnreg within their block):
one block's start and end then overlap the other's products. Expected: at 2k causal, head dim 64, 0.82-0.86x cuDNN
-> 0.9-1.0x if the overlap hides most of the fixed cost and the 64-row tiles lose little a key tile (each block
copies its own K and V: twice the L2 -> shared memory traffic of a 128-row tile); at 8k-16k, behind the lead
(issue-bound 64-row warpgroups, less latency hiding). Forced configs (the config check is switched off: not table
entries), compiled in parallel first, each checked against float32 attention on awkward lengths, then TFLOP/s at
2k-16k beside the lead and cuDNN in the same process (bf16, 16k tokens, hidden 2048). From the checkout root,
after `pip install --no-deps --no-build-isolation -e .`:
    timeout 540 python docs/wip/2026-11-27-two-blocks-probe.py"""
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from cupyflash import families, forward
from cupyflash.configs import _w
from cupyflash.problem import Variant

forward.check_config = lambda *a, **k: None  # tiles outside the table
P, O = dict(producer=True, tma=True), dict(producer=True, overlap=True, tma=True)
CASES = [(64, _w(192, 128, **P)), (64, _w(64, 128, **P, blocks_per_sm=2)), (64, _w(64, 128, **O, blocks_per_sm=2)),
         (64, _w(64, 192, **P, blocks_per_sm=2)), (64, _w(64, 64, stages=3, **P, blocks_per_sm=2)),
         (128, _w(128, 128, **O)), (128, _w(64, 64, **P, blocks_per_sm=2)), (128, _w(64, 64, **O, blocks_per_sm=2))]


def _compile(job):
    from cupyflash import _kernels
    kd, cfg, mask = job
    _kernels.get_function(families.WGMMA_SM90, "fwd", cfg, kd, Variant("bfloat16", mask), 0)
    return job


def main():
    import cupy as cp
    import torch
    import torch.nn.functional as F
    import cupyflash as cf
    from cupyflash.bench import time_fn

    jobs = [(kd, cfg, m) for kd, cfg in CASES for m in ("none", "band")]
    t0 = time.time()
    with ProcessPoolExecutor(16, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_compile, jobs))
    print(f"compiled {len(jobs)} in {time.time() - t0:.0f} s", flush=True)
    for kd, cfg in CASES:
        errs = []
        for B, Sq, Sk, H in ((2, 1000, 1000, 3), (1, 97, 1025, 2), (1, 1, 300, 2), (3, 300, 517, 1)):
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
        for S in (2048, 4096, 8192, 16384):
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
