"""``evaluate --plot``: top-1 against package size, the chart users pick a compression by.

matplotlib with the Agg backend (no display needed), written to a temporary file and renamed
(:func:`mnv1_coreml.fsutil.atomic_path`), so a reader never sees half a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .fsutil import atomic_path


def plot_accuracy_vs_size(report: Any, path: str | os.PathLike[str]) -> Path:
    """One point per package (top-1 % against MB), PyTorch fp32 top-1 as a dashed line per
    reference model; the x axis is logarithmic when sizes span more than 8x."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = Path(path)
    if out.suffix.lower() != ".png":
        raise UserError(f"--plot writes a PNG; give a path ending in .png, got {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: directory {parent} does not exist")
    points = [(p.size_bytes / 1e6, 100.0 * p.top1 / p.n, p.name) for p in report.packages if p.n]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        if points:
            xs, ys, names = zip(*points, strict=True)
            ax.scatter(xs, ys, color="tab:blue", zorder=3, label="Core ML package")
            for x, y, name in points:
                ax.annotate(name.removesuffix(".mlpackage"), (x, y), textcoords="offset points",
                            xytext=(5, 4), fontsize=8)
            if max(xs) / min(xs) > 8:
                ax.set_xscale("log")
        styles = ["tab:red", "tab:green", "tab:purple", "tab:orange"]
        for i, ref in enumerate(r for r in report.references.values() if r.n):
            ax.axhline(100.0 * ref.top1 / ref.n, color=styles[i % len(styles)], ls="--",
                       label=ref.description)
        ax.margins(x=0.15, y=0.1)  # room for the point labels
        ax.set_xlabel("package size (MB)")
        ax.set_ylabel("top-1 (%)")
        shown = report.images_evaluated
        ax.set_title(f"top-1 vs package size ({shown} images, {report.layout} layout)",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        if points or report.references:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        with atomic_path(out, force=True) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out
