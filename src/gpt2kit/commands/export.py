"""`gpt2kit export --model SRC --out DIR`: write a Hugging Face GPT-2 directory."""

from __future__ import annotations

import argparse
import sys

ORDER = 80


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to Hugging Face format",
        description="Write a directory that transformers.AutoModelForCausalLM.from_pretrained and "
        "pipeline('text-generation') load, with the tokenizer when the source has one.",
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint dir, Hugging Face dir or hub name")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gpt2kit.checkpoint import load_model, tokenizer_source
    from gpt2kit.hf import export
    from gpt2kit.model import model_size

    model = load_model(args.model)
    tok_src = tokenizer_source(args.model)
    tokenizer = None
    if tok_src is not None:
        from gpt2kit.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tok_src)
        if tokenizer.vocab_size > model.config.vocab_size:
            from gpt2kit.errors import UserError

            raise UserError(f"the tokenizer at {tok_src} has {tokenizer.vocab_size} ids but the model only "
                            f"{model.config.vocab_size}; they do not belong together")
    out = export(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite, source=args.model)
    extra = " with tokenizer" if tokenizer is not None else " (no tokenizer found next to the model)"
    print(f"exported {model_size(model)} parameters to {out}{extra}", file=sys.stderr)
    return 0
