"""`gpt2kit tokenizer train|save|encode|info`: train a byte-level BPE, write one to a folder, or look at what a
tokenizer does."""

from __future__ import annotations

import argparse
import json
import sys

ORDER = 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gpt2kit.sources import add_source_args

    p = sub.add_parser("tokenizer", help="train or inspect a tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    t = tsub.add_parser("train", help="train a GPT-2-style byte-level BPE on a corpus",
                        description="Train a byte-level BPE (EOS <|endoftext|>, pad <|pad|>) and save tokenizer.json.")
    add_source_args(t)
    t.add_argument("--vocab-size", type=int, required=True, help="number of ids, special tokens included")
    t.add_argument("--out", required=True, help="directory for tokenizer.json and its transformers config")
    t.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen at least this often")
    t.add_argument("--heldout-fraction", type=float, default=0.02,
                   help="documents kept out of training to measure compression")
    t.add_argument("--json", action="store_true", help="print the result as JSON to stdout")
    t.set_defaults(func=run_train)

    e = tsub.add_parser("encode", help="print the ids of a text (argument or stdin)")
    e.add_argument("text", nargs="?", help="text to encode (default: stdin)")
    e.add_argument("--tokenizer", default="gpt2", help="gpt2, a tokenizer directory/tokenizer.json, or a hub name")
    e.set_defaults(func=run_encode)

    s = tsub.add_parser("save", help="write a tokenizer's files (what AutoTokenizer loads) to a folder",
                        description="Write tokenizer.json, tokenizer_config.json and special_tokens_map.json, which "
                        "gpt2kit and transformers.AutoTokenizer load; e.g. `gpt2` (offline) into a local model folder.")
    s.add_argument("name", help="gpt2 (offline), a tokenizer dir/tokenizer.json, a run/checkpoint/prepared dir, "
                                "or a hub name")
    s.add_argument("--out", required=True, help="folder to write into (created if missing; other files are kept)")
    s.add_argument("--model-max-length", type=int, default=1024,
                   help="context length of the model it goes with (default 1024, GPT-2's)")
    s.add_argument("--padding-side", choices=("left", "right"),
                   help="pad on this side, with the pad token (EOS when the tokenizer has none); default: no "
                        "padding setting, as GPT-2's own files")
    s.add_argument("--overwrite", action="store_true", help="replace tokenizer files already in --out")
    s.set_defaults(func=run_save)

    i = tsub.add_parser("info", help="vocabulary size, special tokens, hash and engine of a tokenizer")
    i.add_argument("--tokenizer", default="gpt2", help="gpt2, a tokenizer directory/tokenizer.json, or a hub name")
    i.set_defaults(func=run_info)


def run_train(args: argparse.Namespace) -> int:
    from gpt2kit.errors import UserError
    from gpt2kit.prepare import is_val
    from gpt2kit.sources import open_sources, source_options
    from gpt2kit.tokenizer import HELDOUT_SALT, bytes_per_token, train_tokenizer

    if not 0 <= args.heldout_fraction < 1:
        raise UserError(f"--heldout-fraction must be in [0, 1), got {args.heldout_fraction}")
    opts = source_options(args)
    frac = args.heldout_fraction
    tok = train_tokenizer(args.data, args.vocab_size, min_frequency=args.min_frequency, heldout_fraction=frac,
                          show_progress=sys.stderr.isatty(), **opts)
    held = [d.text for d in open_sources(args.data, **opts) if is_val(HELDOUT_SALT + d.key, frac)]
    if not held:  # tiny corpora: measure on the first documents instead (optimistic, and said so)
        held = [d.text for _, d in zip(range(20), open_sources(args.data, **opts))]
        where = "training sample"
    else:
        where = f"{len(held)} held-out documents"
    bpt = bytes_per_token(tok, held)
    tok.save(args.out)
    result = {"out": str(args.out), "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
              "sha256": tok.sha256, "bytes_per_token": round(bpt, 4), "measured_on": where}
    print(f"saved {args.out}/tokenizer.json: {tok.vocab_size} ids, {bpt:.2f} bytes/token on {where}",
          file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def run_save(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpt2kit.errors import UserError
    from gpt2kit.tokenizer import load_tokenizer

    out = Path(args.out).expanduser()
    if args.model_max_length < 1:
        raise UserError(f"--model-max-length must be at least 1, got {args.model_max_length}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    present = [n for n in names if (out / n).exists()]
    if present and not args.overwrite:
        raise UserError(f"{out} already has {', '.join(present)}; pass --overwrite to replace them, or another --out")
    tok = load_tokenizer(args.name)
    tok.save(out, padding_side=args.padding_side, model_max_length=args.model_max_length)
    print(f"saved {args.name} to {out}: {tok.vocab_size} ids, eos {tok.eos_token!r} (id {tok.eos_id}), "
          f"pad {tok.pad_token or (tok.eos_token if args.padding_side else None)!r}", file=sys.stderr)
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from gpt2kit.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    print(json.dumps(tok.encode(text)))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from gpt2kit.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    print(json.dumps({"name": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
                      "special_tokens": tok.special_tokens, "sha256": tok.sha256, "engine": tok.engine}, indent=2))
    return 0
