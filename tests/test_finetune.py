"""Fine-tuning (issue 9, "Must hold"): `gpt2kit finetune` on a text file, a CSV and prompt/completion JSONL with
no other flags; padding and prompts carry no loss; freeze and LoRA train only what they should and export a
plain GPT-2; kill -9 + `--resume auto` is bitwise; `train.epochs` visits every block exactly that often; bad
input is one `error:` line. Tiny models saved by `transformers`, loaded through the real `--init` path, CPU."""

from __future__ import annotations

import collections
import csv
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import kill9_when
from safetensors.torch import load_file

from gpt2kit.checkpoint import find_checkpoint, load_gpt2kit_dir, load_model
from gpt2kit.cli import main
from gpt2kit.config import build_config
from gpt2kit.loader import IGNORE_INDEX, ExampleLoader, PackedLoader, collate_examples
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.tasks import LMTask
from gpt2kit.tokenizer import load_tokenizer, train_tokenizer

ANIMALS = ["cat", "dog", "duck", "horse", "goat", "cow", "owl", "fish", "crab", "bee", "frog", "mole"]
PLACES = ["road", "river", "street", "field", "bridge", "fence", "lake"]
FOODS = ["flour", "sugar", "butter", "eggs", "milk", "salt", "onion", "garlic", "rice", "beans", "tomato"]


# ---------------------------------------------------------------- data people bring


def write_jokes(path: Path, n: int, seed: int = 0) -> Path:
    """One short joke per line (sample_by auto splits a file without blank lines into lines)."""
    r = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            a, b, p = r.choice(ANIMALS), r.choice(ANIMALS), r.choice(PLACES)
            f.write(f"Why did the {a} cross the {p}? To see the {b} number {i}.\n")
    return path


def write_recipes(path: Path, n: int, seed: int = 1) -> Path:
    """A CSV of recipes, one per row, in column `recipe`; multi-line cells with commas, some long ones."""
    r = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["title", "recipe"])
        for i in range(n):
            items = r.sample(FOODS, r.randint(2, 6))
            steps = " ".join(f"Add the {x}, stir, and wait {r.randint(1, 9)} minutes." for x in items)
            w.writerow([f"Dish {i}", f"Ingredients: {', '.join(items)}\nSteps: {steps}" * r.choice([1, 1, 3])])
    return path


def qa_rows(n: int, seed: int = 2) -> list[dict]:
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = r.randint(0, 20), r.randint(0, 20)
        rows.append({"prompt": f"What is {a} plus {b}?", "completion": f" It is {a + b}."})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A small byte-level BPE (vocab 400) that knows jokes, recipes and sums: tiny models stay fast."""
    d = tmp_path_factory.mktemp("tok")
    text = d / "all.txt"
    write_jokes(d / "j.txt", 300)
    write_recipes(d / "r.csv", 100)
    text.write_text((d / "j.txt").read_text() + (d / "r.csv").read_text()
                    + "".join(f"{row['prompt']}{row['completion']}\n" for row in qa_rows(300)))
    return train_tokenizer([str(text)], vocab_size=400)


def tiny_hf(directory: Path, vocab_size: int, tokenizer=None, n_embd: int = 32) -> Path:
    """A GPT-2 saved by transformers (as a hub download looks), with its tokenizer when given."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=n_embd, n_positions=64, vocab_size=vocab_size)
                    ).save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def hf(tok, tmp_path_factory) -> Path:
    return tiny_hf(tmp_path_factory.mktemp("hf") / "tiny-gpt2", tok.vocab_size, tok)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpt2kit-cache")


@pytest.fixture(autouse=True)
def _env(monkeypatch, cache_dir):
    """Prepared data go to a temporary cache (shared by this module's tests), never to ~/.cache. The loss plot
    and the CPU's matmul probe for MFU (about a second per run, cosmetic here; test_train covers them) are
    skipped in this process."""
    monkeypatch.setenv("GPT2KIT_CACHE", str(cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("gpt2kit.plot.plot_runs", lambda *a, **k: None)
    monkeypatch.setattr("gpt2kit.train.peak_flops", lambda *a, **k: 1e12)


# ---------------------------------------------------------------- helpers


def ft(init, data, out, *extra) -> list[str]:
    data = data if isinstance(data, list) else [data]
    return ["finetune", "--init", str(init), "--data", *map(str, data), "--out", str(out), *map(str, extra)]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rows(run) if "loss" in r}


def val_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in rows(run) if "val_loss" in r}


def latest(run: Path) -> Path:
    ckpt = find_checkpoint(run)
    assert ckpt is not None, f"no checkpoint in {run}"
    return ckpt


def state(run: Path) -> dict:
    return json.loads((latest(run) / "state.json").read_text())


def one_error_line(err: str, *needles: str, only: bool = True) -> str:
    """Exactly one line `error: ...`, the last, no traceback. `only`: and nothing else on stderr (a mistake
    in the flags is found before any work); else data preparation may have logged what it read first."""
    lines = err.splitlines()
    assert err.endswith("\n") and lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in err, err
    assert not only or len(lines) == 1, err
    assert not any(line.startswith("config:") for line in lines), err  # set-up had not succeeded
    for needle in needles:
        assert needle in lines[-1], (needle, err)
    return lines[-1]


def summary_counts(err: str) -> tuple[int, int]:
    m = re.search(r"data: ([\d,]+) train / ([\d,]+) val", err)
    assert m, err
    return int(m[1].replace(",", "")), int(m[2].replace(",", ""))


def check_export(run: Path, out: Path, prompt: str) -> None:
    """`gpt2kit export` of the run loads in transformers, its logits are gpt2kit's, pipeline() generates."""
    from transformers import AutoModelForCausalLM, pipeline

    assert main(["export", "--model", str(run), "--out", str(out)]) == 0
    ours = load_model(str(run)).eval()
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-5, rtol=0)
    gen = pipeline("text-generation", model=str(out), device="cpu")
    text = gen(prompt, max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith(prompt) and len(text) > len(prompt)


# ---------------------------------------------------------------- 1. no flags: text file, CSV, prompt/completion


def test_jokes_txt_with_no_flags_trains_evaluates_checkpoints_and_exports(tmp_path, capsys):
    # GPT-2's own tokenizer (the HF dir has none, as `--init gpt2` would): the real default path, tiny width.
    init = tiny_hf(tmp_path / "hf", 50257, n_embd=16)
    jokes = write_jokes(tmp_path / "jokes.txt", 24)  # few lines: GPT-2's 50257-row embedding is slow on CPU
    run = tmp_path / "runs" / "jokes"
    assert main(ft(init, jokes, run)) == 0
    err = capsys.readouterr().err
    assert sum(summary_counts(err)) == 24  # one example per line, some held out
    steps_per_epoch = int(re.search(r"1 epoch = (\d+) steps; 3 epochs = (\d+) steps", err)[1])
    val = [r for r in rows(run) if "val_loss" in r]
    assert [r["epoch"] for r in val] == [1.0, 2.0, 3.0]  # evaluated at the end of every epoch
    assert [r["step"] for r in val] == [steps_per_epoch * e for e in (1, 2, 3)]
    assert all(math.isfinite(r["val_loss"]) and r["val_bpb"] > 0 for r in val)
    assert (latest(run) / "COMPLETE").is_file() and find_checkpoint(run, "best") is not None
    assert state(run)["step"] == 3 * steps_per_epoch
    check_export(run, tmp_path / "export", "Why did the")


def test_recipes_csv_trains_per_row_and_exports(hf, tmp_path, capsys):
    recipes = write_recipes(tmp_path / "recipes.csv", 40)
    run = tmp_path / "recipes"
    assert main(ft(hf, recipes, run, "--data.text_column", "recipe")) == 0
    err = capsys.readouterr().err
    assert sum(summary_counts(err)) == 40  # one example per row (multi-line cells stay one example)
    assert not re.search(r"\(padded; 0 truncated", err)  # the long recipes were cut to the block size
    assert [r["epoch"] for r in rows(run) if "val_loss" in r] == [1.0, 2.0, 3.0]
    check_export(run, tmp_path / "export", "Ingredients:")


def test_prompt_completion_jsonl_trains_and_exports(hf, tmp_path, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    run = tmp_path / "qa"
    assert main(ft(hf, data, run, "--data.format", "prompt_completion")) == 0
    err = capsys.readouterr().err
    assert "prompt/completion pairs" in err and sum(summary_counts(err)) == 40
    assert [r["epoch"] for r in rows(run) if "val_loss" in r] == [1.0, 2.0, 3.0]
    check_export(run, tmp_path / "export", "What is 3 plus 4?")


@pytest.mark.parametrize("case", ["empty", "blank_lines", "packed_shorter_than_a_block", "blank_rows"])
def test_corpus_too_small_is_one_error_line(hf, tmp_path, capsys, case):
    run = tmp_path / "run"
    extra = []
    if case == "empty":
        data = tmp_path / "empty.txt"
        data.write_text("")
    elif case == "blank_lines":
        data = tmp_path / "blank.txt"
        data.write_text("\n \n\t\n\n")
    elif case == "packed_shorter_than_a_block":
        data = write_jokes(tmp_path / "few.txt", 3)
        extra = ["--data.packing", "true"]
    else:
        data = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "", "completion": ""}] * 3)
        extra = ["--data.format", "prompt_completion"]
    assert main(ft(hf, data, run, *extra)) == 2
    one_error_line(capsys.readouterr().err, only=False)
    assert not run.exists()  # nothing half-made


# ---------------------------------------------------------------- 2. per-example batches


def test_padded_batch_equals_each_example_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    g = torch.Generator().manual_seed(1)
    examples = []
    for n, prompt in ((3, 0), (16, 5), (9, 2), (1, 0)):
        x = torch.randint(2, 64, (n,), generator=g)
        y = torch.randint(2, 64, (n,), generator=g)
        y[:prompt] = IGNORE_INDEX
        examples.append((x.numpy(), y.numpy()))
    pad = 1
    X, Y = ExampleLoader(examples, 4, pad_id=pad, shuffle=False).next_batch()
    assert X.shape == Y.shape == (4, 16)
    task = LMTask()
    with torch.no_grad():
        logits = model(X)
        batch_loss = task.loss(model, (X, Y), "cpu")
        alone_losses = []
        for i, (x, y) in enumerate(examples):
            n = len(x)
            assert (Y[i, n:] == IGNORE_INDEX).all() and (X[i, n:] == pad).all()  # no loss on padding
            assert torch.equal(Y[i, :n], torch.as_tensor(y))
            x1, y1 = torch.as_tensor(x)[None], torch.as_tensor(y)[None]
            torch.testing.assert_close(logits[i, :n], model(x1)[0], atol=1e-5, rtol=0)
            # the per-example loss (mean over its targets) is the same padded or alone
            alone = task.loss(model, (x1, y1), "cpu") / task.targets((x1, y1))
            padded = task.loss(model, (X[i : i + 1], Y[i : i + 1]), "cpu") / task.targets((X[i : i + 1], Y[i : i + 1]))
            torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
            alone_losses.append(task.loss(model, (x1, y1), "cpu"))
        torch.testing.assert_close(batch_loss, torch.stack(alone_losses).sum(), atol=1e-4, rtol=0)
        assert task.targets((X, Y)) == sum(int((torch.as_tensor(y) != IGNORE_INDEX).sum()) for _, y in examples)
        # what fills the padding is irrelevant: another pad id, the same loss
        X2, Y2 = collate_examples(7, examples)
        assert torch.equal(Y2, Y) and not torch.equal(X2, X)
        torch.testing.assert_close(task.loss(model, (X2, Y2), "cpu"), batch_loss, atol=1e-5, rtol=0)


def test_text_examples_are_documents_with_eos_and_padding_has_no_target(tok, tmp_path):
    from gpt2kit.data import build_data

    jokes = write_jokes(tmp_path / "jokes.txt", 30)
    cfg = build_config(None, {"data.sources": [str(jokes)], "data.packing": "false", "data.sample_by": "line",
                              "data.val_fraction": "0.1", "train.batch_size": "8", "train.epochs": "1"})
    data = build_data(cfg, tok, 64, rank=0, world=1)
    lines = {tuple(tok.encode(line)) for line in jokes.read_text().splitlines()}
    examples = list(data.train.examples) + list(data.val.examples)
    assert len(examples) == 30
    for x, y in examples:
        doc = list(x) + [int(y[-1])]
        assert doc[-1] == tok.eos_id and tuple(doc[:-1]) in lines  # a whole line, then EOS as the last target
        assert list(y) == doc[1:]
    X, Y = data.train.next_batch()
    for row in range(X.shape[0]):
        n = int((Y[row] != IGNORE_INDEX).sum())
        assert Y[row, n - 1] == tok.eos_id and (Y[row, n:] == IGNORE_INDEX).all() and (X[row, n:] == tok.pad_id).all()


# ---------------------------------------------------------------- 3. prompt/completion


def test_prompt_positions_carry_no_loss_and_the_final_eos_does(tmp_path):
    from gpt2kit.data import build_data

    gpt2 = load_tokenizer("gpt2")  # pad = EOS: the EOS target must survive padding
    rows_ = [{"question": f"What is {i} times {i}?", "answer": f" {i * i}" + " indeed" * (i % 4)} for i in range(12)]
    data_file = write_jsonl(tmp_path / "qa.jsonl", rows_)
    template = "Q: {prompt}\\nA:"
    cfg = build_config(None, {"data.sources": [str(data_file)], "data.format": "prompt_completion",
                              "data.prompt_column": "question", "data.completion_column": "answer",
                              "data.prompt_template": template, "data.val_fraction": "0.2",
                              "train.batch_size": "4", "train.epochs": "1"})
    data = build_data(cfg, gpt2, 64, rank=0, world=1)
    expected = {}
    for r in rows_:
        p, c = gpt2.encode(f"Q: {r['question']}\nA:"), gpt2.encode(r["answer"])
        expected[tuple(p + c)] = (len(p), c)
    examples = list(data.train.examples) + list(data.val.examples)
    assert len(examples) == len(rows_) and len(data.val.examples) >= 1
    for x, y in examples:
        n_prompt, completion = expected[tuple(x)]  # the template was applied to the prompt column
        assert list(y[: n_prompt - 1]) == [IGNORE_INDEX] * (n_prompt - 1)  # predicting the prompt: no loss
        assert list(y[n_prompt - 1 :]) == completion + [gpt2.eos_id]  # the completion and its EOS: loss
    # collated with pad = EOS: each row keeps its EOS target, padding has none, the prompt has none
    X, Y = next(data.train.iter_epoch())
    n_targets = 0
    for i in range(len(X)):
        last = int((Y[i] != IGNORE_INDEX).nonzero().max())
        n_prompt, completion = expected[tuple(X[i, : last + 1].tolist())]
        assert Y[i, last] == gpt2.eos_id and (Y[i, last + 1 :] == IGNORE_INDEX).all()
        assert (Y[i, : n_prompt - 1] == IGNORE_INDEX).all()
        n_targets += len(completion) + 1
    assert LMTask().targets((X, Y)) == n_targets  # what the loss is averaged over: completions and EOS only


# ---------------------------------------------------------------- 4. freeze and LoRA


FAST = ["--train.precision", "fp32", "--train.batch_size", "4", "--train.max_steps", "4", "--optim.lr", "1e-2",
        "--optim.warmup_steps", "0", "--train.log_every", "1"]


def test_freeze_changes_only_the_trained_blocks_and_parts(hf, tmp_path, capsys):
    jokes = write_jokes(tmp_path / "jokes.txt", 40)
    run = tmp_path / "freeze"
    assert main(ft(hf, jokes, run, *FAST, "--finetune.mode", "freeze", "--finetune.train_blocks", "1")) == 0
    err = capsys.readouterr().err
    assert "finetune.mode freeze" in err and "trainable" in err

    def trained(name: str) -> bool:  # the top block (n_layer 2) and ln_f (the default train_parts)
        return name.startswith(("transformer.h.1.", "transformer.ln_f."))

    start = load_model(str(hf)).state_dict()
    base = load_gpt2kit_dir(run / "base").state_dict()
    ckpt = latest(run)
    final = load_gpt2kit_dir(ckpt).state_dict()
    assert set(base) == set(final) == set(start)
    assert any(trained(n) for n in final) and any(not trained(n) for n in final)
    for name in final:
        assert torch.equal(base[name], start[name]), name  # RUN/base is the --init model
        if trained(name):
            assert not torch.equal(final[name], base[name]), f"{name} did not train"
        else:
            assert torch.equal(final[name], base[name]), f"{name} is frozen but changed"
    # the checkpoint holds only what changed; the optimizer only trainable parameters
    saved = load_file(ckpt / "model.safetensors")
    assert set(saved) == {n for n in final if trained(n)}
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)["optimizer"]
    held = [i for g in opt["param_groups"] for i in g["params"]]
    assert len(held) == len(saved)
    assert sum(s["exp_avg"].numel() for s in opt["state"].values()) == sum(v.numel() for v in saved.values())


def test_lora_changes_only_adapters_merges_exactly_and_exports(hf, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    jokes = write_jokes(tmp_path / "jokes.txt", 40)
    run = tmp_path / "lora"
    assert main(ft(hf, jokes, run, *FAST, "--finetune.mode", "lora", "--finetune.lora_dropout", "0.1")) == 0
    assert "finetune.mode lora" in capsys.readouterr().err
    ckpt = latest(run)
    base = load_gpt2kit_dir(run / "base")
    base_sd = base.state_dict()
    adapted = load_gpt2kit_dir(ckpt, merge=False).eval()
    sd = adapted.state_dict()
    adapters = {n for n in sd if ".lora_" in n}
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapters}
    assert targets == {"c_attn", "c_proj", "c_fc"}  # the default targets (mlp.c_proj and attn.c_proj)
    # only the adapters trained: every base tensor is bitwise the starting one
    rest = {n.replace(".base_layer.", "."): v for n, v in sd.items() if n not in adapters}
    assert set(rest) == set(base_sd)
    for name, v in rest.items():
        assert torch.equal(v, base_sd[name]), f"{name} changed under LoRA"
    assert all(sd[n].abs().max() > 0 for n in adapters if ".lora_B." in n)  # the adapters did learn
    saved = load_file(ckpt / "model.safetensors")
    assert set(saved) == adapters  # the checkpoint is the adapters only
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True)["optimizer"]
    assert len([i for g in opt["param_groups"] for i in g["params"]]) == len(adapters)

    merged = load_gpt2kit_dir(ckpt).eval()
    assert not any(".lora_" in n or "base_layer" in n for n in merged.state_dict())  # a plain GPT-2
    x = torch.randint(0, merged.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = adapted(x)
        torch.testing.assert_close(merged(x), want, atol=1e-5, rtol=0)
        assert (base(x) - want).abs().max() > 1e-3  # the adapters matter, so the equality above means something
        check_export(run, tmp_path / "export", "Why did the")
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
        torch.testing.assert_close(exported(x).logits, want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- 5. kill -9 + --resume auto is bitwise

# Runs gpt2kit in a child that hangs right after logging the 2nd step past its first checkpoint (so the kill
# lands at a known point with un-checkpointed progress on disk, whatever the machine's speed), touching FLAG.
HANGING_CHILD = """
import os, sys, time
import gpt2kit.train as T
from gpt2kit.metrics import MetricsLogger
saved, save, log = [], T.save_checkpoint, MetricsLogger.log
def save_and_note(*a, **k):
    path = save(*a, **k)
    saved.append(int(path.name.split("-")[1]))
    return path
def log_and_hang(self, row):
    log(self, row)
    if saved and "loss" in row and row["step"] == saved[0] + 2:
        open(os.environ["FLAG"], "w").close()
        time.sleep(600)
T.save_checkpoint, MetricsLogger.log = save_and_note, log_and_hang
from gpt2kit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode,fmt", [("full", "text"), ("freeze", "text"), ("lora", "prompt_completion")])
def test_kill9_then_resume_auto_equals_an_uninterrupted_run(hf, tmp_path, capsys, one_thread, mode, fmt):
    if fmt == "text":
        data = write_jokes(tmp_path / "jokes.txt", 28)
        extra = []
    else:
        data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(28))
        extra = ["--data.format", "prompt_completion"]
    # finetune defaults (per-example, dropout 0.1, eval + checkpoint per epoch, keep_last 1), fp32, logged
    # every step; LoRA keeps its default LR (the resume must not fall back to full fine-tuning's)
    args = [*extra, "--finetune.mode", mode, "--train.precision", "fp32", "--train.batch_size", "4",
            "--train.epochs", "3", "--train.early_stopping", "0", "--train.log_every", "1"]
    run, ref, flag = tmp_path / "run", tmp_path / "ref", tmp_path / "hanging"
    # One thread here and in the child: the two run side by side on a small machine, and every part of the
    # run computes with the same thread count (bitwise equality must not depend on it).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "FLAG": str(flag), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HANGING_CHILD, *ft(hf, data, run, *args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert main(ft(hf, data, ref, *args)) == 0  # the uninterrupted run, while the child starts up
    except BaseException:
        proc.kill()  # no child left hanging
        raise
    kill9_when(proc, flag)
    assert proc.returncode == -9
    first = int(latest(run).name.split("-")[1])
    assert max(losses(run)) == first + 2  # progress past the checkpoint, lost with the process
    capsys.readouterr()
    assert main(ft(hf, data, run, *args, "--resume", "auto")) == 0
    assert f"resuming from {run / 'checkpoints' / f'step-{first:08d}'} (step {first}," in capsys.readouterr().err

    assert losses(run) == losses(ref) and len(losses(ref)) == state(ref)["step"]  # every step, exactly
    assert val_losses(run) == val_losses(ref)
    a, b = load_file(latest(ref) / "model.safetensors"), load_file(latest(run) / "model.safetensors")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = state(ref), state(run)
    assert sa["loader"] == sb["loader"] and sa["step"] == sb["step"]
    if mode == "lora":
        lr = {r["step"]: r["lr"] for r in rows(run) if "lr" in r}
        assert max(lr.values()) == pytest.approx(2e-4)  # LoRA's default LR, also after the resume


# ---------------------------------------------------------------- 6. epochs


def simulate_epochs(loaders, epochs: int, grad_accum: int, record) -> int:
    """The training loop's batching (train.py): up to grad_accum micro-batches, never across an epoch's end."""
    from gpt2kit.config import TrainArgs
    from gpt2kit.train import plan_steps

    max_steps, per_epoch = plan_steps(TrainArgs(epochs=epochs, grad_accum=grad_accum),
                                      loaders[0].batches_per_epoch)
    assert max_steps == epochs * per_epoch
    for _ in range(max_steps):
        micro = 0
        while micro < grad_accum and not (micro and loaders[0].at_epoch_end):
            for loader in loaders:  # the ranks, in lockstep
                record(loader.next_batch())
            micro += 1
    return max_steps


@pytest.mark.parametrize("world,accum", [(1, 1), (1, 2), (2, 1), (2, 3)])
def test_two_epochs_visit_every_block_exactly_twice(tok, tmp_path, world, accum):
    from gpt2kit.prepare import prepare

    data = tmp_path / "data"
    prepare([str(write_jokes(tmp_path / "jokes.txt", 40))], tok, data, val_fraction=0.1, progress=False)
    B, T = 3, 8
    loaders = [PackedLoader(data, "train", T, B, seed=5, rank=r, world_size=world, epoch_aligned=True)
               for r in range(world)]
    nb = loaders[0].num_blocks
    assert nb % (B * world) and nb % (B * world * accum)  # the last batch of an epoch is a short one
    seen = collections.Counter()
    for loader in loaders:  # count the block ids each rank's batches are made of
        def batch(ids, make=loader._batch):
            seen.update(ids.tolist())
            return make(ids)
        loader._batch = batch

    steps = simulate_epochs(loaders, 2, accum, lambda batch: None)
    assert seen == {i: 2 for i in range(nb)}
    assert all(loader.position == 2 * nb for loader in loaders)
    assert steps == 2 * math.ceil(math.ceil(nb / (B * world)) / accum)


@pytest.mark.parametrize("world", [1, 2])
def test_two_epochs_visit_every_example_exactly_twice(world):
    n, B = 23, 4
    examples = [(np.array([i + 2, i + 2]), np.array([i + 2, i + 2])) for i in range(n)]  # x names the example
    loaders = [ExampleLoader(examples, B, pad_id=0, seed=3, rank=r, world_size=world, epoch_aligned=True)
               for r in range(world)]
    seen = collections.Counter()

    def record(batch):
        X, Y = batch
        for x, y in zip(X, Y):
            if (y != IGNORE_INDEX).any():  # a rank with nothing left gets an empty (target-less) batch
                seen[int(x[0]) - 2] += 1

    simulate_epochs(loaders, 2, 2, record)
    assert seen == {i: 2 for i in range(n)}


@pytest.mark.parametrize("packing", ["true", "false"])
def test_train_epochs_two_ends_after_exactly_two_passes(hf, tmp_path, capsys, packing):
    jokes = write_jokes(tmp_path / "jokes.txt", 50)
    run = tmp_path / "run"
    B, A = 3, 2
    assert main(ft(hf, jokes, run, "--data.packing", packing, "--model.block_size", "16", "--train.epochs", "2",
                   "--train.batch_size", B, "--train.grad_accum", A, "--train.early_stopping", "0",
                   "--train.precision", "fp32")) == 0
    err = capsys.readouterr().err
    loader = state(run)["loader"]
    n = loader["num_blocks"] if packing == "true" else loader["examples"]
    assert n % (B * A)  # epochs end with a short step
    assert loader["position"] == 2 * n  # two passes, not a block more or less
    per_epoch = math.ceil(math.ceil(n / B) / A)
    assert f"1 epoch = {per_epoch} steps; 2 epochs = {2 * per_epoch} steps" in err
    assert state(run)["step"] == 2 * per_epoch
    val = [r for r in rows(run) if "val_loss" in r]
    assert [(r["step"], r["epoch"]) for r in val] == [(per_epoch, 1.0), (2 * per_epoch, 2.0)]


@pytest.mark.parametrize("command", ["finetune", "train"])
def test_epochs_and_max_steps_together_is_one_error_line(hf, tmp_path, capsys, command):
    jokes = write_jokes(tmp_path / "jokes.txt", 20)
    run = tmp_path / "run"
    argv = ft(hf, jokes, run, "--train.epochs", "2", "--train.max_steps", "5")
    argv[0] = command
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, "train.max_steps", "train.epochs")
    assert not run.exists()


# ---------------------------------------------------------------- 7. two processes, epochs, short last batch


def test_two_processes_match_one_with_examples_and_a_short_last_batch(hf, tmp_path):
    jokes = write_jokes(tmp_path / "jokes.txt", 28)  # 25 train examples (the split is by line, stable)
    common = ["--train.precision", "fp32", "--train.epochs", "2", "--train.early_stopping", "0",
              "--model.dropout", "0", "--train.log_every", "1", "--optim.lr", "1e-3"]
    single = tmp_path / "single"
    assert main(ft(hf, jokes, single, *common, "--train.batch_size", "4")) == 0
    n = state(single)["loader"]["examples"]
    assert n % 4 == 1  # the last global batch of each epoch holds one example: rank 1 gets none
    ddp = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "gpt2kit",
                        *ft(hf, jokes, ddp, *common, "--train.batch_size", "2")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x2" in r.stderr  # two processes really ran
    assert state(ddp)["step"] == state(single)["step"] and state(ddp)["loader"] == state(single)["loader"]
    a, b = load_file(latest(single) / "model.safetensors"), load_file(latest(ddp) / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    assert losses(single) == pytest.approx(losses(ddp), abs=1e-5)
    assert val_losses(single) == pytest.approx(val_losses(ddp), abs=1e-5)


# ---------------------------------------------------------------- 8. bad input


# (flags, what the error names, whether it is found before any data is read)
BAD = {
    "unknown_mode": (["--finetune.mode", "adapters"], ["finetune.mode", "full, freeze, lora"], True),
    "too_many_blocks": (["--finetune.mode", "freeze", "--finetune.train_blocks", "3"], ["train_blocks 3", "2"], False),
    "part_names_nothing": (["--finetune.mode", "freeze", "--finetune.train_parts", "ln_g"], ["'ln_g'"], False),
    "nothing_to_train": (["--finetune.mode", "freeze", "--finetune.train_blocks", "0", "--finetune.train_parts",
                          ""], ["nothing to train"], False),
    "lora_on_a_layernorm": (["--finetune.mode", "lora", "--finetune.lora_targets", "c_attn,ln_1"],
                            ["ln_1", "c_fc"], False),
    "lora_on_an_embedding": (["--finetune.mode", "lora", "--finetune.lora_targets", "wte"], ["wte"], False),
    "missing_column": (["--data.format", "prompt_completion", "--data.completion_column", "answer"],
                       ["'answer'", "columns found: prompt, completion", "--data.completion_column"], True),
    "packing_with_pairs": (["--data.format", "prompt_completion", "--data.packing", "true"], ["data.packing"], True),
    "no_init": ([], ["--init"], True),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_and_leaves_nothing(hf, tmp_path, capsys, case):
    extra, needles, only = BAD[case]
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(20)) if "--data.format" in extra \
        else write_jokes(tmp_path / "jokes.txt", 20)
    run = tmp_path / "run"
    argv = ft(hf, data, run, *extra)
    if case == "no_init":
        argv = argv[:1] + argv[3:]
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, *needles, only=only)
    assert not run.exists()
