"""`gpt2kit generate --model SRC --prompt TEXT`: complete prompts, streaming text to stdout."""

from __future__ import annotations

import argparse
import json
import sys

from gpt2kit.commands import add_int8_flag

ORDER = 50


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a model",
        description="Complete prompts given with --prompt, --prompt-file (one per line) or stdin. "
        "A single completion streams to stdout as it is generated; with --json, one JSON object per "
        "completion.",
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint dir, Hugging Face dir or hub name")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several); default: stdin")
    p.add_argument("--prompt-file", help="a file with one prompt per line")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per completion (default 128)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this mass")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)")
    p.add_argument("--num-samples", type=int, default=1, help="completions per prompt (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same samples")
    p.add_argument("--stop", action="append", default=[], help="a string that ends a completion (repeatable)")
    p.add_argument("--batch-size", type=int, default=16, help="completions generated together (default 16)")
    p.add_argument("--prompt-lookup", type=int, default=None, metavar="K",
                   help="greedy, one completion: draft up to K tokens per step by prompt lookup (same text, "
                   "faster on repetitive text; default 10, 0 = off)")
    p.add_argument("--tokenizer", help="tokenizer to use when none is saved with the model")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    add_int8_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per completion")
    p.add_argument("--template", help="write each prompt into this template first, e.g. 'Q: {prompt}\\nA:' "
                   "(default: the run's data.prompt_template when it was trained on prompt/completion pairs)")
    p.add_argument("--no-template", action="store_true", help="use the prompts as they are")
    p.set_defaults(func=run)


def prompt_template(args: argparse.Namespace) -> str | None:
    """--template, else the template a prompt/completion run was trained with (from its checkpoint's config)."""
    if args.no_template:
        return None
    if args.template is not None:
        return args.template
    from gpt2kit.checkpoint import run_config

    cfg = run_config(args.model)
    if cfg is not None and cfg.data.format == "prompt_completion":
        return cfg.data.prompt_template
    return None


def read_prompts(args: argparse.Namespace) -> list[str]:
    from gpt2kit.errors import UserError, require_path

    prompts = list(args.prompt or [])
    if args.prompt_file:
        path = require_path(args.prompt_file, "prompt file")
        if not path.is_file():
            raise UserError(f"--prompt-file {path} is not a file; pass a text file with one prompt per line")
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise UserError(f"--prompt-file {path} is not UTF-8 text") from None
        if not lines:
            raise UserError(f"--prompt-file {path} has no prompts (one non-empty line per prompt)")
        prompts += lines
    if not prompts:
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError("no prompt given; pass --prompt TEXT, --prompt-file FILE, or pipe text on stdin")
        text = sys.stdin.read()
        prompts = [text[:-1] if text.endswith("\n") else text]  # `echo` adds a newline the user did not mean
    return prompts


def run(args: argparse.Namespace) -> int:
    from gpt2kit.errors import UserError
    from gpt2kit.generate import check_sampling, generate_text, load_model_and_tokenizer

    # Check cheap things before loading a model.
    check_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    for flag in ("max_new_tokens", "num_samples", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.prompt_lookup is not None and args.prompt_lookup < 0:
        raise UserError(f"--prompt-lookup must be >= 0 (0 = off), got {args.prompt_lookup}")
    prompts = read_prompts(args)
    template = prompt_template(args)
    if template is not None:
        from gpt2kit.data import apply_template

        prompts = [apply_template(template, p) for p in prompts]
        if template != "{prompt}":
            print(f"prompt template: {template!r} (--no-template to turn it off)", file=sys.stderr)
    model, tok = load_model_and_tokenizer(args.model, args.tokenizer, args.device, int8=args.int8)
    if tok.eos_id is not None and any(not tok.encode(p) for p in prompts):
        # GPT-2's convention for unconditional samples; said aloud, so an empty $VAR is not a silent surprise
        print(f"note: an empty prompt has no token to continue; generating from {tok.eos_token or 'EOS'} "
              "(the start of a new document)", file=sys.stderr)
    out = sys.stdout
    single = len(prompts) * args.num_samples == 1 and not args.json

    def stream(row: int, piece: str) -> None:
        out.write(piece)
        out.flush()

    if single:
        out.write(prompts[0])
        out.flush()
    completions = generate_text(
        model, tok, prompts, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, num_samples=args.num_samples,
        seed=args.seed, stop=args.stop, stream=stream if single else None, batch_size=args.batch_size,
        prompt_lookup=args.prompt_lookup,
    )
    for i, c in enumerate(completions):
        if args.json:
            row = {"prompt": prompts[c.prompt_index], "sample": c.sample_index, "completion": c.text,
                   "tokens": len(c.tokens), "finish_reason": c.finish_reason}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif single:
            out.write("\n")
        else:
            if i:
                out.write("-" * 40 + "\n")
            out.write(prompts[c.prompt_index] + c.text + "\n")
    out.flush()
    return 0
