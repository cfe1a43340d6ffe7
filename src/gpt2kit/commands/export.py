"""`gpt2kit export --model SRC --out DIR [--push-to-hub ORG/NAME]`: write (and share) a Hugging Face GPT-2 directory."""

from __future__ import annotations

import argparse
import sys

ORDER = 80


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to Hugging Face format (with a model card), optionally push it to the Hub",
        description="Write a directory that transformers' from_pretrained and pipeline() load: weights, config, "
        "generation_config.json, the tokenizer when the source has one, and README.md, a Hub model card with the "
        "run's facts. --push-to-hub then uploads exactly that directory.",
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint dir, Hugging Face dir or hub name")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--license", help="license in the model card (default: the source model's, else mit)")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", help="then upload the export to this Hub model repository")
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=True,
                     help="create the repository private (default; an existing one keeps its visibility)")
    vis.add_argument("--public", dest="private", action="store_false", help="create the repository public")
    p.add_argument("--revision", help="branch to push to (created if missing; default main)")
    p.add_argument("--commit-message", help="commit message of the upload")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gpt2kit.checkpoint import load_model, tokenizer_source
    from gpt2kit.errors import UserError
    from gpt2kit.hf import check_repo_id, export, push_to_hub
    from gpt2kit.model import model_size

    if args.push_to_hub:
        check_repo_id(args.push_to_hub)  # before anything is written
    elif args.revision or args.commit_message:
        raise UserError("--revision and --commit-message go with --push-to-hub ORG/NAME")
    model = load_model(args.model)
    tok_src = tokenizer_source(args.model)
    tokenizer = None
    if tok_src is not None:
        from gpt2kit.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tok_src)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise UserError(f"the tokenizer at {tok_src} has {tokenizer.vocab_size} ids but the model only "
                            f"{model.config.vocab_size}; they do not belong together")
    out = export(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite, source=args.model,
                 license=args.license, repo_id=args.push_to_hub)
    extra = " with tokenizer" if tokenizer is not None else " (no tokenizer found next to the model)"
    print(f"exported {model_size(model)} parameters to {out}{extra} and a model card ({out / 'README.md'})",
          file=sys.stderr)
    if args.push_to_hub:
        url = push_to_hub(out, args.push_to_hub, private=args.private, revision=args.revision,
                          commit_message=args.commit_message)
        print(f"pushed {out} to https://huggingface.co/{args.push_to_hub} ({url})", file=sys.stderr)
    return 0
