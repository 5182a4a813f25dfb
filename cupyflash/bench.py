"""Forward and backward benchmark of cupyflash against naive CuPy attention and PyTorch SDPA.

Run as ``python -m cupyflash.bench`` (``--help`` for options). cupy and torch are
imported lazily so that the argument parser works on machines without a GPU.
"""
import argparse
import csv
import datetime
import gc
import itertools
import os
import sys

TOKENS = 16384  # tokens per batch, as in the FlashAttention papers
HIDDEN = 2048
ALL_IMPLS = ["cupyflash", "cupyflash-det", "torch-flash", "torch-cudnn", "cupy-naive"]
# Its forward is cupyflash's; only the backward differs: deterministic=True (the separate dQ kernel instead of
# fp32 atomics), which prices determinism.
BWD_ONLY = {"cupyflash-det"}
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


def attn_flops(batch, nheads, sq, sk, d, causal):
    f = 4 * batch * nheads * sq * sk * d
    return f // 2 if causal else f


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
    return cupy.float16


def make_inputs(batch, seqlen, nheads, headdim, dtype, lib="cupy"):
    """Fresh standard-normal q, k, v in the flash-attn (B, S, H, D) layout."""
    shape = (batch, seqlen, nheads, headdim)
    if lib == "torch":
        import torch
        dt = getattr(torch, dtype)
        return tuple(torch.randn(shape, device="cuda", dtype=dt) for _ in range(3))
    import cupy
    dt = _cupy_dtype(dtype)
    # Generate in fp32 and cast: CuPy's RNG does not produce fp16/bf16 directly.
    return tuple(cupy.random.standard_normal(shape, dtype=cupy.float32).astype(dt)
                 for _ in range(3))


def time_fn(fn, lib="cupy", n_warmup=3, min_repeat=10, target_repeat=20, budget_s=0.5):
    """Median milliseconds of fn() measured with CUDA events on the current stream."""
    if lib == "torch":
        import torch
        new_event = lambda: torch.cuda.Event(enable_timing=True)
        elapsed = lambda a, b: a.elapsed_time(b)
        sync = torch.cuda.synchronize
    else:
        import cupy
        new_event, elapsed = cupy.cuda.Event, cupy.cuda.get_elapsed_time
        sync = cupy.cuda.Device().synchronize
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


def measure_cupyflash(row, dtype, causal, direction):
    cf = _import_cupyflash()
    B, S, H, D = row["batch"], row["seqlen"], row["nheads"], row["D"]
    q, k, v = make_inputs(B, S, H, D, dtype)
    if direction == "fwd":
        fn = lambda: cf.flash_attn_func(q, k, v, causal=causal)
        row["config"] = str(cf.select_config_for(q, k, v, causal=causal))
        row["out_lse_mib"] = (B * S * H * D * 2 + B * H * S * 4) / 2**20
        ms = time_fn(fn)
        row["extra_mib"] = cupy_extra_mib(fn)
        return ms
    out, lse = cf.flash_attn_func(q, k, v, causal=causal, return_lse=True)
    dout = _randn_like(out)
    kw = {"deterministic": True} if row["impl"] == "cupyflash-det" else {}
    return time_fn(lambda: cf.flash_attn_backward(dout, q, k, v, out, lse, causal=causal, **kw))


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


def measure_torch(row, dtype, causal, direction):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, TORCH_BACKENDS[row["impl"]])
    B, S, H, D = row["batch"], row["seqlen"], row["nheads"], row["D"]
    q, k, v = make_inputs(B, S, H, D, dtype, lib="torch")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if direction == "bwd":
        for x in (q, k, v):
            x.requires_grad_()
        with sdpa_kernel(backend):
            out = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
            dout = torch.randn_like(out)
            # retain_graph: the one forward's graph serves every timed backward.
            return time_fn(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), lib="torch")
    # Transposed views of (B,S,H,D) tensors: how flash-attn-layout users call SDPA.
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    fn = lambda: sdpa(qt, kt, vt, is_causal=causal)
    with torch.no_grad(), sdpa_kernel(backend):
        ms = time_fn(fn, lib="torch")
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


def run_one(impl, dtype, headdim, seqlen, causal, bwd=True):
    batch, nheads = max(1, TOKENS // seqlen), HIDDEN // headdim
    row = {"impl": impl, "dtype": dtype, "D": headdim, "causal": causal, "seqlen": seqlen,
           "batch": batch, "nheads": nheads, "fwd_ms": None, "fwd_tflops": None, "bwd_ms": None,
           "bwd_tflops": None, "extra_mib": None, "out_lse_mib": None, "config": "", "error": "",
           "bwd_error": ""}
    measure = {"cupyflash": measure_cupyflash, "cupyflash-det": measure_cupyflash,
               "cupy-naive": measure_naive}.get(impl, measure_torch)
    flops = attn_flops(batch, nheads, seqlen, seqlen, headdim, causal)
    directions = ([] if impl in BWD_ONLY else ["fwd"]) + (["bwd"] if bwd else [])
    for direction in directions:
        free_memory()  # so neither the last shape's nor the forward's buffers crowd this measurement
        try:
            ms = measure(row, dtype, causal, direction)
            if ms is None:
                return None
            _fill_timing(row, direction, ms, flops * (BWD_FLOP_FACTOR if direction == "bwd" else 1))
        except Exception as e:  # one bad impl/shape must not end the run
            # Both cupy's and torch's OOM errors have OutOfMemoryError in their class name.
            row[ERROR_KEYS[direction]] = "OOM" if "OutOfMemory" in type(e).__name__ else str(e).strip()[:40]
            print(f"error: {impl} {direction} {dtype} D={headdim} S={seqlen} causal={causal}: "
                  f"{type(e).__name__}: {e}", flush=True)
    return row


def free_memory():
    gc.collect()
    import cupy
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


_ERROR_CELLS = {f"{d}_ms": e for d, e in ERROR_KEYS.items()}  # a failed timing shows its error there


def format_cell(row, key, fmt):
    err = row.get(_ERROR_CELLS.get(key), "")
    return err.replace("|", "/") if err else fmt(row.get(key))


def markdown_table(rows):
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(format_cell(r, k, f) for _, k, f in COLUMNS) + " |" for r in rows]
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


def header_lines():
    import cupy
    p = cupy.cuda.runtime.getDeviceProperties(0)
    lines = [f"device: {p['name'].decode()}, compute capability {p['major']}.{p['minor']}, "
             f"{p['multiProcessorCount']} SMs", f"cupy: {cupy.__version__}"]
    try:
        import torch
        lines.append(f"torch: {torch.__version__}")
    except ImportError:
        pass
    return lines + [f"date: {datetime.date.today()}", FLOP_NOTE]


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cupyflash.bench", description=__doc__.splitlines()[0])
    p.add_argument("--headdim", type=int, nargs="+", default=[64, 128])
    p.add_argument("--seqlen", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--dtype", nargs="+", choices=["float16", "bfloat16"], default=["float16", "bfloat16"])
    p.add_argument("--causal", choices=["both", "true", "false"], default="both")
    p.add_argument("--impls", nargs="+", choices=ALL_IMPLS, default=list(ALL_IMPLS))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: headdim 128, seqlen 2048 and 8192 (overrides --headdim/--seqlen)")
    p.add_argument("--no-bwd", action="store_true", help="time the forward only (drops cupyflash-det)")
    p.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as markdown")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.headdim, args.seqlen = [128], [2048, 8192]
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


def main(argv=None):
    args = parse_args(argv)
    head = header_lines()
    print("\n".join(head), flush=True)
    _check_support(args)
    rows = []
    for d, s, causal, dt, impl in itertools.product(
            args.headdim, args.seqlen, args.causals, args.dtype, args.impls):
        row = run_one(impl, dt, d, s, causal, bwd=not args.no_bwd)
        if row is not None:
            rows.append(row)
            cells = ((h, format_cell(row, k, f)) for h, k, f in COLUMNS)
            print("  ".join(f"{h}={c}" for h, c in cells if c != ""), flush=True)
    table, speed = markdown_table(rows), speedup_lines(rows)
    report = head + [""] + table + ["", "speedup of cupyflash (TFLOP/s ratio):"] + speed
    print("\n" + "\n".join(report), flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(report) + "\n")
    if args.csv:
        keys = [k for _, k, _ in COLUMNS] + ["error", "bwd_error"]
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
