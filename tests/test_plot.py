"""bench --plot (cupyflash._plot) on a small CSV written by bench's own writer; without a GPU. The drawing needs
matplotlib (skipped without it); reading the CSV and the errors do not."""
import os
import subprocess
import sys

import pytest

from cupyflash import _plot, bench


def _rows():
    rows = []
    for impl, d, causal, seqlen in ((i, d, c, s) for i in ("cupyflash", "torch-flash") for d in (64, 128)
                                    for c in (False, True) for s in (512, 2048, 1024)):
        row = bench.new_row(impl, "bfloat16", d, seqlen, causal)
        bench._fill_timing(row, "fwd", 1.0, 1e12 * seqlen / 1024)
        if not (impl == "torch-flash" and seqlen == 2048):  # a failed timing leaves its cell empty
            bench._fill_timing(row, "bwd", 2.0, 2e12)
        rows.append(row)
    return rows


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "bench.csv"
    bench.write_csv(path, _rows())
    return path


def test_points_by_dtype_direction_panel_and_impl(csv_path):
    points = _plot.read_points(csv_path)
    assert set(points) == {("bfloat16", "fwd"), ("bfloat16", "bwd")}
    assert set(points["bfloat16", "fwd"]) == {(64, False), (64, True), (128, False), (128, True)}
    fwd = points["bfloat16", "fwd"][128, True]["cupyflash"]
    assert [s for s, _ in fwd] == [512, 1024, 2048] and fwd[0][1] == pytest.approx(500)
    assert [s for s, _ in points["bfloat16", "bwd"][64, False]["torch-flash"]] == [512, 1024]


def test_a_csv_of_another_mode_is_refused(tmp_path):
    path = tmp_path / "overhead.csv"
    path.write_text("impl,dtype,direction,wall_us\ncupyflash,bfloat16,fwd,15.0\n")
    with pytest.raises(_plot.PlotError, match="lacks the columns D, causal, seqlen"):
        _plot.read_points(path)


def test_pngs_are_written(csv_path, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot draws with matplotlib (pip install matplotlib)")
    bench.main(["--plot", str(csv_path), "--out", str(tmp_path / "plots")])
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["tflops-bfloat16-bwd.png", "tflops-bfloat16-fwd.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_without_matplotlib_one_line_and_status_2(csv_path, tmp_path):
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(bench.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), root]))
    done = subprocess.run([sys.executable, "-m", "cupyflash", "bench", "--plot", str(csv_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not done.stdout
    assert done.stderr == ("cupyflash bench --plot: --plot needs matplotlib: pip install matplotlib (or the extra: "
                           "pip install 'cupyflash[plot]')\n")
