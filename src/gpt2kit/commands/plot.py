"""`gpt2kit plot RUN_DIR...`: loss / val-loss / learning-rate curves into a PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ORDER = 70


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="plot loss and learning-rate curves of runs",
        description="Read RUN/metrics.jsonl of one or several runs and draw training loss, validation "
        "loss and learning rate into one PNG (default: RUN/loss.png for one run, ./loss.png for several).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `gpt2kit train`")
    p.add_argument("--out", help="PNG file to write")
    p.add_argument("--x", default="step", choices=["step", "tokens"], help="x axis (default step)")
    p.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    p.add_argument("--smooth", type=float, default=0.0, help="EMA smoothing of the training loss, 0..0.99")
    p.add_argument("--label", action="append", help="legend label per run, in order (default: directory names)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gpt2kit.errors import UserError
    from gpt2kit.plot import plot_runs

    if args.label and len(args.label) != len(args.runs):
        raise UserError(f"{len(args.label)} --label for {len(args.runs)} runs; give one label per run or none")
    out = args.out or (Path(args.runs[0]) / "loss.png" if len(args.runs) == 1 else Path("loss.png"))
    path = plot_runs(args.runs, out, x=args.x, log_y=args.log_y, smooth=args.smooth, labels=args.label)
    print(f"wrote {path}", file=sys.stderr)
    return 0
