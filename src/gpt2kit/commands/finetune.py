"""`gpt2kit finetune`: `train` with fine-tuning defaults, for data as people bring it (a text file, a table of
examples, prompt/completion pairs) and a pretrained model (--init)."""

from __future__ import annotations

import argparse

ORDER = 45

# Small data, a pretrained model: a few epochs at a low LR, dropout, an evaluation and a checkpoint per epoch,
# the best one kept, early stopping. One example per sequence (padded), 10% of the examples held out.
DEFAULTS = {
    "model.dropout": "0.1",
    "data.packing": "false",
    "data.sample_by": "auto",
    "data.val_fraction": "0.1",
    "optim.lr": "5e-5",
    "optim.min_lr": "0",
    "optim.warmup_fraction": "0.03",
    "optim.weight_decay": "0.01",
    "train.epochs": "3",
    "train.batch_size": "8",
    "train.eval_every": "0",
    "train.eval_batches": "0",
    "train.ckpt_every": "0",
    "train.keep_last": "1",
    "train.early_stopping": "2",
    "train.log_every": "5",
}
LORA_LR = "2e-4"  # adapters start at zero and have few parameters: they want a higher LR than full fine-tuning


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gpt2kit.commands.train import add_train_arguments
    from gpt2kit.config import fields_help

    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained GPT-2 on your examples (train with fine-tuning defaults)",
        description="Fine-tune a GPT-2 (--init) on a text file (one example per line or paragraph), a table "
        "of examples (--data.text_column), prompt/completion pairs (--data.format prompt_completion), or "
        "labelled texts (--task classify). "
        "Defaults: 3 epochs, lr 5e-5 (2e-4 with --finetune.mode lora), 3% warmup, dropout 0.1, 10% of the "
        "examples held out, evaluation + checkpoint every epoch, early stopping, best checkpoint kept. "
        "Any config field can be set as --SECTION.FIELD VALUE; see docs/CONFIG.md.",
        epilog="example: gpt2kit finetune --init gpt2 --data jokes.txt --out runs/jokes --finetune.mode lora\n\n"
        "finetune's defaults: " + ", ".join(f"{k} {v}" for k, v in DEFAULTS.items()) + "\n\n" + fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(p)
    p.add_argument("--task", choices=["lm", "classify"],
                   help="what is learned: lm = next-token prediction (default); classify = a label per text "
                   "(data.text_column + data.label_column; `gpt2kit predict` then labels new texts)")
    p.set_defaults(func=run, accepts_overrides=True)


def resolve_finetune_config(args: argparse.Namespace):
    """train's resolution with DEFAULTS underneath; an explicit max_steps replaces the default epochs, and LoRA
    gets its own default LR unless one was given."""
    from gpt2kit.commands.train import resolve_config
    from gpt2kit.config import build_config, load_yaml, parse_overrides

    if args.task:
        args.overrides = [*(args.overrides or []), "--train.task", args.task]
    given = dict(parse_overrides(list(args.overrides or [])))
    if args.config:
        for section, values in load_yaml(args.config).items():
            for k in values if isinstance(values, dict) else {}:
                given[f"{section}.{k}"] = values[k]
    defaults = dict(DEFAULTS)
    if "train.max_steps" in given and "train.epochs" not in given:
        defaults["train.epochs"] = "null"
    cfg = resolve_config(args, defaults)
    if cfg.finetune.mode == "lora" and "optim.lr" not in given and not args.resume:
        cfg = build_config(None, {"optim.lr": LORA_LR}, base=cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    from gpt2kit.errors import UserError, set_flag_style

    set_flag_style("config")
    if not args.init and not args.resume:
        raise UserError("finetune needs a model to start from: --init gpt2 (a hub name), a Hugging Face model "
                        "directory, or a gpt2kit run; to train from scratch use `gpt2kit train`")
    cfg = resolve_finetune_config(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from gpt2kit.train import train

    return train(cfg, args.out, resume=args.resume, overwrite=args.overwrite).exit_code
