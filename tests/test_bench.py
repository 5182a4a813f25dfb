"""The benchmark's pure parts (cupyflash.bench): arguments, FLOP counts, variant rows and tables, without a GPU."""
import itertools

import numpy as np
import pytest

from cupyflash import _cli, bench


# --- arguments ----------------------------------------------------------------------------------------------

def test_default_mode_arguments_are_unchanged():
    args = bench.parse_args([])
    assert not args.variants and not args.overhead
    assert args.dtype == ["float16", "bfloat16"]
    assert args.headdim == [64, 128]
    assert args.seqlen == [512, 1024, 2048, 4096, 8192, 16384]
    assert args.causals == [False, True]
    assert args.impls == bench.ALL_IMPLS


@pytest.mark.parametrize("flag", ["--variants", "--overhead", "--decode"])
def test_new_modes_default_to_bf16(flag):
    args = bench.parse_args([flag])
    assert getattr(args, flag[2:])
    assert args.dtype == ["bfloat16"]


def test_variants_takes_the_shared_options():
    args = bench.parse_args(["--variants", "--dtype", "float16", "--headdim", "128", "--causal", "true",
                             "--impls", "cupyflash", "torch-cudnn", "--no-bwd", "--markdown", "v.md"])
    assert (args.dtype, args.headdim, args.causals) == (["float16"], [128], [True])
    assert args.impls == ["cupyflash", "torch-cudnn"] and args.no_bwd and args.markdown == "v.md"
    assert bench.parse_args(["--variants", "--quick"]).headdim == [128]


def test_decode_defaults_to_head_dim_128_and_takes_a_given_one():
    assert bench.parse_args(["--decode"]).headdim == [128]
    assert bench.parse_args(["--decode", "--headdim", "64", "128"]).headdim == [64, 128]
    # the decode shapes: one query, 8-32 heads, 8k-128k keys, batch 1-64
    assert {b for b, _, _ in bench.DECODE_SHAPES} == {1, 4, 16, 64}
    assert all(8 <= h <= 32 and 8192 <= n <= 131072 for _, h, n in bench.DECODE_SHAPES)


def test_overhead_with_outputs():
    args = bench.parse_args(["--overhead", "--csv", "o.csv", "--markdown", "o.md"])
    assert args.overhead and args.csv == "o.csv" and args.markdown == "o.md"


def test_modes_are_exclusive():
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "--overhead"])


# --- FLOP counts --------------------------------------------------------------------------------------------

def brute_force_pairs(seqlen_q, seqlen_k, causal, window):
    """Counts pair by pair from flash-attn's rule: query i sees key j iff
    i + sk - sq - left <= j <= i + sk - sq + right (a -1 side unbounded; causal makes right 0)."""
    left, right = window
    if causal:
        right = 0
    count = 0
    for i, j in itertools.product(range(seqlen_q), range(seqlen_k)):
        diag = i + seqlen_k - seqlen_q
        count += (left < 0 or j >= diag - left) and (right < 0 or j <= diag + right)
    return count


@pytest.mark.parametrize("seqlen_q, seqlen_k", [(1, 1), (1, 17), (17, 1), (17, 17), (5, 23), (23, 5), (64, 97)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [(-1, -1), (0, 0), (3, 0), (0, 3), (3, 2), (-1, 2), (4, -1), (200, 0)])
def test_visible_pairs_matches_a_brute_force_count(seqlen_q, seqlen_k, causal, window):
    assert bench.visible_pairs(seqlen_q, seqlen_k, causal, window) == brute_force_pairs(seqlen_q, seqlen_k,
                                                                                         causal, window)


def test_visible_pairs_closed_forms():
    s = 16384
    assert bench.visible_pairs(s, s) == s * s
    assert bench.visible_pairs(s, s, causal=True) == s * (s + 1) // 2
    # The bench's window row: rows 0..4095 see i + 1 keys, the rest 4097.
    assert bench.visible_pairs(s, s, True, (4096, 0)) == 4096 * 4097 // 2 + (s - 4096) * 4097
    # Bottom-right alignment: with more queries than keys, the first seqlen_q - seqlen_k rows see nothing.
    assert bench.visible_pairs(10, 4, causal=True) == 4 * 5 // 2


def test_attn_flops():
    assert bench.attn_flops(2, 16, 1024, 1024, 128, False) == 4 * 2 * 16 * 1024 * 1024 * 128
    assert bench.attn_flops(2, 16, 1024, 1024, 128, True) == 2 * 2 * 16 * 1024 * 1024 * 128
    assert bench.attn_flops(1, 1, 3, 5, 1, True) == 30  # the halving is the default table's approximation


def test_variant_flops_count_query_heads_and_visible_pairs():
    # Not causal, no window: the default table's count.
    assert bench.variant_flops(8, 16, 2048, 128, False, {}) == bench.attn_flops(8, 16, 2048, 2048, 128, False)
    assert bench.variant_flops(1, 16, 16384, 128, True, {"window_size": (4096, 0)}) == (
        4 * 16 * 128 * bench.visible_pairs(16384, 16384, True, (4096, 0)))
    assert bench.variant_flops(1, 16, 8, 64, True, {"softcap": 30.0}) == 4 * 16 * 64 * 36


def test_alibi_slopes_follow_the_paper():
    slopes = bench.alibi_slopes(8)
    assert slopes.dtype == np.float32
    np.testing.assert_array_equal(slopes, [2.0 ** -(h + 1) for h in range(8)])
    assert bench.alibi_slopes(32)[-1] == 2.0 ** -8


def test_cupyflash_kwargs_of_a_plain_and_a_window_variant():
    assert bench.cupyflash_kwargs({}, 16) == {}
    assert bench.cupyflash_kwargs({"window_size": (4096, 0)}, 16) == {"window_size": (4096, 0)}


# --- the variants' rows ---------------------------------------------------------------------------------------

def test_variant_specs_put_each_variant_after_its_plain_row():
    specs = bench.variant_specs([128, 64], [False, True])
    plain_seen = set()
    for sp in specs:
        shape = (sp["D"], sp["causal"], sp["seqlen"])
        if sp["variant"] == "plain":
            plain_seen.add(shape)
            assert sp["kw"] == {} and sp["nheads_k"] == bench.HIDDEN // sp["D"]
        else:
            assert shape in plain_seen
    keys = [(sp["variant"], sp["D"], sp["causal"], sp["seqlen"]) for sp in specs]
    assert len(keys) == len(set(keys))
    assert [sp["D"] for sp in specs] == sorted((sp["D"] for sp in specs), reverse=True)  # 128 first, as asked
    by = {k: sp for k, sp in zip(keys, specs)}
    assert by[("GQA", 64, True, 8192)]["nheads_k"] == 8 and by[("MQA", 64, False, 2048)]["nheads_k"] == 1
    assert by[("GQA", 128, False, 2048)]["nheads_k"] == 4
    assert by[("window", 128, True, 16384)]["kw"] == {"window_size": (4096, 0)}
    assert by[("softcap", 64, False, 4096)]["kw"] == {"softcap": 30.0}
    assert by[("ALiBi", 128, True, 8192)]["kw"] == {"alibi": True}
    assert by[("dropout", 64, False, 4096)]["kw"] == {"dropout_p": bench.DROPOUT_P}
    assert sum(sp["variant"] != "plain" for sp in specs) == 2 * (8 + 1 + 12)


def test_variant_specs_leave_out_the_window_when_not_causal():
    specs = bench.variant_specs([128], [False])
    assert all(not sp["causal"] for sp in specs)
    assert "window" not in {sp["variant"] for sp in specs}


def fake_row(variant, fwd_ms, bwd_ms, seqlen=16384, causal=True, **extra):
    row = bench.new_row("cupyflash", "bfloat16", 128, seqlen, causal, variant=variant, heads="16/16", **extra)
    row.update(fwd_ms=fwd_ms, bwd_ms=bwd_ms)
    return row


def test_ratios_and_bars():
    rows = [fake_row("plain", 10.0, 20.0), fake_row("window", 4.0, 11.0, variant_kw={"window_size": (4096, 0)}),
            fake_row("plain", 2.0, 5.0, seqlen=4096), fake_row("softcap", 2.1, 6.0, seqlen=4096),
            fake_row("ALiBi", 2.5, None, seqlen=4096)]
    bench.add_plain_ratios(rows)
    assert rows[0]["fwd_ratio"] is None
    assert rows[1]["fwd_ratio"] == pytest.approx(0.4) and rows[1]["bwd_ratio"] == pytest.approx(0.55)
    assert rows[4]["bwd_ratio"] is None
    lines = bench.bar_lines(rows)
    assert len(lines) == 3
    assert "fwd 0.40x, bwd 0.55x" in lines[0] and lines[0].endswith("missed")  # bwd over 0.5
    assert "softcap" in lines[1] and "0.95x" in lines[1] and lines[1].endswith("met")
    assert "ALiBi" in lines[2] and "0.80x" in lines[2] and lines[2].endswith("missed")


def test_float32_bars_ask_highest_for_speed_and_accuracy_and_tf32_for_speed():
    from cupyflash import bench_fp32

    def row(impl, vs_sdpa, err):
        return dict(impl=impl, D=128, seqlen=4096, vs_sdpa=vs_sdpa, out_err=err, dq_err=err)

    sdpa = row("torch-sdpa", 1.0, 3e-7)
    lines = bench_fp32.bar_lines([row("cupyflash", 2.1, 2e-7), row("cupyflash-tf32", 3.1, 1e-4), sdpa,
                                  row("cupyflash", 2.1, 5e-7), row("cupyflash-tf32", 2.9, 1e-4)])
    assert [line.endswith("meets the bar") for line in lines] == [True, True, False, False], lines


# --- tables ---------------------------------------------------------------------------------------------------

def cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def test_markdown_row_of_the_default_table():
    row = bench.new_row("cupyflash", "float16", 128, 2048, True)
    bench._fill_timing(row, "fwd", 0.5, bench.attn_flops(row["batch"], row["nheads"], 2048, 2048, 128, True))
    row.update(bwd_error="OOM | again", config="128x64w4s2", out_lse_mib=48.0)
    header, rule, line = bench.markdown_table([row])
    assert cells(header) == [h for h, _, _ in bench.COLUMNS]
    assert rule.count("---") == len(bench.COLUMNS)
    got = dict(zip(cells(header), cells(line)))
    assert got["impl"] == "cupyflash" and got["batch"] == "8" and got["nheads"] == "16"
    assert got["fwd ms"] == "0.500" and got["fwd TFLOP/s"] == "274.9"
    assert got["bwd ms"] == "OOM / again"  # the error in place of the time; "|" would split the cell
    assert got["bwd TFLOP/s"] == "" and got["extra MiB"] == "" and got["out+lse MiB"] == "48.0"


def test_markdown_row_of_the_variants_table():
    columns = bench.variant_columns(["torch-flash"])
    row = fake_row("GQA", 1.0, 3.0, seqlen=2048, causal=False, fwd_ratio=0.9, bwd_ratio=None)
    row.update({"heads": "16/4", "torch-flash_fwd": "1.200", "torch-flash_bwd": "No available kernel."})
    header, _, line = bench.markdown_table([row], columns)
    got = dict(zip(cells(header), cells(line)))
    assert got["variant"] == "GQA" and got["nheads/nheads_k"] == "16/4" and got["seqlen"] == "2048"
    assert got["fwd time / plain"] == "0.90" and got["bwd time / plain"] == ""
    assert got["torch-flash fwd ms"] == "1.200" and got["torch-flash bwd ms"] == "No available kernel."


def test_markdown_rows_of_the_overhead_table():
    rows = [{"impl": "cupyflash", "dtype": "bfloat16", "direction": "fwd", "wall_us": 12.34, "gpu_us": 12.9,
             "error": ""},
            {"impl": "cupyflash", "dtype": "bfloat16", "direction": "bwd", "wall_us": None, "gpu_us": None,
             "error": "TypeError: nope"},
            {"impl": "torch-sdpa", "dtype": "bfloat16", "direction": "fwd", "wall_us": 30.0, "gpu_us": 31.0,
             "error": ""}]
    for r in rows:
        r["target"] = bench.overhead_target(r)
    header, _, *lines = bench.markdown_table(rows, bench.OVERHEAD_COLUMNS)
    got = [dict(zip(cells(header), cells(line))) for line in lines]
    assert got[0]["µs per call wall"] == "12.3" and got[0]["µs per call GPU"] == "12.9"
    assert got[0]["target wall µs"] == "<= 20 (met)"
    assert got[1]["µs per call wall"] == "TypeError: nope" and got[1]["target wall µs"] == "<= 40"
    assert got[2]["target wall µs"] == ""


# --- each mode's plumbing, with the GPU measurements faked -------------------------------------------------------

@pytest.fixture
def fake_gpu(monkeypatch):
    """Measurements without a GPU: cupyflash takes 1 ms forward and 2 ms backward, times a variant's factor;
    MQA's backward and SDPA's cuDNN backend on GQA fail; torch-flash takes 1.5 ms either way."""
    factor = {"plain": 1.0, "GQA": 0.9, "MQA": 0.8, "window": 0.45, "softcap": 1.05, "ALiBi": 1.2}

    def cupyflash(row, dtype, causal, direction):
        if row.get("variant") == "MQA" and direction == "bwd":
            raise TypeError("flash_attn_backward() got an unexpected keyword")
        return (1.0 if direction == "fwd" else 2.0) * factor[row.get("variant", "plain")]

    def torch(row, dtype, causal, direction):
        if row["impl"] == "torch-cudnn" and row.get("nheads_k", row["nheads"]) != row["nheads"]:
            raise RuntimeError("No available kernel. Aborting execution.")
        return 1.5

    monkeypatch.setattr(bench, "measure_cupyflash", cupyflash)
    monkeypatch.setattr(bench, "measure_torch", torch)
    monkeypatch.setattr(bench, "free_memory", lambda: None)
    monkeypatch.setattr(bench, "header_lines", lambda note: ["device: fake", note])
    monkeypatch.setattr(bench, "_check_support", lambda args: None)
    monkeypatch.setattr(_cli, "require_gpu", lambda prog: None)


def test_variants_mode_end_to_end(fake_gpu, tmp_path, capsys):
    md, csv_path = tmp_path / "v.md", tmp_path / "v.csv"
    rows = bench.main(["--variants", "--headdim", "128", "--impls", "cupyflash", "torch-flash", "torch-cudnn",
                       "--markdown", str(md), "--csv", str(csv_path)])
    assert len(rows) == len(bench.variant_specs([128], [False, True]))
    by = {(r["variant"], r["causal"], r["seqlen"]): r for r in rows}
    gqa, mqa = by[("GQA", True, 2048)], by[("MQA", False, 8192)]
    assert gqa["fwd_ratio"] == pytest.approx(0.9) and gqa["heads"] == "16/4"
    assert gqa["torch-flash_fwd"] == "1.500" and gqa["torch-cudnn_fwd"].startswith("No available kernel")
    assert by[("plain", True, 2048)]["torch-cudnn_bwd"] == "1.500"
    assert mqa["bwd_error"].startswith("flash_attn_backward()") and mqa["bwd_ratio"] is None
    assert "torch-flash_fwd" not in by[("softcap", False, 4096)]  # no SDPA peer for score modifiers
    assert "| softcap | 128 | False | 4096 | 16/16 | 1.050 |" in md.read_text()
    window = by[("window", True, 16384)]
    pairs = bench.visible_pairs(16384, 16384, True, (4096, 0))
    assert window["fwd_tflops"] == pytest.approx(4 * 16 * 128 * pairs / 0.45e-3 / 1e12)
    text = md.read_text()
    assert "None" not in text and "| variant | D | causal |" in text and "bars:" in text and "(bar <= 0.5): met" in text
    assert "ALiBi bfloat16 D=128 causal=False seqlen=4096: fwd throughput 0.83x plain (bar >= 0.9x): missed" in text
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header[:2] == ["variant", "D"] and "torch-cudnn_bwd" in header and "bwd_error" in header
    assert "error: cupyflash MQA bwd" in capsys.readouterr().out


def test_overhead_mode_end_to_end(fake_gpu, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "cupyflash_call", lambda row, dtype, causal, direction: None)
    monkeypatch.setattr(bench, "time_loop", lambda fn, lib="cupy": (15.0, 15.5) if lib == "cupy" else (35.0, 36.0))
    monkeypatch.setattr(bench, "torch_call", lambda *a: (_ for _ in ()).throw(ImportError("No module 'torch'")))
    md = tmp_path / "o.md"
    rows = bench.main(["--overhead", "--markdown", str(md)])
    assert [(r["impl"], r["direction"]) for r in rows] == [
        ("cupyflash", "fwd"), ("cupyflash", "bwd"), ("torch-sdpa", "fwd"), ("torch-sdpa", "bwd")]
    text = md.read_text()
    assert "| cupyflash | bfloat16 | fwd | 15.0 | 15.5 | <= 20 (met) |" in text
    assert "| cupyflash | bfloat16 | bwd | 15.0 | 15.5 | <= 40 (met) |" in text
    assert "| torch-sdpa | bfloat16 | fwd | No module 'torch' |  |  |" in text
    assert [r["impl"] for r in bench.main(["--overhead", "--impls", "cupyflash", "--no-bwd"])] == ["cupyflash"]


def test_default_mode_end_to_end(fake_gpu, tmp_path):
    md = tmp_path / "d.md"
    rows = bench.main(["--quick", "--dtype", "bfloat16", "--causal", "false",
                       "--impls", "cupyflash", "cupyflash-det", "torch-flash", "--markdown", str(md)])
    assert [(r["impl"], r["seqlen"]) for r in rows] == [(i, s) for s in (2048, 8192)
                                                         for i in ("cupyflash", "cupyflash-det", "torch-flash")]
    assert rows[1]["fwd_ms"] is None and rows[1]["bwd_ms"] == 2.0
    text = md.read_text()
    assert bench.FLOP_NOTE in text and "speedup of cupyflash (TFLOP/s ratio):" in text
    assert "- bfloat16 D=128 causal=False seqlen=2048: fwd 1.50x vs torch-flash; bwd 0.75x vs torch-flash, " \
           "1.00x vs cupyflash-det" in text


def test_decode_mode_end_to_end(fake_gpu, monkeypatch, tmp_path):
    import types

    import cupyflash.forward

    kv_bytes = []

    def inputs(batch, keys, nheads, d, dtype, with_torch):
        kv = types.SimpleNamespace(size=batch * keys * nheads * d, itemsize=2)
        kv_bytes.append(2 * kv.size * kv.itemsize)
        return (None, kv, kv), ("q", "k", "v")

    # cupyflash reads at 2400 GB/s, cuDNN at 3000 (K+V bytes / time), the copy runs at 3000
    speed = {"cupy": 2400e6, "torch": 3000e6}
    monkeypatch.setattr(bench, "_decode_inputs", inputs)
    monkeypatch.setattr(bench, "copy_bandwidth", lambda: 3000.0)
    monkeypatch.setattr(bench, "_sdpa_decode", lambda backend, *t: backend)
    monkeypatch.setattr(bench, "time_fn", lambda fn, lib="cupy": kv_bytes[-1] / speed[lib])
    monkeypatch.setattr(cupyflash.forward, "plan_for", lambda q, k, v: types.SimpleNamespace(splits=16, config="c"))
    md = tmp_path / "dec.md"
    rows = bench.main(["--decode", "--impls", "cupyflash", "torch-cudnn", "--markdown", str(md)])
    assert len(rows) == 2 * len(bench.DECODE_SHAPES)
    ours = [r for r in rows if r["impl"] == "cupyflash"]
    assert all(r["gbps"] == pytest.approx(2400) and r["vs_cudnn"] == pytest.approx(0.8) and r["splits"] == "16"
               for r in ours)
    text = md.read_text()
    assert "device copy bandwidth: 3000 GB/s" in text
    assert "- bfloat16 D=128 1 x 8 x 131072: 0.80x cuDNN (bar >= 0.9): missed; 0.80x copy (bar >= 0.7): met" in text
    # 1 x 32 x 8192 x 128 x 2 bytes x 2 = 128 MiB; every shape here reads at least 64 MB
    assert text.count("x copy (bar >= 0.7)") == len(bench.DECODE_SHAPES)
    assert "| 1 x 8 x 131072 | 128 | bfloat16 | 512 | cupyflash |" in text  # rows name their dtype


# --- --varlen ---------------------------------------------------------------------------------------------

def test_varlen_lengths_fill_the_tokens_within_the_range():
    lengths = bench.varlen_lengths(seed=0)
    assert sum(lengths) == bench.TOKENS and all(1 <= n <= bench.VARLEN_MAX_LEN for n in lengths)
    assert bench.varlen_lengths(seed=0) == lengths and bench.varlen_lengths(seed=1) != lengths


def test_useful_flops_count_each_sequence_on_its_own():
    assert bench.useful_flops([3, 5], 2, 8, False) == 4 * 2 * 8 * (9 + 25)
    assert bench.useful_flops([3, 5], 2, 8, True) == 4 * 2 * 8 * (6 + 15)  # n (n + 1) / 2 pairs each


def test_varlen_mode_arguments():
    args = bench.parse_args(["--varlen"])
    assert args.varlen and args.dtype == ["bfloat16"] and args.headdim == [64, 128]
