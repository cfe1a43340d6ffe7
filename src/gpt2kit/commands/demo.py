"""`gpt2kit demo`: tokenizer, data, training, evaluation, completions and export on the stdlib."""

from __future__ import annotations

import argparse

ORDER = 10


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small GPT-2 on the Python standard library, end to end (~10 min on 2 cores)",
        description="The whole pipeline on the embedded corpus (this Python's standard library): train a "
        "tokenizer, prepare shards, train a GPT-2 from scratch for a bounded time, evaluate, write code "
        "completions, export to Hugging Face format and load it back with transformers.",
    )
    p.add_argument("--out", default="runs/demo", help="where everything goes (default: runs/demo)")
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget (default: 5)")
    p.add_argument("--max-steps", type=int, help="train exactly this many steps instead of a time budget")
    p.add_argument("--preset", default="mini", help="model preset (default: mini, 4 layers x 128)")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary (default: 4096)")
    p.add_argument("--block-size", type=int, default=256, help="context length (default: 256)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default: 16)")
    p.add_argument("--limit", type=int, help="use only the first N stdlib modules (quick trials)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="default: auto")
    p.add_argument("--max-new-tokens", type=int, default=64, help="completion length (default: 64)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gpt2kit.demo import run_demo

    summary = run_demo(out=args.out, minutes=args.minutes, max_steps=args.max_steps, preset=args.preset,
             vocab_size=args.vocab_size, block_size=args.block_size, batch_size=args.batch_size,
             limit=args.limit, precision=args.precision, max_new_tokens=args.max_new_tokens)
    return summary.get("exit_code", 0)
