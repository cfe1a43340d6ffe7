"""`gpt2kit prepare --data SRC... --tokenizer TOK --out DIR`: tokenize a corpus into token shards."""

from __future__ import annotations

import argparse
import json

ORDER = 30


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gpt2kit.sources import add_source_args

    p = sub.add_parser("prepare", help="tokenize a corpus into uint16/uint32 token shards for training",
                       description="Tokenize documents (each followed by EOS) into train/val token shards + meta.json.")
    add_source_args(p)
    p.add_argument("--tokenizer", default="gpt2", help="gpt2, a tokenizer directory/tokenizer.json, or a hub name")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents for validation")
    p.add_argument("--workers", type=int, help="encoding processes (default: all cores)")
    p.add_argument("--block-size", type=int,
                   help="fail now if the training split cannot fill one block, and hold out at least one block "
                        "(+1 token) for validation when --val-fraction > 0")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file")
    p.add_argument("--force", action="store_true", help="prepare again even if --out is up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print meta.json to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gpt2kit.prepare import prepare
    from gpt2kit.sources import open_sources, source_options
    from gpt2kit.tokenizer import load_tokenizer

    open_sources(args.data, **source_options(args))  # a mistyped path fails before the tokenizer loads
    tokenizer = load_tokenizer(args.tokenizer)
    meta = prepare(args.data, tokenizer, args.out, val_fraction=args.val_fraction, workers=args.workers,
                   block_size=args.block_size, min_val_tokens=args.block_size + 1 if args.block_size else None,
                   shard_tokens=args.shard_tokens, force=args.force, progress=not args.quiet, **source_options(args))
    if args.json:
        print(json.dumps(meta, indent=2))
    return 0
