"""`gpt2kit train`: pretrain or fine-tune; configured by YAML + dotted overrides (see docs/CONFIG.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 40


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain or fine-tune a GPT-2",
        description="Train a GPT-2. Any config field can be set as --SECTION.FIELD VALUE "
        "(e.g. --optim.lr 3e-4 --model.n_layer 6 --train.max_steps 1000); see docs/CONFIG.md.",
        epilog="example: gpt2kit train --init gpt2 --data my_jokes.txt --out runs/jokes",
    )
    p.add_argument("--config", help="YAML file with model/data/optim/train sections (e.g. configs/debug.yaml)")
    p.add_argument("--data", nargs="+", help="prepared data dir, or sources: files, dirs, jsonl/csv/parquet, "
                   "a dataset name, stdlib")
    p.add_argument("--tokenizer", help="gpt2, a tokenizer dir or tokenizer.json (default: the data's or init's)")
    p.add_argument("--init", help="start from these weights: run dir, checkpoint, Hugging Face dir or hub name")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", help="'auto' (the run's latest complete checkpoint, if any) or a checkpoint dir")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start over")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run, accepts_overrides=True)


def resolve_config(args: argparse.Namespace):
    """Defaults < the run's saved config (when resuming) < --config file < flags and dotted overrides."""
    from gpt2kit.config import build_config, load_yaml, parse_overrides

    overrides = parse_overrides(args.overrides or [])
    if args.data:
        overrides["data.sources"] = list(args.data)
    if args.tokenizer:
        overrides["data.tokenizer"] = args.tokenizer
    if args.init:
        overrides["model.init"] = args.init
    base = None
    saved = Path(args.out) / "config.yaml"
    if args.resume and saved.exists():
        base = build_config(load_yaml(saved))
    file_values = load_yaml(args.config) if args.config else None
    return build_config(file_values, overrides, base=base)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from gpt2kit.train import train

    return train(cfg, args.out, resume=args.resume, overwrite=args.overwrite).exit_code
