"""`gpt2kit info`: a model's configuration and size, from a preset (instant, on `meta`) or a source."""

from __future__ import annotations

import argparse
import json

ORDER = 90


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a model's configuration and parameter count")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a model preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, mini, small")
    g.add_argument("--model", help="run dir, checkpoint dir, Hugging Face dir or hub name")
    p.add_argument("--vocab-size", type=int, help="override the preset's vocabulary size")
    p.add_argument("--json", action="store_true", help="print the config and counts as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from gpt2kit.model import GPT, GPTConfig, model_size, num_params

    if args.preset:
        overrides = {"vocab_size": args.vocab_size} if args.vocab_size is not None else {}
        config = GPTConfig.from_preset(args.preset, **overrides)
        with torch.device("meta"):  # no memory, no init: instant even for gpt2-xl
            model = GPT(config)
        name = args.preset
    else:
        from gpt2kit.checkpoint import load_model

        model = load_model(args.model)
        config, name = model.config, args.model
    if args.json:
        print(json.dumps({"config": config.to_dict(), "parameters": num_params(model),
                          "size": model_size(model)}, indent=2))
    else:
        print(f"{name} size: {model_size(model)} parameters")
    return 0
