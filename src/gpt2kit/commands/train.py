"""`gpt2kit train`: pretrain or fine-tune; configured by YAML + dotted overrides (see docs/CONFIG.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 40


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `train` and `finetune` share (everything else is a --SECTION.FIELD config override)."""
    p.add_argument("--config", help="YAML file with model/data/optim/train/finetune sections, or a shipped preset "
                   "by name (debug, cpu-small, speedrun-cpu, gpt2-pretrain, gpt2-finetune; `gpt2kit configs` lists them)")
    p.add_argument("--data", nargs="+", help="prepared data dir, or sources: files, dirs, jsonl/csv/parquet, "
                   "a dataset name, stdlib")
    p.add_argument("--tokenizer", help="gpt2, a tokenizer dir or tokenizer.json (default: the data's or init's)")
    p.add_argument("--init", help="start from these weights: run dir, checkpoint, Hugging Face dir or hub name")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", help="'auto' (the run's latest complete checkpoint, if any) or a checkpoint dir")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start over")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gpt2kit.config import fields_help

    p = sub.add_parser(
        "train",
        help="pretrain or fine-tune a GPT-2",
        description="Train a GPT-2. Any config field can be set as --SECTION.FIELD VALUE "
        "(e.g. --optim.lr 3e-4 --model.n_layer 6 --train.max_steps 1000); see docs/CONFIG.md.",
        epilog="example: gpt2kit train --data stdlib --model.preset mini --out runs/stdlib\n\n" + fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(p)
    p.set_defaults(func=run, accepts_overrides=True)


def resolve_config(args: argparse.Namespace, defaults: dict | None = None):
    """Defaults (`defaults`: the command's own, dotted) < the run's saved config (when resuming) < --config
    file < flags and dotted overrides."""
    from gpt2kit.config import build_config, load_yaml, parse_overrides

    overrides = parse_overrides(args.overrides or [])
    if args.data:
        overrides["data.sources"] = list(args.data)
    if args.tokenizer:
        overrides["data.tokenizer"] = args.tokenizer
    if args.init:
        overrides["model.init"] = args.init
    from gpt2kit.rundir import is_run_dir

    saved = Path(args.out) / "config.yaml"
    if args.resume and saved.exists() and is_run_dir(Path(args.out)):  # a user's own config.yaml is not a run's
        base = build_config(load_yaml(saved))
    else:
        base = build_config(None, defaults) if defaults else None
    file_values = load_yaml(args.config) if args.config else None
    return build_config(file_values, overrides, base=base)


def run(args: argparse.Namespace) -> int:
    from gpt2kit.errors import set_flag_style

    set_flag_style("config")
    cfg = resolve_config(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from gpt2kit.train import train

    return train(cfg, args.out, resume=args.resume, overwrite=args.overwrite).exit_code
