"""`gpt2kit info [SRC]`: what a run, checkpoint or model is (size, config, tokenizer, training state, files),
or a preset's size (instant, on `meta`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = 90


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise a run or model (size, config, tokenizer, steps, best val, files)",
                       description="Summarise a run directory, a checkpoint, a Hugging Face model directory "
                       "or a hub name; or show a preset's size with --preset.")
    p.add_argument("src", nargs="?", help="run dir, checkpoint dir, Hugging Face dir or hub name")
    p.add_argument("--preset", help="a model preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, mini, small")
    p.add_argument("--model", help="the same as SRC")
    p.add_argument("--vocab-size", type=int, help="override the preset's vocabulary size")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=run)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_summary(src: str) -> dict:
    """The training state of a run or checkpoint: steps, tokens, best/last validation, checkpoints, files."""
    from gpt2kit.checkpoint import complete_checkpoints, find_checkpoint, run_config

    path = Path(src).expanduser()
    out: dict = {}
    if not path.is_dir():
        return out
    run = path if (path / "checkpoints").is_dir() else path.parent.parent if path.parent.name == "checkpoints" else None
    cfg = run_config(src)
    if cfg is not None:
        out["task"] = cfg.train.task
        out["finetune_mode"] = cfg.finetune.mode
        out["data"] = list(cfg.data.sources)
        if cfg.model.init:
            out["init"] = cfg.model.init
    if run is not None:
        ckpts = complete_checkpoints(run / "checkpoints")
        out["checkpoints"] = [c.name for c in ckpts]
        for which in ("latest", "best"):
            c = find_checkpoint(run, which)
            if c is not None:
                out[which] = c.name
        latest = find_checkpoint(run, "latest")
        if latest is not None and (latest / "state.json").is_file():
            state = json.loads((latest / "state.json").read_text())
            out.update(steps=state.get("step"), tokens_seen=state.get("tokens"),
                       best_val_loss=state.get("best_val_loss"), stopped_early=state.get("stopped_early", False))
        metrics = run / "metrics.jsonl"
        if metrics.is_file():
            rows = []
            for line in metrics.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
            evals = [r for r in rows if "val_loss" in r]
            if evals:
                out["last_eval"] = evals[-1]
        out["files"] = {p.name: _human(_size(p)) for p in sorted(run.iterdir()) if not p.name.startswith(".")}
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from gpt2kit.errors import UserError
    from gpt2kit.model import GPT, GPTConfig, model_size, num_params

    src = args.src or args.model
    if bool(src) == bool(args.preset):
        raise UserError("give one of: a run / model (gpt2kit info RUN) or --preset NAME")
    info: dict = {}
    if args.preset:
        overrides = {"vocab_size": args.vocab_size} if args.vocab_size is not None else {}
        config = GPTConfig.from_preset(args.preset, **overrides)
        with torch.device("meta"):  # no memory, no init: instant even for gpt2-xl
            model = GPT(config)
        name = args.preset
    else:
        from gpt2kit.checkpoint import load_model, tokenizer_source
        from gpt2kit.tokenizer import load_tokenizer

        model = load_model(src)
        config, name = model.config, src
        tok_src = tokenizer_source(src)
        if tok_src is not None:
            tok = load_tokenizer(tok_src)
            info["tokenizer"] = {"path": tok_src, "vocab_size": tok.vocab_size, "eos": tok.eos_token,
                                 "pad": tok.pad_token}
        if getattr(model, "labels", None) is not None:
            info["labels"] = list(model.labels)
        info.update(run_summary(src))
    info = {"name": name, "size": model_size(model), "parameters": num_params(model), "config": config.to_dict(),
            **info}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{name} size: {info['size']} parameters")
    c = config
    print(f"  architecture  {c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads, block {c.block_size}, "
          f"vocab {c.vocab_size}" + "".join(f", {f}" for f in c.non_gpt2_features())
          + ("" if c.tie_embeddings else ", untied head"))
    for key in ("tokenizer", "labels", "task", "finetune_mode", "init", "data", "steps", "tokens_seen",
                "best_val_loss", "stopped_early", "latest", "best", "checkpoints", "last_eval", "files"):
        if key in info:
            value = info[key]
            if key == "tokenizer":
                value = f"{value['path']} (vocab {value['vocab_size']}, eos {value['eos']!r}, pad {value['pad']!r})"
            elif key == "last_eval":
                value = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
            elif isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(map(str, value))
            print(f"  {key.replace('_', ' '):<13} {value}")
    return 0
