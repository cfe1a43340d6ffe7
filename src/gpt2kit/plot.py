"""Loss, validation loss and learning-rate curves of one or several runs, into one PNG.

Reads RUN/metrics.jsonl (CONTRACTS.md): training rows carry `loss` and `lr`, evaluation rows
`val_loss`. Uses matplotlib's headless Agg backend, so it works on servers without a display.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from gpt2kit.errors import UserError


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of RUN/metrics.jsonl; a torn last line (a run still writing) is skipped."""
    path = Path(run_dir).expanduser() / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl; pass a run directory written by `gpt2kit train`")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def series(rows: Sequence[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(xs, ys) of the rows that have `key`; a step logged twice (after a resume) keeps its last value.

    Evaluation rows have no `tokens`: they take the token count of the training row of their step."""
    tokens_at = {r["step"]: r["tokens"] for r in rows if r.get("tokens") is not None}
    points = {}
    for r in rows:
        xv = r.get(x) if x != "tokens" else r.get("tokens", tokens_at.get(r["step"]))
        if r.get(key) is not None and xv is not None:
            points[xv] = r[key]
    xs = sorted(points)
    return xs, [points[v] for v in xs]


def plot_runs(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    x: str = "step",
    log_y: bool = False,
    smooth: float = 0.0,
    labels: Sequence[str] | None = None,
) -> Path:
    """Write loss / val_loss (left) and lr (right) against `x` ("step" or "tokens") to `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not 0.0 <= smooth < 1.0:
        raise UserError(f"--smooth must be in [0, 1), got {smooth}")
    if x not in ("step", "tokens"):
        raise UserError(f"--x must be step or tokens, got {x!r}")
    out = check_image_path(out)
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    labels = list(labels) if labels else [_label(d) for d, _ in runs]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    drawn = 0
    for i, ((_, rows), label) in enumerate(zip(runs, labels)):
        color = f"C{i % 10}"
        xs, ys = series(rows, "loss", x)
        if xs:
            ax_loss.plot(xs, ema(ys, smooth), color=color, lw=1.2, label=f"{label} train")
        xs, ys = series(rows, "val_loss", x)
        if xs:
            ax_loss.plot(xs, ys, color=color, lw=1.5, ls="--", marker="o", ms=3, label=f"{label} val")
        xs, ys = series(rows, "lr", x)
        if xs:
            ax_lr.plot(xs, ys, color=color, lw=1.2, label=label)
        drawn += bool(xs) or bool(series(rows, "val_loss", x)[0])
    if not drawn:
        plt.close(fig)
        raise UserError("no loss, val_loss or lr values in the metrics of " + ", ".join(map(str, run_dirs)))
    xlabel = "optimizer step" if x == "step" else "tokens"
    ax_loss.set(xlabel=xlabel, ylabel="loss (nats/token)", title="loss")
    if log_y:
        from matplotlib.ticker import ScalarFormatter

        ax_loss.set_yscale("log")
        for axis in (ax_loss.yaxis,):  # plain numbers, not 4.2 x 10^0
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(ScalarFormatter())
    ax_lr.set(xlabel=xlabel, ylabel="learning rate", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)  # like every command's --out: missing folders are made
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def check_image_path(out: str | os.PathLike) -> Path:
    """`out` as a Path, or a UserError when matplotlib cannot write that kind of file (checked before drawing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; pass an image file such as {out / 'loss.png'}")
    kinds = FigureCanvasAgg.get_supported_filetypes()
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in kinds:
        what = f".{suffix} files" if suffix else "a file without an extension"
        raise UserError(f"--out {out}: matplotlib cannot write {what}; end the name in .png, .svg or .pdf "
                        f"(or {', '.join(sorted(kinds))})")
    return out


def ema(values: Sequence[float], alpha: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard-style smoothing); alpha 0 = raw."""
    if alpha <= 0:
        return list(values)
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha**i))
    return out


def _label(run_dir: Path) -> str:
    return run_dir.resolve().name or str(run_dir)
