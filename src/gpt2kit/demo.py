"""`gpt2kit demo`: the CodeParrot chapter in miniature, on the Python standard library.

tokenizer trained on stdlib code -> prepared shards (held-out modules for validation) -> a small
GPT-2 trained from scratch for a bounded time -> validation loss / perplexity / bits per byte ->
code completions -> exported to Hugging Face format and loaded back with `transformers.pipeline`.
Every stage goes through the same code as the real commands. Re-running reuses tokenizer and data.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from gpt2kit.config import build_config
from gpt2kit.errors import UserError
from gpt2kit.model import GPTConfig

# The standard library without its test suites: the tests are a third of the code and almost all
# `self.assertEqual(...)`, which a small model then writes everywhere.
EXCLUDE = ["test/*", "*/test/*", "*/tests/*", "*/idle_test/*", "lib2to3/*"]
PROMPTS = ["def fibonacci(n):", "class Stack:\n    def __init__(self):", "import os\n\n\ndef list_files(path):"]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _tokenizer(out: Path, vocab_size: int, limit: int | None):
    """Train (or reuse) the byte-level BPE of the demo."""
    from gpt2kit.tokenizer import bytes_per_token, load_tokenizer, train_tokenizer

    tok_dir = out / "tokenizer"
    stamp = {"vocab_size": vocab_size, "limit": limit, "exclude": EXCLUDE}
    if (tok_dir / "demo.json").exists() and json.loads((tok_dir / "demo.json").read_text()) == stamp:
        tok = load_tokenizer(tok_dir)
        say(f"[1/6] tokenizer: reusing {tok_dir} ({tok.vocab_size} ids)")
        return tok
    t0 = time.time()
    say(f"[1/6] tokenizer: training a byte-level BPE ({vocab_size} ids) on the standard library ...")
    tok = train_tokenizer(["stdlib"], vocab_size, limit=limit, exclude=EXCLUDE)
    tok.save(tok_dir)
    (tok_dir / "demo.json").write_text(json.dumps(stamp))
    sample = "def greet(name):\n    return f'Hello, {name}!'\n\nfor i in range(10):\n    print(greet(i))\n"
    gpt2_bpt = bytes_per_token(load_tokenizer("gpt2"), [sample])
    say(f"      done in {time.time() - t0:.0f}s; {bytes_per_token(tok, [sample]):.2f} bytes/token on a code "
        f"sample (GPT-2's own tokenizer: {gpt2_bpt:.2f})")
    return tok


def held_out_signatures(data_dir: Path, tok, n: int = 20) -> list[str]:
    """`n` function signatures (`def name(args):`, dedented) spread evenly over the held-out modules, read back
    from the validation shards, so the model never trained on the code that follows them."""
    import ast

    import numpy as np

    from gpt2kit.prepare import load_split, read_meta

    meta = read_meta(data_dir)
    ids = np.concatenate([np.asarray(s) for s in load_split(data_dir, "val", meta)] or [np.zeros(0, np.int64)])
    cuts = np.flatnonzero(ids == meta["eos_id"]).tolist()
    found = []
    for a, b in zip([-1, *cuts], [*cuts, len(ids)]):
        source = tok.decode(ids[a + 1 : b].tolist())
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.body[0].lineno == node.lineno + 1:  # a one-line signature
                line = lines[node.lineno - 1].strip()
                if line.startswith("def ") and line.endswith(":"):
                    found.append(line)
    return [found[i * len(found) // n] for i in range(n)] if len(found) >= n else found


def parses(prompt: str, completion: str) -> bool:
    """Whether `prompt` + `completion` up to the first dedent (a line less indented than the body's first line:
    the end of the function) is valid Python. A completion that never returns there is judged on its complete lines."""
    import ast

    head, *rest = (prompt + completion).split("\n")
    body, ended, indent = [], False, None
    for line in rest:
        if line.strip():
            width = len(line) - len(line.lstrip())
            if indent is None:
                indent = width  # the body's own level (a method's signature is continued 8 deep, say)
            if width == 0 or width < indent:  # back out of the function: it ended
                ended = True
                break
        body.append(line)
    if not ended and body:
        body = body[:-1]  # the last line may be cut mid-way by the token budget
    if head.rstrip() == prompt.rstrip() and not any(line.strip() for line in body):
        return False  # no body at all
    try:
        ast.parse("\n".join([head, *body]) + "\n")
    except (SyntaxError, ValueError):
        return False
    return True


def calibrate_steps(config: GPTConfig, batch_size: int, seconds: float, precision: str = "auto",
                    margin: float = 1.1, min_steps: int = 20, optim=None) -> int:
    """How many optimizer steps of a `config` model (a GPTConfig) at `batch_size` x block_size tokens fit in
    `seconds`: time a few steps of the real model first, so the cosine schedule ends where the time budget
    does. `margin` > 1 leaves time for what the loop does besides these steps (the demo: its evaluations and
    checkpoints). `optim` (an OptimArgs; default AdamW): the optimizer the run will use, timed with the
    steps (Muon's orthogonalization costs more than AdamW's update). Also used by
    benchmarks/time_to_quality.py."""
    import torch.nn.functional as F

    from gpt2kit.config import OptimArgs
    from gpt2kit.model import GPT
    from gpt2kit.train import make_optimizer, resolve_precision

    mixed = resolve_precision(precision, "cpu" if not torch.cuda.is_available() else "cuda")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT(config).to(device)
    opt = make_optimizer(model, optim or OptimArgs(), device)
    x = torch.randint(0, model.config.vocab_size, (batch_size, config.block_size), device=device)
    dtype = torch.bfloat16 if mixed == "bf16" else torch.float16

    def step():
        with torch.autocast(device, dtype=dtype, enabled=mixed != "no"):
            loss = F.cross_entropy(model(x).float().flatten(0, 1), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    t0 = time.time()
    for _ in range(3):
        step()
    per_step = (time.time() - t0) / 3 * margin
    return max(min_steps, int(seconds / per_step))


# The demo's training recipe (flat `gpt2kit train` overrides besides data, model size and steps): the fastest
# recipe in docs/BENCHMARKS.md's time-to-quality runs that still exports to GPT-2 format: no biases (exported
# as zeros), Muon for the blocks' matrices, warmup-stable-decay to lr/100. benchmarks/time_to_quality.py
# runs it as `demo`.
RECIPE = {"optim.lr": "3e-3", "optim.min_lr": "3e-5", "model.bias": "false", "optim.name": "muon",
          "optim.schedule": "wsd"}


def demo_config(data_dir: str | Path, preset: str, block_size: int, batch_size: int, max_steps: int,
                **over: str):
    """The demo's TrainConfig: RECIPE on `preset` at `block_size` x `batch_size` for `max_steps`, + `over`."""
    return build_config(None, {
        "data.sources": str(data_dir), "model.preset": preset, "model.block_size": str(block_size),
        "train.batch_size": str(batch_size), "train.max_steps": str(max_steps),
        "optim.warmup_steps": str(min(100, max_steps // 10)), **RECIPE, **over,
    })


def run_demo(out: str | Path = "runs/demo", minutes: float = 5.0, max_steps: int | None = None,
             preset: str = "mini", vocab_size: int = 4096, block_size: int = 256, batch_size: int = 16,
             limit: int | None = None, precision: str = "auto", max_new_tokens: int = 64) -> dict:
    """Run the whole demo; returns the summary it prints."""
    from gpt2kit.checkpoint import load_model
    from gpt2kit.generate import generate_text
    from gpt2kit.hf import export
    from gpt2kit.prepare import ensure_prepared, read_meta
    from gpt2kit.train import train

    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"gpt2kit demo: a GPT-2 trained from scratch on this Python's standard library (tests excluded) -> {out}/")

    tok = _tokenizer(out, vocab_size, limit)

    t0 = time.time()
    say("[2/6] data: tokenizing the standard library into shards (reused when unchanged) ...")
    data_dir = ensure_prepared(["stdlib"], tok, cache_dir=out / "data", val_fraction=0.05, limit=limit,
                               exclude=EXCLUDE)
    meta = read_meta(data_dir)
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    say(f"      {tr['documents']:,} train modules ({tr['tokens']:,} tokens), {va['documents']:,} held-out modules "
        f"({va['tokens']:,} tokens) in {time.time() - t0:.0f}s")

    if max_steps is None:
        probe = demo_config(data_dir, preset, block_size, batch_size, 1)
        model_cfg = GPTConfig.from_preset(preset, vocab_size=tok.vocab_size, **probe.model.overrides())
        max_steps = calibrate_steps(model_cfg, batch_size, minutes * 60, precision, optim=probe.optim)
    say(f"[3/6] training a '{preset}' GPT-2 for {max_steps} steps (~{minutes:g} min budget) ...")
    every = max(10, -(-max_steps // 4))  # each evaluation reads the whole held-out split: 4, the last at the end
    cfg = demo_config(data_dir, preset, block_size, batch_size, max_steps, **{
        "train.max_minutes": str(minutes * 1.5), "train.eval_every": str(every), "train.ckpt_every": str(every),
        "train.log_every": "5", "train.precision": precision})
    run_dir = out / "run"
    result = train(cfg, run_dir, overwrite=True)
    if result.exit_code:  # stopped by SIGINT/SIGTERM after saving a checkpoint: stop here too
        summary = {"exit_code": result.exit_code, "run": str(run_dir), "checkpoint": str(result.checkpoint)}
        say(f"demo stopped; the run so far is in {run_dir}")
        return summary
    if result.last_val_loss is None:
        raise UserError("training stopped before its final evaluation")
    val_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    final = val_rows[-1]

    say("[4/6] validation (held-out stdlib modules):")
    say(f"      loss {final['val_loss']:.3f}   perplexity {final['val_ppl']:.2f}   bits per byte {final['val_bpb']:.3f}")

    say("[5/6] completions (temperature 0.5, top-k 40, repetition penalty 1.1):")
    model = load_model(str(run_dir))
    completions = generate_text(model, tok, PROMPTS, max_new_tokens, temperature=0.5, top_k=40, seed=0,
                                repetition_penalty=1.1,
                                stop=["\n\n\n", "\nclass ", "\nif __name__"])
    for prompt, c in zip(PROMPTS, completions):
        print(f"----- {prompt.splitlines()[0]}\n{prompt}{c.text}", flush=True)
    signatures = held_out_signatures(data_dir, tok)
    outs = generate_text(model, tok, signatures, 2 * max_new_tokens, temperature=0.5, top_k=40, seed=0,
                         repetition_penalty=1.1)
    parsed = sum(parses(sig, o.text) for sig, o in zip(signatures, outs))
    say(f"      {parsed} of {len(signatures)} completions of held-out function signatures parse as Python "
        "(ast.parse, up to the end of the function)")

    say("[6/6] export to Hugging Face format, loaded back with transformers.pipeline:")
    hf_dir = export(model, out / "hf", tokenizer=tok, overwrite=True, source=run_dir)  # the card gets the run's facts
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(hf_dir), device="cpu")
    hf_text = pipe(PROMPTS[0], max_new_tokens=24, do_sample=False)[0]["generated_text"]
    print(f"----- transformers.pipeline('{PROMPTS[0]}')\n{hf_text}", flush=True)

    summary = {
        "steps": result.step, "tokens": result.tokens, "train_minutes": round(result.seconds / 60, 2),
        "val_loss": final["val_loss"], "val_ppl": final["val_ppl"], "val_bpb": final["val_bpb"],
        "parse_rate": parsed / max(1, len(signatures)), "parse_of": len(signatures),
        "run": str(run_dir), "checkpoint": str(result.checkpoint), "hf_export": str(hf_dir),
        "loss_curve": str(run_dir / "loss.png"), "total_minutes": round((time.time() - t_start) / 60, 2),
    }
    say("\nsummary")
    say(f"  trained {summary['steps']} steps / {summary['tokens']:,} tokens in {summary['train_minutes']} min; "
        f"val perplexity {summary['val_ppl']:.2f} ({summary['val_bpb']:.3f} bits/byte)")
    say(f"  parses      {parsed} of {len(signatures)} completions of held-out function signatures")
    say(f"  run dir     {run_dir}  (metrics.jsonl, tensorboard/, checkpoints/)")
    say(f"  loss curve  {summary['loss_curve']}")
    say(f"  HF model    {hf_dir}  (AutoModelForCausalLM.from_pretrained('{hf_dir}'))")
    say(f"  next        gpt2kit generate --model {run_dir} --prompt 'def quicksort(xs):'")
    say(f"  total time  {summary['total_minutes']} min")
    if not math.isfinite(summary["val_loss"]):
        raise UserError("validation loss is not finite")
    return summary
