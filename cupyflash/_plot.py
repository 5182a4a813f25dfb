"""``python -m cupyflash.bench --plot CSV``: TFLOP/s against sequence length from a CSV of the default mode
(``bench --csv``), one PNG per dtype and direction, a panel per head dim and causal, a line per implementation.
matplotlib is imported only here (the ``plot`` extra), so the benchmark itself never needs it."""
from __future__ import annotations

import csv
from pathlib import Path

NEEDED = ("impl", "dtype", "D", "causal", "seqlen", "fwd_tflops", "bwd_tflops")
DIRECTIONS = {"fwd": "forward", "bwd": "backward"}


class PlotError(Exception):
    """A CSV that is not the default mode's, or matplotlib missing: the message says which."""


def read_points(path) -> dict:
    """{(dtype, direction): {(D, causal): {impl: [(seqlen, TFLOP/s), ...] sorted}}}; failed timings (empty cells)
    are left out."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in NEEDED if c not in (reader.fieldnames or ())]
        if missing:
            raise PlotError(f"{path} lacks the columns {', '.join(missing)}: --plot reads the CSV of the default "
                            "mode (python -m cupyflash.bench --csv PATH)")
        rows = list(reader)
    points = {}
    for row in rows:
        for direction in DIRECTIONS:
            if row[f"{direction}_tflops"]:
                panel = points.setdefault((row["dtype"], direction), {}).setdefault(
                    (int(row["D"]), row["causal"] == "True"), {})
                panel.setdefault(row["impl"], []).append((int(row["seqlen"]), float(row[f"{direction}_tflops"])))
    for panels in points.values():
        for lines in panels.values():
            for line in lines.values():
                line.sort()
    return points


def plot_csv(path, out_dir=None) -> list[Path]:
    """Write the PNGs into ``out_dir`` (default: the CSV's folder); return their paths."""
    try:
        import matplotlib
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install matplotlib (or the extra: pip install "
                        "'cupyflash[plot]')") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    points = read_points(path)
    if not points:
        raise PlotError(f"{path} holds no timings to plot")
    out_dir = Path(out_dir) if out_dir else Path(path).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (dtype, direction), panels in sorted(points.items()):
        head_dims = sorted({d for d, _ in panels})
        causals = sorted({c for _, c in panels})
        fig, axes = plt.subplots(len(causals), len(head_dims), squeeze=False, sharey=True,
                                 figsize=(4.5 * len(head_dims), 3.5 * len(causals)))
        for (i, causal), (j, d) in ((ic, jd) for ic in enumerate(causals) for jd in enumerate(head_dims)):
            ax = axes[i][j]
            lines = panels.get((d, causal), {})
            for impl, line in sorted(lines.items()):
                ax.plot([s for s, _ in line], [t for _, t in line], marker="o", label=impl)
            ax.set_xscale("log", base=2)
            seqlens = sorted({s for line in lines.values() for s, _ in line})
            ax.set_xticks(seqlens, [str(s) for s in seqlens])  # the measured lengths, not powers of 2
            ax.minorticks_off()
            ax.set_title(f"head dim {d}, {'causal' if causal else 'not causal'}")
            ax.set_xlabel("seqlen")
            ax.set_ylabel("TFLOP/s")
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(fontsize="small")
        fig.suptitle(f"{DIRECTIONS[direction]}, {dtype} (from {Path(path).name})")
        fig.tight_layout()
        target = out_dir / f"tflops-{dtype}-{direction}.png"
        fig.savefig(target, dpi=120)
        plt.close(fig)
        written.append(target)
    return written
