"""`gpt2kit sweep`: hyper-parameter search over config fields, each trial a short `train` run (optuna)."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 47

SPACE_EXAMPLE = """\
space file (dotted config fields -> distributions):
  optim.lr: {type: loguniform, low: 1e-4, high: 1e-2}
  optim.warmup_steps: {type: uniform, low: 0, high: 50}   # an integer field samples integers
  model.n_layer: {type: int, low: 2, high: 4}
  train.batch_size: {type: choice, values: [4, 8]}       # or just [4, 8]

DIR: study.db (the study: run the same command again to continue it), trials/trial-0000/ ... (run dirs),
results.md + results.csv (lowest validation loss first), importance.png, best.yaml
(gpt2kit train --config DIR/best.yaml --out RUN). docs/SWEEP.md has more."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="search hyper-parameters: short train runs over a space of config values",
        description="Search config values (learning rate, batch size, epochs, model shape, ...) with optuna: "
        "each trial is a real short `gpt2kit train` run in DIR/trials/, hopeless trials are pruned on "
        "validation loss (median pruner), and the study lives in DIR/study.db, so running the same command "
        "again continues where it stopped. Trials run one after another, or one per GPU when several are "
        "visible. Any config field can be set for the base as --SECTION.FIELD VALUE.",
        epilog="example: gpt2kit sweep --config debug --data stdlib --space space.yaml --trials 8 --out sweeps/lr\n\n"
        + SPACE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="base YAML config (or a shipped preset name) every trial starts from")
    p.add_argument("--space", required=True, help="YAML file: dotted config fields -> distributions")
    p.add_argument("--trials", type=int, default=20, help="finished trials wanted in total, counting those of "
                   "earlier runs of this sweep (default 20)")
    p.add_argument("--out", required=True, help="sweep directory (created, or continued)")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid"],
                   help="tpe (default), random, or grid (every combination of choices / integer ranges, in order)")
    p.add_argument("--minutes", type=float, help="time budget: no new trial starts after this many minutes")
    p.add_argument("--finetune", action="store_true",
                   help="the base is `gpt2kit finetune`'s defaults (3 epochs, lr 5e-5, ...); needs --init")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (the trials' own seed is train.seed)")
    p.add_argument("--no-prune", action="store_true", help="run every trial to its end")
    p.add_argument("--data", nargs="+", help="prepared data dir, or sources (as for train)")
    p.add_argument("--tokenizer", help="gpt2, a tokenizer dir or tokenizer.json (as for train)")
    p.add_argument("--init", help="start every trial from these weights (as for train)")
    p.set_defaults(func=run, accepts_overrides=True)


def base_config(args: argparse.Namespace):
    """The config every trial starts from: train's resolution (or finetune's, with its defaults)."""
    from gpt2kit.commands.finetune import resolve_finetune_config
    from gpt2kit.commands.train import resolve_config
    from gpt2kit.errors import UserError

    ns = argparse.Namespace(config=args.config, data=args.data, tokenizer=args.tokenizer, init=args.init,
                            out=args.out, resume=None, overrides=list(args.overrides or []), task=None)
    if not args.finetune:
        return resolve_config(ns)
    cfg = resolve_finetune_config(ns)
    if not cfg.model.init:
        raise UserError("sweep --finetune needs a model to start from: --init gpt2, a Hugging Face model "
                        "directory, or a gpt2kit run (or model.init in --config)")
    return cfg


def run(args: argparse.Namespace) -> int:
    from gpt2kit.errors import UserError, set_flag_style

    set_flag_style("config")
    if args.trials < 1:
        raise UserError(f"--trials must be at least 1, got {args.trials}")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError("gpt2kit sweep needs optuna: pip install 'gpt2kit[sweep]'") from None
    from gpt2kit.sweep import SweepSettings, load_space, run_sweep

    base = base_config(args)
    space = load_space(args.space, base)
    settings = SweepSettings(base, space, args.trials, Path(args.out), sampler=args.sampler, seed=args.seed,
                             minutes=args.minutes, prune=not args.no_prune)
    return run_sweep(settings)
