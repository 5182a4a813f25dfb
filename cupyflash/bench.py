"""Forward and backward benchmark of cupyflash against naive CuPy attention and PyTorch SDPA.

Run as ``python -m cupyflash.bench`` (``--help`` for options). Modes, among others:

- default: TFLOP/s of the forward and backward over head dims, sequence lengths, dtypes and causal, against
  PyTorch SDPA (flash and cuDNN backends) and naive CuPy; 16k tokens per batch, hidden 2048.
- ``--variants``: GQA/MQA, sliding window, softcap and ALiBi, each priced against plain attention of the same
  shape in the same run (bf16, head dims 128 and 64), with SDPA as the peer where its fused backends have one.
- ``--overhead``: host time per call on a tiny problem, where launching is all the work there is.
- ``--decode``: one query against a long K/V cache (split-KV's case): read bandwidth beside cuDNN and a copy.

Kernel times are medians of CUDA events; every impl runs in the same process. cupy and torch are imported
lazily so that the argument parser works on machines without a GPU.
"""
import argparse
import contextlib
import csv
import datetime
import gc
import itertools
import os
import sys
import time

TOKENS = 16384  # tokens per batch, as in the FlashAttention papers
HIDDEN = 2048
ALL_IMPLS = ["cupyflash", "cupyflash-sm80", "cupyflash-det", "torch-flash", "torch-cudnn", "cupy-naive"]
# Its forward is cupyflash's; only the backward differs: deterministic=True (the separate dQ kernel instead of
# fp32 atomics), which prices determinism.
BWD_ONLY = {"cupyflash-det"}
# The forward forced onto the mma_sm80 family (where the dispatcher prefers another, e.g. wgmma_sm90 on an H100):
# sm_80-class speed measured on the same GPU. Its backward is cupyflash's own.
FWD_ONLY = {"cupyflash-sm80"}
TORCH_BACKENDS = {"torch-flash": "FLASH_ATTENTION", "torch-cudnn": "CUDNN_ATTENTION"}
FLOP_NOTE = ("FLOPs(fwd) = 4*batch*nheads*seqlen_q*seqlen_k*headdim, halved when causal; "
             "FLOPs(bwd) = 2.5*FLOPs(fwd); TFLOP/s = FLOPs / median time; "
             "bwd is timed alone, after an untimed forward")
BWD_FLOP_FACTOR = 2.5  # the backward's five matmuls against the forward's two

# (header, row key, formatter); _fill_timing(row, direction, ...) fills the ms and TFLOP/s keys.
_num = lambda fmt: (lambda v: "" if v is None else fmt % v)
COLUMNS = [
    ("impl", "impl", str), ("dtype", "dtype", str), ("D", "D", str),
    ("causal", "causal", str), ("seqlen", "seqlen", str), ("batch", "batch", str),
    ("nheads", "nheads", str), ("fwd ms", "fwd_ms", _num("%.3f")),
    ("fwd TFLOP/s", "fwd_tflops", _num("%.1f")), ("bwd ms", "bwd_ms", _num("%.3f")),
    ("bwd TFLOP/s", "bwd_tflops", _num("%.1f")), ("extra MiB", "extra_mib", _num("%.1f")),
    ("out+lse MiB", "out_lse_mib", _num("%.1f")), ("config", "config", str),
]

# --variants: each variant row sits beside the plain row of its (D, causal, seqlen).
VARIANT_ORDER = ["plain", "GQA", "MQA", "window", "softcap", "ALiBi", "dropout"]
DROPOUT_P = 0.1  # the --variants dropout rows (SDPA's peer rows drop at the same rate)
GQA_SEQLENS, WINDOW_SEQLEN, SCORE_MOD_SEQLENS = (2048, 8192), 16384, (4096, 8192)
WINDOW = (4096, 0)  # flash-attn's (left, right): query i sees keys i-4096 ..= i
SOFTCAP = 30.0
WINDOW_BAR, SCORE_MOD_BAR = 0.5, 0.9  # window/causal time at most; softcap and ALiBi fwd throughput at least
VARIANT_COLUMNS = [
    ("variant", "variant", str), ("D", "D", str), ("causal", "causal", str), ("seqlen", "seqlen", str),
    ("nheads/nheads_k", "heads", str), ("fwd ms", "fwd_ms", _num("%.3f")),
    ("fwd TFLOP/s", "fwd_tflops", _num("%.1f")), ("bwd ms", "bwd_ms", _num("%.3f")),
    ("bwd TFLOP/s", "bwd_tflops", _num("%.1f")), ("fwd time / plain", "fwd_ratio", _num("%.2f")),
    ("bwd time / plain", "bwd_ratio", _num("%.2f")),
]  # then two columns per SDPA peer, filled with already formatted cells (a time or an error)
VARIANT_FLOP_NOTE = ("FLOPs(fwd) = 4*batch*nheads*visible_pairs*headdim, counting query heads (GQA and MQA do "
                     "the work of MHA) and exactly the (query, key) pairs that the causal mask and the window "
                     "leave visible; FLOPs(bwd) = 2.5*FLOPs(fwd); TFLOP/s = FLOPs / median time")
VARIANT_NOTES = [
    "time / plain: median time over that of the plain row of the same D, causal and seqlen (window: plain causal)",
    "no SDPA peer for window, softcap or ALiBi: its flash and cuDNN backends take none of them "
    "(only the math backend would, through a dense mask)",
    f"dropout: dropout_p={DROPOUT_P} (cupyflash with a fixed rng_state; SDPA's peers with the same dropout_p, "
    "which its flash backend takes)",
]

OVERHEAD_SHAPE = (1, 128, 2, 64)  # batch, seqlen, nheads, headdim: small enough that launching is the cost
OVERHEAD_CALLS = 2000
OVERHEAD_TARGET_US = {"fwd": 20, "bwd": 40}  # cupyflash's wall-time targets per call
OVERHEAD_COLUMNS = [
    ("impl", "impl", str), ("dtype", "dtype", str), ("direction", "direction", str),
    ("µs per call wall", "wall_us", _num("%.1f")), ("µs per call GPU", "gpu_us", _num("%.1f")),
    ("target wall µs", "target", str),
]
OVERHEAD_NOTE = (f"shape (batch, seqlen, nheads, headdim) = {OVERHEAD_SHAPE}, not causal; {OVERHEAD_CALLS} calls "
                 "back to back after a warm-up. wall: time.perf_counter around the loop, read before the "
                 "synchronize; GPU: CUDA events around the same loop. GPU close to wall means the GPU waited "
                 "for the host: the loop is host-bound and wall is the per-call overhead.")


def attn_flops(batch, nheads, sq, sk, d, causal):
    f = 4 * batch * nheads * sq * sk * d
    return f // 2 if causal else f


def visible_pairs(seqlen_q, seqlen_k, causal=False, window=(-1, -1)):
    """Number of (query, key) pairs that attention computes, in flash-attn's masking conventions.

    Query i sees key j iff i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right, within
    [0, seqlen_k), where window = (left, right) and -1 leaves that side unbounded; causal sets right = 0
    (the mask is aligned to the bottom-right corner). Rows that see no key count zero.
    """
    import numpy
    left, right = window
    if causal:
        right = 0
    diag = numpy.arange(seqlen_q, dtype=numpy.int64) + (seqlen_k - seqlen_q)  # each row's key on the diagonal
    first = numpy.maximum(diag - left, 0) if left >= 0 else numpy.zeros_like(diag)
    last = numpy.minimum(diag + right, seqlen_k - 1) if right >= 0 else numpy.full_like(diag, seqlen_k - 1)
    return int(numpy.maximum(last - first + 1, 0).sum())


def alibi_slopes(nheads):
    """ALiBi's per-head slopes, 2^(-8(h+1)/nheads) for h = 0 .. nheads-1 (the paper's, for power-of-2 nheads)."""
    import numpy
    slopes = 2.0 ** (-8.0 * numpy.arange(1, nheads + 1) / nheads)
    return slopes.astype(numpy.float32)


def _import_cupyflash():
    try:
        import cupyflash
    except ImportError:
        # `python cupyflash/bench.py` puts the package dir, not the repo root, on sys.path.
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import cupyflash
    return cupyflash


def _cupy_dtype(name):
    import cupy
    if name == "bfloat16":
        import ml_dtypes  # only needed for bf16, so fp16 runs work without it
        return ml_dtypes.bfloat16
    return cupy.float32 if name == "float32" else cupy.float16


def make_inputs(batch, seqlen, nheads, headdim, dtype, lib="cupy", nheads_k=None):
    """Fresh standard-normal q, k, v in the flash-attn (B, S, H, D) layout; k and v with nheads_k heads."""
    shapes = [(batch, seqlen, h, headdim) for h in (nheads, nheads_k or nheads, nheads_k or nheads)]
    if lib == "torch":
        import torch
        dt = getattr(torch, dtype)
        return tuple(torch.randn(shape, device="cuda", dtype=dt) for shape in shapes)
    import cupy
    dt = _cupy_dtype(dtype)
    # Generate in fp32 and cast: CuPy's RNG does not produce fp16/bf16 directly.
    return tuple(cupy.random.standard_normal(shape, dtype=cupy.float32).astype(dt) for shape in shapes)


def _timing_api(lib):
    """(new_event, elapsed_ms(a, b), synchronize) of CuPy's or PyTorch's current stream."""
    if lib == "torch":
        import torch
        return lambda: torch.cuda.Event(enable_timing=True), lambda a, b: a.elapsed_time(b), torch.cuda.synchronize
    import cupy
    return cupy.cuda.Event, cupy.cuda.get_elapsed_time, cupy.cuda.Device().synchronize


def time_fn(fn, lib="cupy", n_warmup=3, min_repeat=10, target_repeat=20, budget_s=0.5):
    """Median milliseconds of fn() measured with CUDA events on the current stream."""
    new_event, elapsed, sync = _timing_api(lib)
    import numpy
    for _ in range(n_warmup):  # also pays for JIT compilation and autotuning
        fn()
    sync()
    times = []
    while True:
        # Chunks without a host sync between calls keep the GPU queue full, so the
        # events measure kernel time rather than Python launch latency.
        pairs = []
        for _ in range(min_repeat):
            a, b = new_event(), new_event()
            a.record()
            fn()
            b.record()
            pairs.append((a, b))
        sync()
        times += [elapsed(a, b) for a, b in pairs]
        if len(times) >= target_repeat or sum(times) >= budget_s * 1e3:
            return float(numpy.median(times))


def time_loop(fn, lib="cupy", calls=OVERHEAD_CALLS, n_warmup=20):
    """Microseconds per call of `calls` back-to-back fn(): (host wall time of the loop, GPU time of the loop).

    The wall clock is read before the synchronize, so it is the time to issue the calls; the CUDA events
    bracket the same loop, so GPU time exceeds wall time only when the kernels, not the host, set the pace.
    """
    new_event, elapsed, sync = _timing_api(lib)
    for _ in range(n_warmup):
        fn()
    sync()
    a, b = new_event(), new_event()
    a.record()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    wall = time.perf_counter() - t0
    b.record()
    sync()
    return wall * 1e6 / calls, elapsed(a, b) * 1e3 / calls


def cupy_extra_mib(fn):
    import cupy
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.total_bytes()  # total_bytes keeps freed blocks, so temporaries count
    out = fn()
    cupy.cuda.Device().synchronize()
    extra = pool.total_bytes() - before
    del out
    return extra / 2**20


def _randn_like(x):
    import cupy
    return cupy.random.standard_normal(x.shape, dtype=cupy.float32).astype(x.dtype)


def cupyflash_kwargs(variant, nheads):
    """flash_attn_func/flash_attn_backward keyword arguments of a variant dict ({}: plain attention).

    The dict holds flash-attn keywords (window_size, softcap) and alibi=True for the paper's slopes.
    """
    kw = {k: v for k, v in variant.items() if k != "alibi"}
    if variant.get("alibi"):
        import cupy
        kw["alibi_slopes"] = cupy.asarray(alibi_slopes(nheads))
    return kw


def cupyflash_call(row, dtype, causal, direction):
    """The call to time for a row: flash_attn_func, or flash_attn_backward on a saved forward's out and lse.

    The row gives the shape (batch, seqlen, nheads, D, and nheads_k if not nheads) and, under "variant_kw",
    the variant dict of cupyflash_kwargs.
    """
    cf = _import_cupyflash()
    B, S, H, D = row["batch"], row["seqlen"], row["nheads"], row["D"]
    q, k, v = make_inputs(B, S, H, D, dtype, nheads_k=row.get("nheads_k"))
    kw = dict(causal=causal, **cupyflash_kwargs(row.get("variant_kw", {}), H))
    if kw.get("dropout_p"):  # one state for the forward and the backward that regenerates its mask
        kw["rng_state"] = (1234, 0)
    if row["impl"] == "cupyflash-tf32":
        kw["precision"] = "tf32"
    if row["impl"] == "cupyflash-sm80":
        kw["config"] = cf.select_config_for(q, k, v, causal=causal, family="mma_sm80")
    if direction == "fwd":
        row["config"] = str(kw.get("config") or cf.select_config_for(q, k, v, causal=causal,
                                                                   precision=kw.get("precision")))
        row["out_lse_mib"] = (B * S * H * D * 2 + B * H * S * 4) / 2**20
        return lambda: cf.flash_attn_func(q, k, v, **kw)
    out, lse = cf.flash_attn_func(q, k, v, return_lse=True, **kw)
    dout = _randn_like(out)
    if row["impl"] == "cupyflash-det":
        kw["deterministic"] = True
    return lambda: cf.flash_attn_backward(dout, q, k, v, out, lse, **kw)


def measure_cupyflash(row, dtype, causal, direction):
    fn = cupyflash_call(row, dtype, causal, direction)
    ms = time_fn(fn)
    if direction == "fwd":
        row["extra_mib"] = cupy_extra_mib(fn)
    return ms


_naive_bf16 = {"ok": None}  # None: untried; False: CuPy matmul rejected bf16


def _naive_fwd(qt, kt, vt, scale, hidden):
    """out and the float32 probabilities P, which the backward needs (as autograd would store them)."""
    import cupy
    s = cupy.matmul(qt, kt.swapaxes(-1, -2)).astype(cupy.float32)
    s *= scale
    if hidden is not None:
        cupy.copyto(s, float("-inf"), where=hidden)
    s -= s.max(axis=-1, keepdims=True)
    cupy.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return cupy.matmul(s.astype(qt.dtype), vt), s


def _naive_bwd(p, qt, kt, vt, do, scale):
    """dq, dk, dv from the stored P: matmuls in the input dtype, the softmax backward in float32."""
    import cupy
    dv = cupy.matmul(p.astype(do.dtype).swapaxes(-1, -2), do)
    ds = cupy.matmul(do, vt.swapaxes(-1, -2)).astype(cupy.float32)  # dP = dO V^T
    ds -= (ds * p).sum(axis=-1, keepdims=True)
    ds *= p
    ds *= scale  # folded in before the cast, so dQ and dK need no separate scaling pass
    ds = ds.astype(qt.dtype)
    return cupy.matmul(ds, kt), cupy.matmul(ds.swapaxes(-1, -2), qt), dv


def measure_naive(row, dtype, causal, direction):
    import cupy
    if dtype == "bfloat16" and _naive_bf16["ok"] is False:
        return None
    B, S, H, D = row["batch"], row["seqlen"], row["nheads"], row["D"]
    q, k, v = make_inputs(B, S, H, D, dtype)
    # (B,S,H,D) -> (B,H,S,D) outside the timed region: batched matmul wants it.
    qt, kt, vt = (cupy.ascontiguousarray(x.transpose(0, 2, 1, 3)) for x in (q, k, v))
    del q, k, v
    sq, sk, scale = S, S, 1.0 / D ** 0.5
    hidden = None
    if causal:  # bottom-right aligned: key j visible to query i iff j <= i + sk - sq
        hidden = cupy.arange(sk)[None, :] > cupy.arange(sq)[:, None] + (sk - sq)
    fn = lambda: _naive_fwd(qt, kt, vt, scale, hidden)

    if dtype == "bfloat16" and _naive_bf16["ok"] is None:
        try:
            fn()
            cupy.cuda.Device().synchronize()
            _naive_bf16["ok"] = True
        except Exception as e:
            if isinstance(e, cupy.cuda.memory.OutOfMemoryError):
                raise  # OOM says nothing about bf16 support; retry on the next shape
            _naive_bf16["ok"] = False
            print(f"note: skipping bf16 cupy-naive rows, CuPy matmul failed on bf16: "
                  f"{type(e).__name__}: {e}", flush=True)
            return None
    if direction == "fwd":
        ms = time_fn(fn)
        row["extra_mib"] = cupy_extra_mib(fn)
        return ms
    out, p = fn()
    do = _randn_like(out)
    del out
    return time_fn(lambda: _naive_bwd(p, qt, kt, vt, do, scale))


@contextlib.contextmanager
def torch_call(row, dtype, causal, direction):
    """Yields the SDPA call to time for a row, inside the context it must run in.

    The context pins the row's backend (TORCH_BACKENDS[impl]; any other impl name leaves PyTorch's default
    choice) and, for the forward, disables autograd. The backward is torch.autograd.grad on one saved graph.
    k and v get nheads_k heads (enable_gqa=True) when the row has them.
    """
    import functools
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    B, S, H, D = row["batch"], row["seqlen"], row["nheads"], row["D"]
    nheads_k = row.get("nheads_k", H)
    q, k, v = make_inputs(B, S, H, D, dtype, lib="torch", nheads_k=nheads_k)
    backend = TORCH_BACKENDS.get(row["impl"])
    gqa = {"enable_gqa": True} if nheads_k != H else {}
    dropout = row.get("variant_kw", {}).get("dropout_p", 0.0)
    sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention, is_causal=causal,
                             dropout_p=dropout, **gqa)
    with sdpa_kernel(getattr(SDPBackend, backend)) if backend else contextlib.nullcontext():
        if direction == "bwd":
            for x in (q, k, v):
                x.requires_grad_()
            out = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            dout = torch.randn_like(out)
            # retain_graph: the one forward's graph serves every timed backward.
            yield lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
            return
        # Transposed views of (B,S,H,D) tensors: how flash-attn-layout users call SDPA.
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        with torch.no_grad():
            yield lambda: sdpa(qt, kt, vt)


def measure_torch(row, dtype, causal, direction):
    import torch
    with torch_call(row, dtype, causal, direction) as fn:
        ms = time_fn(fn, lib="torch")
        if direction == "fwd":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = fn()
            torch.cuda.synchronize()
            row["extra_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
            del out
    return ms


def _fill_timing(row, direction, ms, flops):
    row[f"{direction}_ms"] = ms
    row[f"{direction}_tflops"] = flops / (ms * 1e-3) / 1e12


ERROR_KEYS = {"fwd": "error", "bwd": "bwd_error"}  # "error" keeps the forward-only CSVs' column name


def _error_text(e):
    # Both cupy's and torch's OOM errors have OutOfMemoryError in their class name.
    return "OOM" if "OutOfMemory" in type(e).__name__ else str(e).strip()[:40]


def new_row(impl, dtype, headdim, seqlen, causal, **extra):
    """A row of the default table's keys, for 16k tokens per batch and hidden 2048; extra keys added."""
    batch, nheads = max(1, TOKENS // seqlen), HIDDEN // headdim
    row = {"impl": impl, "dtype": dtype, "D": headdim, "causal": causal, "seqlen": seqlen,
           "batch": batch, "nheads": nheads, "fwd_ms": None, "fwd_tflops": None, "bwd_ms": None,
           "bwd_tflops": None, "extra_mib": None, "out_lse_mib": None, "config": "", "error": "",
           "bwd_error": ""}
    row.update(extra)
    return row


def measure_row(row, flops, bwd=True):
    """Times the row's impl forward and backward into it; None when the impl cannot run the dtype at all.

    flops is the forward's count (the backward's is BWD_FLOP_FACTOR times it). An error fills that
    direction's error cell instead of ending the run.
    """
    impl, dtype, causal = row["impl"], row["dtype"], row["causal"]
    measure = {"cupyflash": measure_cupyflash, "cupyflash-det": measure_cupyflash, "cupyflash-tf32": measure_cupyflash,
               "cupyflash-sm80": measure_cupyflash, "cupy-naive": measure_naive}.get(impl, measure_torch)
    directions = ([] if impl in BWD_ONLY else ["fwd"]) + (["bwd"] if bwd and impl not in FWD_ONLY else [])
    for direction in directions:
        free_memory()  # so neither the last shape's nor the forward's buffers crowd this measurement
        try:
            ms = measure(row, dtype, causal, direction)
            if ms is None:
                return None
            _fill_timing(row, direction, ms, flops * (BWD_FLOP_FACTOR if direction == "bwd" else 1))
        except Exception as e:  # one bad impl/shape must not end the run
            row[ERROR_KEYS[direction]] = _error_text(e)
            what = f"{impl} {row['variant']}" if "variant" in row else impl
            print(f"error: {what} {direction} {dtype} D={row['D']} S={row['seqlen']} causal={causal}: "
                  f"{type(e).__name__}: {e}", flush=True)
    return row


def run_one(impl, dtype, headdim, seqlen, causal, bwd=True):
    row = new_row(impl, dtype, headdim, seqlen, causal)
    return measure_row(row, attn_flops(row["batch"], row["nheads"], seqlen, seqlen, headdim, causal), bwd)


def free_memory():
    gc.collect()
    import cupy
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# A failed timing shows its error in its time cell.
_ERROR_CELLS = {**{f"{d}_ms": e for d, e in ERROR_KEYS.items()}, "wall_us": "error"}


def format_cell(row, key, fmt):
    err = row.get(_ERROR_CELLS.get(key), "")
    return err.replace("|", "/") if err else fmt(row.get(key))


def markdown_table(rows, columns=COLUMNS):
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(format_cell(r, k, f) for _, k, f in columns) + " |" for r in rows]
    return lines


def speedup_lines(rows):
    by_key = {}  # (dtype, D, causal, seqlen) -> direction -> impl -> TFLOP/s
    for r in rows:
        for direction in ("fwd", "bwd"):
            if r[f"{direction}_tflops"] is not None:
                shape = (r["dtype"], r["D"], r["causal"], r["seqlen"])
                by_key.setdefault(shape, {}).setdefault(direction, {})[r["impl"]] = r[f"{direction}_tflops"]
    lines = []
    for (dt, d, c, s), per_dir in by_key.items():
        cells = []
        for direction in (d for d in ("fwd", "bwd") if d in per_dir):
            t = per_dir[direction]
            # For bwd, the ratio to cupyflash-det is the speedup bought by giving up determinism.
            parts = [f"{t['cupyflash'] / t[o]:.2f}x vs {o}"
                     for o in ("cupy-naive", "torch-flash", "torch-cudnn", "cupyflash-det") if o in t]
            if "cupyflash" in t and parts:
                cells.append(f"{direction} " + ", ".join(parts))
        if cells:
            lines.append(f"- {dt} D={d} causal={c} seqlen={s}: " + "; ".join(cells))
    return lines


def _print_row(row, columns):
    cells = ((h, format_cell(row, k, f)) for h, k, f in columns)
    print("  ".join(f"{h}={c}" for h, c in cells if c != ""), flush=True)


# --- --variants -------------------------------------------------------------------------------------------

def variant_specs(headdims, causals):
    """The variants table's rows in print order: each (D, causal, seqlen) shape's plain row, then its variants.

    Each spec: variant (a VARIANT_ORDER name), D, causal, seqlen, nheads_k, kw (the variant dict of
    cupyflash_kwargs; {} for plain, GQA and MQA, which differ only in nheads_k).
    """
    specs = []
    for d in headdims:
        nheads = HIDDEN // d

        def add(name, s, c, nheads_k=nheads, **kw):
            specs.append({"variant": name, "D": d, "causal": c, "seqlen": s, "nheads_k": nheads_k, "kw": kw})

        for s, c in itertools.product(GQA_SEQLENS, causals):
            add("GQA", s, c, nheads_k=nheads // 4)
            add("MQA", s, c, nheads_k=1)
        if True in causals:
            add("window", WINDOW_SEQLEN, True, window_size=WINDOW)
        for s, c in itertools.product(SCORE_MOD_SEQLENS, causals):
            add("softcap", s, c, softcap=SOFTCAP)
            add("ALiBi", s, c, alibi=True)
            add("dropout", s, c, dropout_p=DROPOUT_P)
    shapes = dict.fromkeys((sp["D"], sp["causal"], sp["seqlen"]) for sp in specs)
    specs += [{"variant": "plain", "D": d, "causal": c, "seqlen": s, "nheads_k": HIDDEN // d, "kw": {}}
              for d, c, s in shapes]
    order = lambda sp: (headdims.index(sp["D"]), sp["seqlen"], sp["causal"], VARIANT_ORDER.index(sp["variant"]))
    return sorted(specs, key=order)


def variant_flops(batch, nheads, seqlen, headdim, causal, variant):
    """Forward FLOPs of a variants-table row: query heads times the pairs its mask leaves visible."""
    return 4 * batch * nheads * headdim * visible_pairs(seqlen, seqlen, causal,
                                                        variant.get("window_size", (-1, -1)))


def variant_columns(peers):
    text = lambda v: "" if v is None else v  # a formatted time or an error; blank where the peer has no variant
    return VARIANT_COLUMNS + [(f"{p} {d} ms", f"{p}_{d}", text) for p in peers for d in ("fwd", "bwd")]


def run_variant(spec, dtype, peers, bwd=True):
    """cupyflash's row for one spec, with each peer's times (or errors) as formatted cells of that row."""
    extra = {"variant": spec["variant"], "nheads_k": spec["nheads_k"], "variant_kw": spec["kw"]}
    row = new_row("cupyflash", dtype, spec["D"], spec["seqlen"], spec["causal"], **extra)
    row["heads"] = f"{row['nheads']}/{spec['nheads_k']}"
    flops = variant_flops(row["batch"], row["nheads"], spec["seqlen"], spec["D"], spec["causal"], spec["kw"])
    measure_row(row, flops, bwd)
    # SDPA's fused backends have no window, softcap or ALiBi; its flash backend takes dropout
    for impl in peers if set(spec["kw"]) <= {"dropout_p"} else []:
        peer = measure_row(new_row(impl, dtype, spec["D"], spec["seqlen"], spec["causal"], **extra), flops, bwd)
        for d in ("fwd", "bwd"):
            row[f"{impl}_{d}"] = format_cell(peer, f"{d}_ms", _num("%.3f"))
    return row


def add_plain_ratios(rows):
    """Sets each variant row's fwd_ratio and bwd_ratio: its time over the plain row's of the same shape."""
    shape = lambda r: (r["dtype"], r["D"], r["causal"], r["seqlen"])
    plain = {shape(r): r for r in rows if r["variant"] == "plain"}
    for r in rows:
        p = plain.get(shape(r))
        for d in ("fwd", "bwd"):
            ok = r["variant"] != "plain" and p is not None and r.get(f"{d}_ms") and p.get(f"{d}_ms")
            r[f"{d}_ratio"] = r[f"{d}_ms"] / p[f"{d}_ms"] if ok else None


def bar_lines(rows):
    """Whether the window and the score modifiers meet their bars, from rows with add_plain_ratios' ratios."""
    lines = []
    for r in rows:
        where = f"{r['dtype']} D={r['D']} causal={r['causal']} seqlen={r['seqlen']}"
        if r["variant"] == "window":
            parts = [f"{d} {r[f'{d}_ratio']:.2f}x" for d in ("fwd", "bwd") if r[f"{d}_ratio"] is not None]
            met = all(r[f"{d}_ratio"] <= WINDOW_BAR for d in ("fwd", "bwd") if r[f"{d}_ratio"] is not None)
            if parts:
                lines.append(f"- window {r['variant_kw']['window_size']} {where}: time / plain causal "
                             f"{', '.join(parts)} (bar <= {WINDOW_BAR}): {'met' if met else 'missed'}")
        elif r["variant"] in ("softcap", "ALiBi") and r["fwd_ratio"] is not None:
            speed = 1 / r["fwd_ratio"]
            lines.append(f"- {r['variant']} {where}: fwd throughput {speed:.2f}x plain "
                         f"(bar >= {SCORE_MOD_BAR}x): {'met' if speed >= SCORE_MOD_BAR else 'missed'}")
    return lines


def run_variants(args):
    """(rows, columns, report body) of --variants."""
    peers = [i for i in args.impls if i in TORCH_BACKENDS]
    columns = variant_columns(peers)
    rows = []
    for dtype, spec in itertools.product(args.dtype, variant_specs(args.headdim, args.causals)):
        rows.append(run_variant(spec, dtype, peers, bwd=not args.no_bwd))
        _print_row(rows[-1], columns)
    add_plain_ratios(rows)
    body = (markdown_table(rows, columns) + [""] + [f"note: {n}" for n in VARIANT_NOTES]
            + ["", "bars:"] + bar_lines(rows))
    return rows, columns, body


# --- --overhead -------------------------------------------------------------------------------------------

def overhead_target(row):
    """The target cell: cupyflash's wall-time bar for the direction and whether it was met."""
    target = OVERHEAD_TARGET_US.get(row["direction"]) if row["impl"] == "cupyflash" else None
    if target is None:
        return ""
    if row["wall_us"] is None:
        return f"<= {target}"
    return f"<= {target} ({'met' if row['wall_us'] <= target else 'missed'})"


def run_overhead(args):
    """(rows, columns, report body) of --overhead: cupyflash and, if torch works, SDPA's default backend."""
    B, S, H, D = OVERHEAD_SHAPE
    impls = ["cupyflash"] + (["torch-sdpa"] if any(i in TORCH_BACKENDS for i in args.impls) else [])
    rows = []
    for dtype, impl, direction in itertools.product(args.dtype, impls, ["fwd"] + ([] if args.no_bwd else ["bwd"])):
        row = {"impl": impl, "dtype": dtype, "direction": direction, "batch": B, "seqlen": S, "nheads": H, "D": D,
               "wall_us": None, "gpu_us": None, "error": ""}
        free_memory()
        try:
            if impl == "cupyflash":
                row["wall_us"], row["gpu_us"] = time_loop(cupyflash_call(row, dtype, False, direction))
            else:
                with torch_call(row, dtype, False, direction) as fn:
                    row["wall_us"], row["gpu_us"] = time_loop(fn, lib="torch")
        except Exception as e:
            row["error"] = _error_text(e)
            print(f"error: {impl} {direction} {dtype}: {type(e).__name__}: {e}", flush=True)
        row["target"] = overhead_target(row)
        rows.append(row)
        _print_row(row, OVERHEAD_COLUMNS)
    return rows, OVERHEAD_COLUMNS, markdown_table(rows, OVERHEAD_COLUMNS)


# --- --varlen ---------------------------------------------------------------------------------------------

VARLEN_MAX_LEN = 4096  # sequence lengths drawn uniformly from [1, VARLEN_MAX_LEN], TOKENS in all
VARLEN_BAR = 0.9  # packed useful TFLOP/s over the dense batch of the mean length, at least
VARLEN_COLUMNS = [
    ("layout", "layout", str), ("D", "D", str), ("causal", "causal", str), ("sequences", "sequences", str),
    ("lengths", "lengths", str), ("fwd ms", "fwd_ms", _num("%.3f")),
    ("useful fwd TFLOP/s", "fwd_tflops", _num("%.1f")), ("packed / dense", "ratio", _num("%.2f")),
]
VARLEN_NOTE = (f"packed: {TOKENS} tokens in lengths drawn uniformly from [1, {VARLEN_MAX_LEN}] (seed 0), "
               "flash_attn_varlen_func; dense: flash_attn_func on batch = tokens // mean length sequences of the "
               "mean length; useful FLOPs = 4 * nheads * headdim * the (query, key) pairs each sequence's own "
               "causal mask leaves visible, summed over sequences; ratio = packed over dense TFLOP/s")


def varlen_lengths(seed=0, tokens=TOKENS, max_len=VARLEN_MAX_LEN):
    """Lengths drawn uniformly from [1, max_len] until they hold `tokens` in all (the last one cut to fit)."""
    import numpy

    rng, lengths = numpy.random.default_rng(seed), []
    while sum(lengths) < tokens:
        lengths.append(int(rng.integers(1, max_len + 1)))
    lengths[-1] -= sum(lengths) - tokens
    return lengths


def useful_flops(lengths, nheads, headdim, causal):
    """Forward FLOPs of packed sequences: each one's own visible pairs (4 * nheads * headdim per pair)."""
    return sum(4 * nheads * headdim * int(visible_pairs(n, n, causal)) for n in lengths)


def run_varlen(args):
    """(rows, columns, report body) of --varlen: packed forward against the dense batch of the mean length."""
    import cupy
    import numpy

    import cupyflash as cf

    lengths = varlen_lengths()
    mean = round(sum(lengths) / len(lengths))
    cu = cupy.asarray(numpy.concatenate([[0], numpy.cumsum(lengths)]).astype(numpy.int32))
    rows = []
    for d, causal, dtype in itertools.product(args.headdim, args.causals, args.dtype):
        nheads = HIDDEN // d
        packed = [x[0] for x in make_inputs(1, TOKENS, nheads, d, dtype)]  # (total, nheads, headdim)
        dense = make_inputs(TOKENS // mean, mean, nheads, d, dtype)
        cases = (("packed", len(lengths), f"1..{max(lengths)}", useful_flops(lengths, nheads, d, causal),
                  lambda: cf.flash_attn_varlen_func(*packed, cu, cu, max(lengths), max(lengths), causal=causal)),
                 ("dense", TOKENS // mean, f"{mean}", useful_flops([mean] * (TOKENS // mean), nheads, d, causal),
                  lambda: cf.flash_attn_func(*dense, causal=causal)))
        pair = []
        for layout, count, lens, flops, fn in cases:
            row = {"impl": "cupyflash", "dtype": dtype, "layout": layout, "D": d, "causal": causal,
                   "sequences": count, "lengths": lens, "fwd_ms": None, "fwd_tflops": None, "ratio": None,
                   "error": ""}
            try:
                row["fwd_ms"] = time_fn(fn)
                row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
            except Exception as e:
                row["error"] = _error_text(e)
                print(f"error: {layout} D={d} causal={causal}: {type(e).__name__}: {e}", flush=True)
            pair.append(row)
        if all(r["fwd_tflops"] for r in pair):
            pair[0]["ratio"] = pair[0]["fwd_tflops"] / pair[1]["fwd_tflops"]
        for row in pair:
            _print_row(row, VARLEN_COLUMNS)
        rows += pair
        free_memory()
    bars = [f"- packed D={r['D']} causal={r['causal']}: {r['ratio']:.2f}x dense (bar >= {VARLEN_BAR}): "
            f"{'met' if r['ratio'] >= VARLEN_BAR else 'missed'}" for r in rows if r["ratio"] is not None]
    return rows, VARLEN_COLUMNS, markdown_table(rows, VARLEN_COLUMNS) + ["", "bars:"] + bars


# --- --decode ---------------------------------------------------------------------------------------------

#: (batch, nheads, keys) of one query against a long cache: decode-shaped calls, which split-KV serves
DECODE_SHAPES = ((1, 8, 131072), (1, 32, 8192), (1, 8, 32768), (4, 32, 8192), (16, 8, 65536), (64, 8, 16384),
                 (64, 32, 8192))
DECODE_PEER_BAR = 0.9  # K/V read bandwidth over cuDNN's, at least
DECODE_COPY_BAR = 0.7  # ... and over the device's copy bandwidth, where the cache read is at least DECODE_COPY_MIN
DECODE_COPY_MIN = 64 * 2**20
DECODE_COLUMNS = [
    ("batch x heads x keys", "shape", str), ("D", "D", str), ("dtype", "dtype", str),
    ("K+V MiB", "kv_mib", _num("%.0f")), ("impl", "impl", str), ("fwd ms", "fwd_ms", _num("%.4f")),
    ("GB/s", "gbps", _num("%.0f")), ("/ cuDNN", "vs_cudnn", _num("%.2f")), ("/ copy", "vs_copy", _num("%.2f")),
    ("splits", "splits", str), ("config", "config", str),
]
DECODE_NOTE = ("one query (seqlen_q 1, non-causal) against seqlen_k keys, nheads K/V heads; GB/s = bytes of K and V "
               "/ median time; copy: a device-to-device copy of 1 GiB, (read + write bytes) / median time, same "
               "run; SDPA peers on the same tensors viewed as (B, H, S, D)")


def copy_bandwidth(nbytes=2**30):
    """GB/s of a device-to-device copy (bytes read + bytes written), median of CUDA events."""
    import cupy

    src = cupy.zeros(nbytes // 2, cupy.uint16)
    dst = cupy.empty_like(src)
    ms = time_fn(lambda: cupy.copyto(dst, src))
    del src, dst
    free_memory()
    return 2 * nbytes / ms / 1e6


def run_decode(args):
    """(rows, columns, report body) of --decode: K/V read bandwidth of one query against a long cache."""
    import cupyflash as cf
    from cupyflash.forward import plan_for

    copy = copy_bandwidth()
    print(f"device copy: {copy:.0f} GB/s", flush=True)
    peers = [i for i in args.impls if i in TORCH_BACKENDS]
    rows = []
    for (batch, nheads, keys), d, dtype in itertools.product(DECODE_SHAPES, args.headdim, args.dtype):
        (q, k, v), tensors = _decode_inputs(batch, keys, nheads, d, dtype, bool(peers))
        kv_bytes = 2 * k.size * k.itemsize
        shape = f"{batch} x {nheads} x {keys}"
        calls = [("cupyflash", "cupy", lambda: cf.flash_attn_func(q, k, v))] if "cupyflash" in args.impls else []
        calls += [(impl, "torch", _sdpa_decode(TORCH_BACKENDS[impl], *tensors)) for impl in peers]
        group = []
        for impl, lib, fn in calls:
            row = {"impl": impl, "dtype": dtype, "shape": shape, "D": d, "kv_mib": kv_bytes / 2**20, "fwd_ms": None,
                   "gbps": None, "vs_cudnn": None, "vs_copy": None, "splits": "", "config": "", "error": ""}
            try:
                row["fwd_ms"] = time_fn(fn, lib)
                row["gbps"] = kv_bytes / row["fwd_ms"] / 1e6
                row["vs_copy"] = row["gbps"] / copy
                if impl == "cupyflash":
                    plan = plan_for(q, k, v)
                    row["splits"], row["config"] = str(plan.splits), str(plan.config)
            except Exception as e:
                row["error"] = _error_text(e)
                print(f"error: {impl} {shape} D={d}: {type(e).__name__}: {e}", flush=True)
            group.append(row)
        cudnn = next((r["gbps"] for r in group if r["impl"] == "torch-cudnn" and r["gbps"]), None)
        for row in group:
            if cudnn and row["gbps"]:
                row["vs_cudnn"] = row["gbps"] / cudnn
            _print_row(row, DECODE_COLUMNS)
        rows += group
        del q, k, v, calls, tensors
        free_memory()
    bars = []
    for r in rows:
        if r["impl"] != "cupyflash" or r["gbps"] is None:
            continue
        checks = [] if r["vs_cudnn"] is None else [f"{r['vs_cudnn']:.2f}x cuDNN (bar >= {DECODE_PEER_BAR}): "
                                                   f"{'met' if r['vs_cudnn'] >= DECODE_PEER_BAR else 'missed'}"]
        if r["kv_mib"] * 2**20 >= DECODE_COPY_MIN:
            checks.append(f"{r['vs_copy']:.2f}x copy (bar >= {DECODE_COPY_BAR}): "
                          f"{'met' if r['vs_copy'] >= DECODE_COPY_BAR else 'missed'}")
        bars.append(f"- {r['dtype']} D={r['D']} {r['shape']}: " + "; ".join(checks))
    body = [f"device copy bandwidth: {copy:.0f} GB/s", ""] + markdown_table(rows, DECODE_COLUMNS) + ["", "bars:"]
    return rows, DECODE_COLUMNS, body + bars


def _decode_inputs(batch, keys, nheads, d, dtype, with_torch):
    """((q, k, v) as CuPy arrays, the same memory as PyTorch tensors or None): q (batch, 1, nheads, d), k and v
    (batch, keys, nheads, d), standard normal. Made by PyTorch when its peers run (bf16 crosses DLPack that way)."""
    import cupy

    if not with_torch:
        qkv = tuple(cupy.random.standard_normal((batch, s, nheads, d), dtype=cupy.float32).astype(_cupy_dtype(dtype))
                    for s in (1, keys, keys))
        return qkv, None
    import torch

    tensors = tuple(torch.randn(batch, s, nheads, d, device="cuda", dtype=getattr(torch, dtype))
                    for s in (1, keys, keys))
    return tuple(cupy.from_dlpack(t) for t in tensors), tensors


def _sdpa_decode(backend, q, k, v):
    """SDPA on one backend over (B, S, H, D) tensors, viewed as (B, H, S, D)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

    def call():
        with sdpa_kernel(getattr(SDPBackend, backend)), torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
    return call


# --- --bias -----------------------------------------------------------------------------------------------

BIAS_SEQLENS = (1024, 2048, 4096, 8192)
BIAS_FWD_BAR = 0.8   # forward with a bias over the same forward without, at least
BIAS_PEER_BAR = 1.5  # cupyflash forward + backward over SDPA's with the bias as a float attn_mask, at least
BIAS_COLUMNS = [
    ("bias", "bias", str), ("D", "D", str), ("seqlen", "seqlen", str), ("impl", "impl", str),
    ("fwd ms", "fwd_ms", _num("%.3f")), ("bwd ms", "bwd_ms", _num("%.3f")),
    ("fwd TFLOP/s", "fwd_tflops", _num("%.1f")), ("bwd TFLOP/s", "bwd_tflops", _num("%.1f")),
    ("fwd / plain fwd", "fwd_vs_plain", _num("%.2f")), ("fwd+bwd speedup vs SDPA", "vs_sdpa", _num("%.2f")),
]
BIAS_NOTE = (f"{TOKENS} tokens, hidden {HIDDEN}, non-causal; bias in q's dtype: pair (1, H, S, S) or key "
             "(B, 1, 1, S); FLOPs as the default mode (the bias adds none); plain: cupyflash without a bias; "
             "cupyflash-det: deterministic=True (dbias summed without atomics); SDPA: PyTorch's own backend "
             "choice with the bias as a float attn_mask; both backwards compute dq, dk, dv and dbias")


def run_bias(args):
    """(rows, columns, report body) of --bias: forward and backward with an additive bias, beside plain
    cupyflash and SDPA with the same bias."""
    import cupy

    import cupyflash as cf

    rows, bars = [], []
    for d, s, dtype in itertools.product(args.headdim, BIAS_SEQLENS, args.dtype):
        batch, nheads = TOKENS // s, HIDDEN // d
        fwd_flops = 4 * batch * nheads * s * s * d
        q, k, v = make_inputs(batch, s, nheads, d, dtype)
        dout = cupy.random.standard_normal(q.shape, dtype=cupy.float32).astype(q.dtype)
        plain_fwd = time_fn(lambda: cf.flash_attn_func(q, k, v))
        for kind, shape in (("pair", (1, nheads, s, s)), ("key", (batch, 1, 1, s))):
            bias = cupy.random.standard_normal(shape, dtype=cupy.float32).astype(q.dtype)
            row = {"impl": "cupyflash", "dtype": dtype, "bias": kind, "D": d, "seqlen": s, "error": ""}
            det = dict(row, impl="cupyflash-det")  # deterministic=True: dbias without atomics, dQ by its kernel
            try:
                out, lse = cf.flash_attn_func(q, k, v, bias=bias, return_lse=True)
                row["fwd_ms"] = det["fwd_ms"] = time_fn(lambda: cf.flash_attn_func(q, k, v, bias=bias))
                row["bwd_ms"] = time_fn(lambda: cf.flash_attn_backward(dout, q, k, v, out, lse, bias=bias,
                                                                       return_dbias=True))
                det["bwd_ms"] = time_fn(lambda: cf.flash_attn_backward(dout, q, k, v, out, lse, bias=bias,
                                                                       return_dbias=True, deterministic=True))
                row["fwd_vs_plain"] = det["fwd_vs_plain"] = plain_fwd / row["fwd_ms"]
            except Exception as e:
                row["error"] = det["error"] = _error_text(e)
            peer = {"impl": "torch-sdpa", "dtype": dtype, "bias": kind, "D": d, "seqlen": s, "error": ""}
            if any(i in TORCH_BACKENDS for i in args.impls):
                try:
                    peer["fwd_ms"], peer["bwd_ms"] = _sdpa_with_bias(batch, s, nheads, d, dtype, shape)
                except Exception as e:
                    peer["error"] = _error_text(e)
            for r in (row, det, peer):
                for direction, flops in (("fwd", fwd_flops), ("bwd", 2.5 * fwd_flops)):
                    if r.get(f"{direction}_ms"):
                        r[f"{direction}_tflops"] = flops / r[f"{direction}_ms"] / 1e9
            for r in (row, det):
                if r.get("bwd_ms") and peer.get("bwd_ms"):
                    r["vs_sdpa"] = (peer["fwd_ms"] + peer["bwd_ms"]) / (r["fwd_ms"] + r["bwd_ms"])
            for r in (row, det, peer):
                if r.get("fwd_ms"):
                    rows.append(r)
                    _print_row(r, BIAS_COLUMNS)
            if row.get("fwd_vs_plain"):
                bars.append(f"- {kind} D={d} S={s}: fwd {row['fwd_vs_plain']:.2f}x plain (bar >= {BIAS_FWD_BAR})"
                            + (f", fwd+bwd {row['vs_sdpa']:.2f}x SDPA (bar >= {BIAS_PEER_BAR}; "
                               f"deterministic {det['vs_sdpa']:.2f}x)" if row.get("vs_sdpa") and det.get("vs_sdpa")
                               else ""))
        free_memory()
    return rows, BIAS_COLUMNS, markdown_table(rows, BIAS_COLUMNS) + ["", "bars:"] + bars


def _sdpa_with_bias(batch, s, nheads, d, dtype, shape):
    """(fwd ms, bwd ms) of SDPA with a float attn_mask of ``shape`` (its gradient too), PyTorch's own backend
    choice."""
    import torch

    q, k, v = make_inputs(batch, s, nheads, d, dtype, lib="torch")
    mask = torch.randn(shape, device="cuda", dtype=q.dtype, requires_grad=True)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        fwd = time_fn(lambda: sdpa(qt, kt, vt, attn_mask=mask), lib="torch")
    for x in (q, k, v):
        x.requires_grad_()
    out = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    dout = torch.randn_like(out)
    bwd = time_fn(lambda: torch.autograd.grad(out, (q, k, v, mask), dout, retain_graph=True), lib="torch")
    return fwd, bwd


# --- --mask -----------------------------------------------------------------------------------------------

MASK_SEQLENS = (1024, 2048, 4096, 8192)
MASK_BLOCK = 128     # the mask's blocks: larger than every kernel tile, so tiles are wholly hidden or visible
MASK_BAR = 0.6       # time with half of the mask's blocks empty over the unmasked call's, at most
MASK_COLUMNS = [
    ("mask", "mask", str), ("D", "D", str), ("seqlen", "seqlen", str), ("impl", "impl", str),
    ("fwd ms", "fwd_ms", _num("%.3f")), ("bwd ms", "bwd_ms", _num("%.3f")),
    ("fwd / plain", "fwd_vs_plain", _num("%.2f")), ("fwd+bwd / plain", "total_vs_plain", _num("%.2f")),
]
MASK_NOTE = (f"{TOKENS} tokens, hidden {HIDDEN}, non-causal; mask (B, 1, S, S) bool: 'half blocks' hides a random "
             f"half of its {MASK_BLOCK}x{MASK_BLOCK} blocks and shows the rest, 'random' hides half of the pairs "
             "at random (no empty tile), 'all visible' hides none; 'prepared' passes cf.prepare_mask(mask) (whose "
             "blocks of whole tiles take the block-sparse kernels), 'read as cut' a prepared mask not searched for "
             "blocks (the kernels that read the mask in its tiles), 'raw' "
             "the array (its tile summary computed per call); '+ pair bias': with a (1, H, S, S) bf16 bias too, "
             "backward with dbias, beside the bias alone; times relative to cupyflash without a mask or bias; SDPA: "
             "PyTorch's own backend choice with the same boolean attn_mask")


def _half_empty_blocks(batch, s, seed=0):
    import cupy

    blocks = -(-s // MASK_BLOCK)
    rng = cupy.random.RandomState(seed)
    keep = rng.permutation(batch * blocks * blocks).reshape(batch, 1, blocks, blocks) % 2 == 0  # exactly half
    return cupy.repeat(cupy.repeat(keep, MASK_BLOCK, axis=2), MASK_BLOCK, axis=3)[..., :s, :s]


def run_mask(args):
    """(rows, columns, report body) of --mask: boolean masks that skip work, against the unmasked call."""
    import cupy

    import cupyflash as cf

    rows, bars = [], []
    for d, s, dtype in itertools.product(args.headdim, MASK_SEQLENS, args.dtype):
        batch, nheads = TOKENS // s, HIDDEN // d
        q, k, v = make_inputs(batch, s, nheads, d, dtype)
        dout = cupy.random.standard_normal(q.shape, dtype=cupy.float32).astype(q.dtype)
        out, lse = cf.flash_attn_func(q, k, v, return_lse=True)
        plain = (time_fn(lambda: cf.flash_attn_func(q, k, v)),
                 time_fn(lambda: cf.flash_attn_backward(dout, q, k, v, out, lse)))
        half = _half_empty_blocks(batch, s)
        dense = cupy.random.RandomState(1).random_sample((batch, 1, s, s), dtype=cupy.float32) < 0.5
        pair = cupy.random.standard_normal((1, nheads, s, s), dtype=cupy.float32).astype(q.dtype)
        from ._mask import PreparedMask

        cut = PreparedMask(half, find_blocks=False)  # prepared, but read in the tiles as a mask that cuts them
        cases = (("half blocks, prepared", cf.prepare_mask(half), None), ("half blocks, raw", half, None),
                 ("half blocks, prepared, read as cut", cut, None),
                 ("random, prepared", cf.prepare_mask(dense), None),
                 ("all visible, prepared", cf.prepare_mask(cupy.ones((batch, 1, s, s), bool)), None),
                 ("pair bias alone", None, pair), ("half blocks + pair bias, prepared", cf.prepare_mask(half), pair))
        for name, mask, bias in cases:
            row = _mask_row("cupyflash", dtype, name, d, s, plain,
                            lambda: _cupyflash_with_mask(q, k, v, dout, mask, bias))
            rows.append(row)
            if name.startswith("half blocks,") and row.get("total_vs_plain"):
                ok = max(row["fwd_vs_plain"], row["total_vs_plain"]) <= MASK_BAR
                bars.append(f"- {name} D={d} S={s}: fwd {row['fwd_vs_plain']:.2f}x, fwd+bwd "
                            f"{row['total_vs_plain']:.2f}x plain (bar <= {MASK_BAR}): {'met' if ok else 'missed'}")
        if any(i in TORCH_BACKENDS for i in args.impls):
            rows.append(_mask_row("torch-sdpa", dtype, "half blocks", d, s, plain,
                                  lambda: _sdpa_with_bool_mask(q, k, v, half)))
        half = dense = cases = pair = cut = None  # before the next size's allocations
        free_memory()
    return rows, MASK_COLUMNS, markdown_table(rows, MASK_COLUMNS) + ["", "bars:"] + bars


def _mask_row(impl, dtype, name, d, s, plain, measure):
    """A --mask row: measure() gives (fwd ms, bwd ms); ratios against plain = (fwd ms, bwd ms) without a mask."""
    row = {"impl": impl, "dtype": dtype, "mask": name, "D": d, "seqlen": s, "error": ""}
    try:
        row["fwd_ms"], row["bwd_ms"] = measure()
        row["fwd_vs_plain"] = row["fwd_ms"] / plain[0]
        row["total_vs_plain"] = (row["fwd_ms"] + row["bwd_ms"]) / sum(plain)
    except Exception as e:
        row["error"] = _error_text(e)
    _print_row(row, MASK_COLUMNS)
    return row


def _cupyflash_with_mask(q, k, v, dout, mask, bias=None):
    """(fwd ms, bwd ms) with a mask and/or a bias (the backward then returns dbias too)."""
    import cupyflash as cf

    out, lse = cf.flash_attn_func(q, k, v, mask=mask, bias=bias, return_lse=True)
    return (time_fn(lambda: cf.flash_attn_func(q, k, v, mask=mask, bias=bias)),
            time_fn(lambda: cf.flash_attn_backward(dout, q, k, v, out, lse, mask=mask, bias=bias,
                                                   return_dbias=bias is not None)))


def _sdpa_with_bool_mask(q, k, v, mask):
    """(fwd ms, bwd ms) of SDPA on copies of q, k, v with a boolean attn_mask, PyTorch's own backend choice."""
    import torch

    qt, kt, vt = (torch.from_dlpack(x).clone().transpose(1, 2) for x in (q, k, v))
    m = torch.from_dlpack(mask)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        fwd = time_fn(lambda: sdpa(qt, kt, vt, attn_mask=m), lib="torch")
    for x in (qt, kt, vt):
        x.requires_grad_()
    out = sdpa(qt, kt, vt, attn_mask=m)
    dout = torch.randn_like(out)
    bwd = time_fn(lambda: torch.autograd.grad(out, (qt, kt, vt), dout, retain_graph=True), lib="torch")
    return fwd, bwd


# --- default mode -----------------------------------------------------------------------------------------

def run_default(args):
    """(rows, columns, report body) of the default mode: every impl over every shape."""
    rows = []
    for d, s, causal, dt, impl in itertools.product(
            args.headdim, args.seqlen, args.causals, args.dtype, args.impls):
        row = run_one(impl, dt, d, s, causal, bwd=not args.no_bwd)
        if row is not None:
            rows.append(row)
            _print_row(row, COLUMNS)
    body = markdown_table(rows) + ["", "speedup of cupyflash (TFLOP/s ratio):"] + speedup_lines(rows)
    return rows, COLUMNS, body


def header_lines(note=FLOP_NOTE):
    import cupy
    p = cupy.cuda.runtime.getDeviceProperties(0)
    lines = [f"device: {p['name'].decode()}, compute capability {p['major']}.{p['minor']}, "
             f"{p['multiProcessorCount']} SMs", f"cupy: {cupy.__version__}"]
    try:
        import torch
        lines.append(f"torch: {torch.__version__}")
    except ImportError:
        pass
    return lines + [f"date: {datetime.date.today()}", note]


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cupyflash.bench", description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--variants", action="store_true",
                      help="GQA/MQA (seqlen 2048, 8192), sliding window (4096, 0) (seqlen 16384, causal), softcap "
                           "30 and ALiBi (seqlen 4096, 8192), each beside plain attention of the same shape; "
                           "uses --headdim, --dtype (default bfloat16), --causal, --impls (SDPA peers), --no-bwd")
    mode.add_argument("--overhead", action="store_true",
                      help=f"host time per call: {OVERHEAD_CALLS} calls on a {OVERHEAD_SHAPE} problem, cupyflash and "
                           "SDPA's default backend (left out if --impls names no torch impl); uses --dtype "
                           "(default bfloat16) and --no-bwd")
    mode.add_argument("--varlen", action="store_true",
                      help=f"packed variable-length forward ({TOKENS} tokens, lengths uniform in "
                           f"[1, {VARLEN_MAX_LEN}]) against the dense batch of the mean length; uses --headdim, "
                           "--dtype (default bfloat16), --causal")
    mode.add_argument("--decode", action="store_true",
                      help="decode-shaped forward: one query against 8k-128k keys, batch 1-64, 8-32 heads; K/V "
                           "read bandwidth beside SDPA's flash and cuDNN backends and the device's copy bandwidth "
                           "(needs PyTorch); uses --headdim (default 128), --dtype (default bfloat16), --impls")
    mode.add_argument("--bias", action="store_true",
                      help="additive bias (pair and key shapes, seqlen 1k-8k), forward and backward, beside "
                           "plain cupyflash and SDPA with the bias as attn_mask; uses --headdim, --dtype (default "
                           "bfloat16), --impls (any torch impl: SDPA runs)")
    mode.add_argument("--fp32", action="store_true",
                      help="float32 inputs: cupyflash at precision 'highest' and 'tf32', SDPA and naive CuPy on "
                           "float32, times and errors against float64 (seqlen 1k-8k); uses --headdim, --seqlen, "
                           "--impls (any torch impl: SDPA runs)")
    mode.add_argument("--mask", action="store_true",
                      help="boolean masks with half of their blocks empty (prepared and raw) and dense random "
                           "masks, forward and backward, against the unmasked call (seqlen 1k-8k); uses "
                           "--headdim, --dtype (default bfloat16), --impls (any torch impl: SDPA runs)")
    mode.add_argument("--plot", metavar="CSV",
                      help="no benchmark: draw TFLOP/s against seqlen from a CSV that the default mode wrote "
                           "(--csv), one PNG per dtype and direction (needs matplotlib); no GPU needed")
    p.add_argument("--out", metavar="DIR", help="--plot: where the PNGs go (default: the CSV's folder)")
    p.add_argument("--headdim", type=int, nargs="+", help="default: 64 128 (--decode: 128)")
    p.add_argument("--seqlen", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384],
                   help="default mode only")
    p.add_argument("--dtype", nargs="+", choices=["float16", "bfloat16"],
                   help="default: both in the default mode, bfloat16 with --variants or --overhead")
    p.add_argument("--causal", choices=["both", "true", "false"], default="both")
    p.add_argument("--impls", nargs="+", choices=ALL_IMPLS, default=list(ALL_IMPLS))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: headdim 128, seqlen 2048 and 8192 (overrides --headdim/--seqlen; "
                        "--variants: headdim 128 only)")
    p.add_argument("--no-bwd", action="store_true", help="time the forward only (drops cupyflash-det)")
    p.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as markdown")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.headdim, args.seqlen = [128], [2048, 8192]
    if args.headdim is None:
        args.headdim = [128] if args.decode else [64, 128]
    if args.dtype is None:
        args.dtype = (["bfloat16"] if args.variants or args.overhead or args.varlen or args.bias or args.mask
                      or args.decode
                      else ["float32"] if args.fp32 else ["float16", "bfloat16"])
    args.causals = {"both": [False, True], "true": [True], "false": [False]}[args.causal]
    if args.no_bwd:  # the bwd-only rows would be empty
        args.impls = [i for i in args.impls if i not in BWD_ONLY]
    return args


def _check_support(args):
    if "bfloat16" in args.dtype:
        try:
            import cupy
            import ml_dtypes
            cupy.random.standard_normal((2,), dtype=cupy.float32).astype(ml_dtypes.bfloat16)
        except Exception as e:
            args.dtype = [d for d in args.dtype if d != "bfloat16"]
            print(f"note: bf16 rows skipped, CuPy cannot make bf16 arrays: {type(e).__name__}: {e}",
                  flush=True)
    wanted = [i for i in args.impls if i in TORCH_BACKENDS]
    if wanted:
        try:
            import torch
            ok, why = torch.cuda.is_available(), "torch.cuda.is_available() is False"
        except ImportError as e:
            ok, why = False, str(e)
        if not ok:
            args.impls = [i for i in args.impls if i not in TORCH_BACKENDS]
            print(f"note: skipping {', '.join(wanted)}: {why}", flush=True)


def _fp32():
    from . import bench_fp32

    return bench_fp32


def main(argv=None):
    args = parse_args(argv)
    _import_cupyflash()  # also when run as a script (python cupyflash/bench.py)
    from cupyflash._cli import die, require_gpu

    if args.plot:
        from cupyflash._plot import PlotError, plot_csv

        try:
            written = plot_csv(args.plot, args.out)
        except (PlotError, OSError) as e:
            die("cupyflash bench --plot", str(e), 2)
        print("\n".join(map(str, written)))
        return []
    require_gpu("cupyflash bench")
    note = (OVERHEAD_NOTE if args.overhead else VARIANT_FLOP_NOTE if args.variants else VARLEN_NOTE if args.varlen
            else BIAS_NOTE if args.bias else MASK_NOTE if args.mask else _fp32().NOTE if args.fp32
            else DECODE_NOTE if args.decode else FLOP_NOTE)
    head = header_lines(note)
    print("\n".join(head), flush=True)
    _check_support(args)
    run = (run_overhead if args.overhead else run_variants if args.variants else run_varlen if args.varlen
           else run_bias if args.bias else run_mask if args.mask else _fp32().run if args.fp32
           else run_decode if args.decode else run_default)
    rows, columns, body = run(args)
    report = head + [""] + body
    print("\n" + "\n".join(report), flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(report) + "\n")
    if args.csv:
        write_csv(args.csv, rows, columns)
    return rows


def write_csv(path, rows, columns=COLUMNS):
    """The rows' column keys and error cells as CSV (what --plot reads back)."""
    keys = [k for _, k, _ in columns] + ["error", "bwd_error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
