"""Time to quality: validation bits per byte after a wall-clock budget of training, per recipe (issue 12).

Data: the running Python's standard library without its tests (the demo's `stdlib` source and excludes),
a byte-level BPE of 8192 ids and a 5% validation split of held-out modules, made by the real commands and
cached under --dir (default runs/bench-ttq/), reused when present:

    gpt2kit tokenizer train --data stdlib --exclude ... --vocab-size 8192 --out DIR/tokenizer
    gpt2kit prepare --data stdlib --exclude ... --tokenizer DIR/tokenizer --val-fraction 0.05 --out DIR/data

For each budget (seconds) and recipe: time 3 steps of the recipe's model (gpt2kit.demo.calibrate_steps,
as the demo does) to get the steps that fit in the budget, so the schedule ends at the budget; train with
`gpt2kit.train.train` (evaluation and checkpoint only at the end, no trackers, `train.precision auto`:
bf16 only where the CPU has bf16 hardware), then report the final validation loss and bits per byte over
the **whole** validation split (`train.eval_batches 0`: consecutive blocks of the context, what
gpt2kit.evaluate.evaluate_blocks computes; bits per byte = loss / ln 2 / the split's bytes per token).
"train s" is the wall time of the training loop up to its last step (not the set-up before it, nor the
final checkpoint and evaluation; the set-up time is printed as it goes); a run stops at 1.5x its budget
even if the schedule has not ended ("capped").

Recipes are flat config overrides in RECIPES below; change or add one from the command line:

    --recipe-override fast:optim.lr=6e-3                 # change a recipe
    --recipe-override fast-untied=fast:model.tie_embeddings=false   # a new variant of a recipe (runs too)

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/time_to_quality.py --budgets 150 300 600 --out bench.md
    # smoke test: 200 documents, 10 s budgets
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/time_to_quality.py --limit 200 --budgets 10 --min-steps 2
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from _machine import machine_line

# ---------------------------------------------------------------- the recipes
# Flat `gpt2kit train` overrides. Unless a recipe sets optim.warmup_steps or optim.warmup_fraction, its
# warmup is min(100, steps / 10), as in the demo. The vocabulary is the tokenizer's (8192) for all.
MINI = {"model.preset": "mini", "model.block_size": "256", "train.batch_size": "16"}  # 4 layers x 128, 4 heads
DEMO_ADAMW = {**MINI, "optim.lr": "3e-3", "optim.min_lr": "3e-4"}  # the demo's recipe until 2026-12-07


def preset_recipe(name: str) -> dict[str, str]:
    """A shipped config preset (src/gpt2kit/configs/NAME.yaml) as flat model/optim overrides + the batch size:
    the benchmark sets the steps, evaluation and precision itself (warmup too, unless the preset sets it)."""
    from gpt2kit.config import load_yaml, resolve_config_path

    values = load_yaml(resolve_config_path(name))
    flat = {f"{section}.{k}": str(v).lower() if isinstance(v, bool) else str(v)
            for section in ("model", "optim") for k, v in values.get(section, {}).items()}
    flat.pop("optim.warmup_steps", None)
    return {**flat, "train.batch_size": str(values.get("train", {}).get("batch_size", 16))}


def demo_recipe() -> dict[str, str]:
    from gpt2kit.demo import RECIPE

    return {**MINI, **RECIPE}


RECIPES: dict[str, dict[str, str]] = {
    # nanoGPT's bench-mini (issue 12) with nanoGPT train.py's defaults: no biases, dropout 0, AdamW
    # (0.9, 0.95), weight decay 0.1, clip 1.0, cosine from 1e-3 to lr/10
    "nanogpt": {
        "model.preset": "small", "model.n_layer": "6", "model.n_head": "6", "model.n_embd": "384",
        "model.block_size": "256", "model.bias": "false", "model.dropout": "0",
        "optim.lr": "1e-3", "optim.min_lr": "1e-4", "train.batch_size": "8",
    },
    # the demo's recipe before 2026-12-07: GPT-2 as is, AdamW, cosine to lr/10
    "demo-adamw": DEMO_ADAMW,
    # gpt2kit demo today (gpt2kit.demo.RECIPE): exportable to GPT-2 format; no biases, Muon, WSD to lr/100
    "demo": demo_recipe(),
    # rotary positions, no biases, decay to lr/100 (not exportable: rope)
    "fast": {**DEMO_ADAMW, "model.rope": "true", "model.bias": "false", "optim.min_lr": "3e-5"},
    # `gpt2kit train --config speedrun-cpu`: fast + Muon, WSD, QK-norm, ReLU², zero-init projections, untied
    # head (not exportable: rope, qk_norm, relu2)
    "speedrun-cpu": preset_recipe("speedrun-cpu"),
}
RECIPES["fast-levers"] = RECIPES["speedrun-cpu"]  # its name in the first runs, so their commands still work


def parse_overrides(specs: list[str], recipes: dict[str, dict[str, str]]) -> list[str]:
    """Apply `NAME:key=value[,key=value]` (change NAME) and `NEW=BASE:key=value` (a new recipe from BASE)
    to `recipes` in place; returns the names of the new recipes."""
    new = []
    for spec in specs:
        head, _, body = spec.partition(":")
        name, _, base = head.partition("=")
        if not body or "=" not in body:
            raise SystemExit(f"--recipe-override {spec!r}: expected NAME:key=value or NEW=BASE:key=value")
        if base:
            if base not in recipes:
                raise SystemExit(f"--recipe-override {spec!r}: unknown recipe {base!r} ({', '.join(recipes)})")
            recipes[name] = dict(recipes[base])
            new.append(name)
        elif name not in recipes:
            raise SystemExit(f"--recipe-override {spec!r}: unknown recipe {name!r} ({', '.join(recipes)}); "
                             f"a new one is NEW=BASE:key=value")
        for kv in body.split(","):
            key, _, value = kv.partition("=")
            recipes[name][key.strip()] = value.strip()
    return new


# ---------------------------------------------------------------- data


def run(cmd: list[str]) -> None:
    print("$ " + shlex.join(["gpt2kit", *cmd[3:]]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def ensure_data(root: Path, vocab_size: int, limit: int | None) -> tuple[Path, dict]:
    """Tokenizer and prepared shards under `root`, made by the CLI when absent; (data dir, meta.json)."""
    from gpt2kit.demo import EXCLUDE
    from gpt2kit.prepare import read_meta

    suffix = "" if limit is None else f"-limit{limit}"
    tok_dir, data_dir = root / f"tokenizer{suffix}", root / f"data{suffix}"
    source = ["--data", "stdlib", *[a for g in EXCLUDE for a in ("--exclude", g)]]
    source += [] if limit is None else ["--limit", str(limit)]
    gpt2kit = [sys.executable, "-m", "gpt2kit"]
    stamp = json.dumps({"vocab_size": vocab_size, "limit": limit, "exclude": EXCLUDE})
    if not (tok_dir / "tokenizer.json").is_file() or not (tok_dir / "bench.json").is_file() \
            or (tok_dir / "bench.json").read_text() != stamp:
        run([*gpt2kit, "tokenizer", "train", *source, "--vocab-size", str(vocab_size), "--out", str(tok_dir)])
        (tok_dir / "bench.json").write_text(stamp)
    # prepare reuses --out while sources, tokenizer and options are unchanged
    run([*gpt2kit, "prepare", *source, "--tokenizer", str(tok_dir), "--val-fraction", "0.05", "--quiet",
         "--out", str(data_dir)])
    return data_dir, read_meta(data_dir)


# ---------------------------------------------------------------- one run


def loop_seconds(metrics_jsonl: Path) -> tuple[float, float]:
    """(seconds of the training loop up to its last step, seconds of set-up before it) from a run's metrics:
    each training row's tok_s covers the tokens since the row before it, and the first window starts
    with the loop, so the windows add up to the loop's time; the row's `time` counts from train()'s start."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines()]
    rows = [r for r in rows if "tok_s" in r]
    loop, seen = 0.0, 0
    for r in rows:
        loop += (r["tokens"] - seen) / r["tok_s"]
        seen = r["tokens"]
    return loop, rows[-1]["time"] - loop


def train_for(budget: float, name: str, recipe: dict[str, str], data_dir: Path, vocab_size: int,
              out: Path, args) -> dict:
    """Calibrate the steps of `recipe` to `budget` seconds, train, and return its figures."""
    from gpt2kit.config import build_config
    from gpt2kit.demo import calibrate_steps
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.train import resolve_precision, train

    def config(steps: int):
        over = {
            "data.sources": str(data_dir), "train.max_steps": str(steps),
            "train.max_minutes": str(1.5 * budget / 60), "train.eval_every": "0", "train.eval_batches": "0",
            "train.ckpt_every": "0", "train.log_every": "10", "train.report_to": "",
            "train.precision": args.precision,
        }
        if "optim.warmup_steps" not in recipe and "optim.warmup_fraction" not in recipe:
            over["optim.warmup_steps"] = str(min(100, steps // 10))
        return build_config(None, {**over, **recipe})

    cfg = config(1)
    model_cfg = GPTConfig.from_preset(cfg.model.preset, **{"vocab_size": vocab_size, **cfg.model.overrides()})
    batch = cfg.train.batch_size * cfg.train.grad_accum
    steps = calibrate_steps(model_cfg, batch, budget, cfg.train.precision, margin=args.margin,
                            min_steps=args.min_steps, optim=cfg.optim)
    cfg = config(steps)
    with torch.device("meta"):  # counts without allocating
        params = sum(p.numel() for p in GPT(model_cfg).parameters())
    print(f"[{name}, {budget:g} s] {steps} steps of {batch} x {model_cfg.block_size} tokens", file=sys.stderr,
          flush=True)
    final: dict = {}
    run_dir = out / f"{budget:g}s-{name}"
    result = train(cfg, run_dir, overwrite=True, quiet=True, on_eval=lambda step, m: final.update(m))
    seconds, setup = loop_seconds(run_dir / "metrics.jsonl")
    return {
        "budget": budget, "recipe": name, "precision": resolve_precision(cfg.train.precision, "cpu"),
        # planned: the config's steps (a recipe may set its own instead of the calibrated ones)
        "steps": result.step, "planned_steps": cfg.train.max_steps, "tokens": result.tokens, "seconds": seconds,
        "tok_s": result.tokens / seconds, "val_loss": final.get("val_loss", math.nan),
        "val_bpb": final.get("val_bpb", math.nan), "val_tokens": final.get("val_tokens", 0),
        "params": params, "setup_s": setup, "run": str(run_dir),
    }


# ---------------------------------------------------------------- report


def table(results: list[dict], recipes: dict[str, dict[str, str]], names: list[str], head: list[str]) -> str:
    lines = [*head, "",
             "| budget s | recipe | params | precision | steps | tokens | train s | tok/s | val loss | val bpb |",
             "|--:|---|--:|---|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        capped = " (capped)" if r["steps"] < r["planned_steps"] else ""
        lines.append(f"| {r['budget']:g} | {r['recipe']} | {r['params'] / 1e6:.2f}M | {r['precision']} | "
                     f"{r['steps']:,}{capped} | {r['tokens']:,} | {r['seconds']:.0f} | {r['tok_s']:,.0f} | "
                     f"{r['val_loss']:.4f} | **{r['val_bpb']:.3f}** |")
    val = sorted({r["val_tokens"] for r in results})
    lines += ["", f"train s: the training loop, without set-up and the final evaluation. Validation: the whole "
                  f"split in blocks of the context ({' / '.join(f'{v:,}' for v in val)} target tokens). "
                  "Steps calibrated on 3 timed steps (gpt2kit.demo.calibrate_steps).",
              "", "Recipes (`gpt2kit train` overrides; warmup min(100, steps/10) unless set):"]
    lines += [f"- `{n}`: `{' '.join(f'{k}={v}' for k, v in recipes[n].items())}`" for n in names]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=float, nargs="+", default=[150, 300, 600], help="seconds of training")
    ap.add_argument("--recipes", nargs="+", default=["nanogpt", "demo-adamw", "demo", "speedrun-cpu"],
                    help=f"which recipes (known: {', '.join(RECIPES)})")
    ap.add_argument("--recipe-override", action="append", default=[], metavar="NAME:key=value",
                    help="change a recipe (NAME:key=value[,key=value]) or add one (NEW=BASE:key=value); "
                         "repeatable")
    ap.add_argument("--dir", default="runs/bench-ttq", help="tokenizer, data and runs (default runs/bench-ttq)")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--limit", type=int, default=None, help="only N stdlib modules (smoke tests)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--margin", type=float, default=1.05,
                    help="calibration: assume a step takes this much longer than the 3 timed ones (the "
                         "loop's logging, clipping and data; default 1.05)")
    ap.add_argument("--min-steps", type=int, default=20, help="at least this many steps (default 20)")
    ap.add_argument("--out", help="also append the markdown table to this file")
    args = ap.parse_args()

    recipes = {k: dict(v) for k, v in RECIPES.items()}
    names = list(args.recipes)
    for n in parse_overrides(args.recipe_override, recipes):
        if n not in names:
            names.append(n)
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(recipes)}")

    command = shlex.join(["python", *sys.argv])
    machine = machine_line()  # before training: the matmul probe should not compete with it
    root = Path(args.dir)
    data_dir, meta = ensure_data(root, args.vocab_size, args.limit)
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    head = [
        f"### Time to quality ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
        f"`{command}`", "",
        f"Machine: {machine}.",
        f"Data: stdlib (tests excluded as in the demo{'' if args.limit is None else f', first {args.limit} modules'}), "
        f"byte-level BPE {meta['vocab_size']} ids; train {tr['tokens']:,} tokens, validation {va['tokens']:,} "
        f"tokens ({va['documents']:,} held-out modules, {va.get('bytes', 0) / max(1, va['tokens']):.3f} "
        "bytes/token).",
    ]
    results = []
    for budget in args.budgets:
        for name in names:
            r = train_for(budget, name, recipes[name], data_dir, meta["vocab_size"], root / "runs", args)
            results.append(r)
            print(f"[{name}, {budget:g} s] {r['steps']} steps, {r['tokens']:,} tokens in {r['seconds']:.0f} s "
                  f"({r['tok_s']:,.0f} tok/s; set-up {r['setup_s']:.1f} s): val loss {r['val_loss']:.4f}, "
                  f"{r['val_bpb']:.3f} bits/byte "
                  f"({r['val_tokens']:,} val tokens)", file=sys.stderr, flush=True)
    text = table(results, recipes, names, head)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
