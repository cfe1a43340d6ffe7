"""Model cards: the README.md every `gpt2kit export` writes, in the Hugging Face Hub's format.

A YAML metadata header (license, tags, library_name, pipeline_tag, datasets, base_model, and the validation
results as `model-index`), then what is actually known about the model, read from the run it came from:
RUN/config.yaml, RUN/metrics.jsonl, the exported checkpoint's state.json, the prepared data's meta.json and
RUN/loss.png. Nothing is guessed: what the source does not record is left out (a plain Hugging Face
directory gets a smaller card). Numbers are copied from those files, not recomputed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_LICENSE = "mit"
# Names `from_pretrained` still resolves to OpenAI's GPT-2 repositories, as the Hub spells them now.
_LEGACY_HUB = {n: f"openai-community/{n}" for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class RunFacts:
    """What the model's source records about how it was made (all optional)."""

    source: str | None = None
    hub_name: str | None = None  # the source was a hub model name
    hf_dir: Path | None = None  # the source was a plain Hugging Face directory
    hf_meta: dict = field(default_factory=dict)  # that directory's README.md metadata
    run_dir: Path | None = None
    checkpoint: Path | None = None  # the exported checkpoint
    which: str | None = None  # "best" or "latest": why that checkpoint was exported
    state: dict = field(default_factory=dict)  # the exported checkpoint's state.json
    last_state: dict = field(default_factory=dict)  # the run's latest checkpoint's state.json
    finetune: dict | None = None  # the checkpoint's partial fine-tune description (freeze / LoRA)
    config: Any = None  # TrainConfig
    config_yaml: str | None = None
    train_rows: list[dict] = field(default_factory=list)
    eval_rows: list[dict] = field(default_factory=list)
    data_dir: Path | None = None
    data_meta: dict | None = None
    images: dict[str, Path] = field(default_factory=dict)  # name in the export -> file in the run

    def eval_at_checkpoint(self) -> dict | None:
        """The evaluation row of the exported checkpoint's step (else the last one before it)."""
        step = self.state.get("step")
        rows = [r for r in self.eval_rows if step is None or r.get("step", 0) <= step]
        exact = [r for r in rows if r.get("step") == step]
        return (exact or rows or [None])[-1]


@dataclass
class ModelCard:
    text: str
    files: dict[str, Path]  # more files the card shows (loss.png), copied into the export under these names


# ---------------------------------------------------------------- reading a source


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a crash: skip it, as `gpt2kit plot` does
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def front_matter(readme: Path) -> dict:
    """The YAML metadata block at the top of a model card, or {}."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return {}
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def find_prepared(config, tokenizer_sha256: str | None) -> tuple[Path, dict] | None:
    """The prepared data directory a run read: its data.sources when that is one, else the cached preparation
    of those sources (same source list, same tokenizer) under data.cache_dir, the newest if several."""
    from gpt2kit.prepare import default_cache_dir

    sources = [str(s) for s in config.data.sources]
    if len(sources) == 1 and (Path(sources[0]).expanduser() / "meta.json").is_file():
        d = Path(sources[0]).expanduser()
        return d, _json(d / "meta.json")
    cache = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_dir()
    if not sources or not cache.is_dir():
        return None
    found = []
    for d in cache.iterdir():
        meta = _json(d / "meta.json")
        if meta.get("sources") != sources:
            continue
        if tokenizer_sha256 is not None and meta.get("tokenizer_sha256") != tokenizer_sha256:
            continue
        opts = meta.get("options") or {}
        if opts.get("val_fraction", config.data.val_fraction) != config.data.val_fraction:
            continue
        found.append((d.stat().st_mtime, d, meta))
    if not found:
        return None
    _, d, meta = max(found, key=lambda f: f[0])
    return d, meta


def gather_facts(source: str | os.PathLike | None, tokenizer=None) -> RunFacts:
    """Everything `source` (what `--model` took) records about the model; never raises on missing files."""
    from gpt2kit.checkpoint import find_checkpoint, is_gpt2kit_model_dir, resolve_local, run_config
    from gpt2kit.errors import UserError

    facts = RunFacts(source=None if source is None else str(source))
    if source is None:
        return facts
    path = Path(source).expanduser()
    if not path.is_dir():
        facts.hub_name = str(source)
        return facts
    try:
        ckpt = resolve_local(path)
    except UserError:
        return facts
    if not is_gpt2kit_model_dir(ckpt):
        facts.hf_dir = ckpt
        facts.hf_meta = front_matter(ckpt / "README.md")
        return facts
    facts.checkpoint = ckpt
    facts.state = _json(ckpt / "state.json")
    facts.finetune = _json(ckpt / "config.json").get("finetune")
    run = path if (path / "checkpoints").is_dir() else ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    facts.run_dir = run
    try:
        facts.config = run_config(path)
    except UserError:
        facts.config = None
    for candidate in ([run / "config.yaml"] if run else []) + [ckpt / "config.yaml"]:
        if candidate.is_file():
            facts.config_yaml = candidate.read_text()
            break
    if run is not None:
        best, latest = find_checkpoint(run, "best"), find_checkpoint(run, "latest")
        facts.which = "best" if best == ckpt else "latest" if latest == ckpt else None
        if latest is not None:
            facts.last_state = _json(latest / "state.json")
        rows = _jsonl(run / "metrics.jsonl")
        facts.train_rows = [r for r in rows if "loss" in r and "val_loss" not in r]
        facts.eval_rows = [r for r in rows if "val_loss" in r]
        for name in ("loss.png", "confusion.png"):
            if (run / name).is_file():
                facts.images[name] = run / name
    if facts.config is not None and facts.config.train.task == "lm":
        found = find_prepared(facts.config, getattr(tokenizer, "sha256", None))
        if found is not None:
            facts.data_dir, facts.data_meta = found
    return facts


# ---------------------------------------------------------------- writing a card


def _hub_model_name(name: str | None) -> str | None:
    """`name` as a Hub repo id when it looks like one and is not a local path."""
    if not name or Path(name).expanduser().exists() or not _HUB_NAME.match(name):
        return None
    return _LEGACY_HUB.get(name, name)


def _datasets(config) -> list[str]:
    """Hub dataset names among the run's sources (`hf:NAME[:CONFIG]`)."""
    if config is None:
        return []
    names = [s[3:].split(":")[0] for s in config.data.sources if str(s).startswith("hf:")]
    return list(dict.fromkeys(n for n in names if n))


def _num(x: float | int | None, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _tokenizer_line(tokenizer, facts: RunFacts) -> str:
    if tokenizer is None:
        return "none exported (the source had none); ids 0..vocab-1 as in training"
    from gpt2kit.tokenizer import PAD_TOKEN, gpt2_tokenizer

    named = facts.config.data.tokenizer if facts.config is not None else None
    if tokenizer.vocab_size == 50257 and tokenizer.sha256 == gpt2_tokenizer().sha256:
        kind = "GPT-2's byte-level BPE"
    elif tokenizer.eos_id == 0 and tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_id == 1:
        kind = "a byte-level BPE trained with `gpt2kit tokenizer train`"
    else:
        kind = "a byte-level BPE" if '"ByteLevel"' in tokenizer.to_json() else "a tokenizer"
    if named and named != "gpt2":
        kind += f" (`{named}`)"
    pad = f"`{tokenizer.pad_token}` (id {tokenizer.pad_id})" if tokenizer.pad_token else f"EOS (id {tokenizer.eos_id})"
    return f"{kind}, {tokenizer.vocab_size:,} ids; EOS `{tokenizer.eos_token}` (id {tokenizer.eos_id}), pad {pad}"


def _model_index(name: str, task: str, facts: RunFacts, datasets: list[str]) -> list[dict] | None:
    """The validation results as the Hub's `model-index` (shown on the model page), or None."""
    row = facts.eval_at_checkpoint()
    if row is None:
        return None
    if task == "text-classification":
        wanted = [("val_loss", "loss", "Validation loss"), ("val_acc", "accuracy", "Accuracy"),
                  ("val_f1", "f1", "Macro F1")]
    else:
        wanted = [("val_loss", "loss", "Validation loss"), ("val_ppl", "perplexity", "Perplexity"),
                  ("val_bpb", "bits_per_byte", "Bits per byte")]
    metrics = [{"type": t, "value": float(row[k]), "name": n} for k, t, n in wanted
               if isinstance(row.get(k), (int, float))]
    if not metrics:
        return None
    sources = ", ".join(str(s) for s in facts.config.data.sources) if facts.config is not None else "training data"
    dataset = {"type": datasets[0] if len(datasets) == 1 else "custom",
               "name": f"held-out validation split of {sources}"[:200], "split": "validation"}
    return [{"name": name, "results": [{
        "task": {"type": task, "name": task.replace("-", " ").title()},
        "dataset": dataset, "metrics": metrics}]}]


def _fence(text: str, lang: str = "") -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def model_card(model, tokenizer, facts: RunFacts, *, out: str | os.PathLike, license: str | None = None,
               repo_id: str | None = None) -> ModelCard:
    """The README.md text for exporting `model` (+ `tokenizer`) from `facts.source` into `out`."""
    from gpt2kit.model import model_size, num_params

    cfg = model.config
    labels = getattr(model, "labels", None)
    task = "text-classification" if labels is not None else "text-generation"
    name = repo_id or Path(out).name
    where = repo_id or str(out)  # what from_pretrained / --model take in the snippets
    run_cfg = facts.config
    datasets = _datasets(run_cfg)
    init = run_cfg.model.init if run_cfg is not None else None
    hf_base = facts.hf_meta.get("base_model")
    base = (_hub_model_name(init) or _hub_model_name(facts.hub_name)
            or _hub_model_name(hf_base if isinstance(hf_base, str) else None))
    lic = license or facts.hf_meta.get("license") or DEFAULT_LICENSE

    meta: dict[str, Any] = {"license": lic, "library_name": "transformers", "pipeline_tag": task,
                            "tags": ["gpt2", "gpt2kit", task]}
    if datasets:
        meta["datasets"] = datasets
    if base:
        meta["base_model"] = base
    index = _model_index(name, task, facts, datasets)
    if index:
        meta["model-index"] = index

    params = num_params(model)
    arch = "GPT2ForSequenceClassification" if labels is not None else "GPT2LMHeadModel"
    lines: list[str] = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {name}", ""]

    # -- what it is, in one paragraph
    what = "text classifier" if labels is not None else "language model"
    if facts.run_dir is not None or facts.checkpoint is not None:
        mode = (run_cfg.finetune.mode if run_cfg is not None else None) or "full"
        if init:
            how = f"fine-tuned from `{init}`" + ("" if mode == "full" else f" ({'LoRA, merged into the weights' if mode == 'lora' else 'top blocks only, the rest frozen'})")
        else:
            how = "trained from scratch"
        data = ", ".join(f"`{s}`" for s in run_cfg.data.sources) if run_cfg is not None and run_cfg.data.sources else None
        lines.append(f"A {model_size(model)}-parameter GPT-2 {what} {how} with gpt2kit" + (f" on {data}." if data else "."))
    elif facts.hf_dir is not None or facts.hub_name is not None:
        lines.append(f"A {model_size(model)}-parameter GPT-2 {what}, converted by gpt2kit from "
                     f"`{facts.hub_name or facts.source}` (a Hugging Face model; how it was trained is described "
                     "by its original model card, not here).")
    else:
        lines.append(f"A {model_size(model)}-parameter GPT-2 {what} exported by gpt2kit.")
    lines.append("")

    # -- the network
    lines += ["## Model", "", "| | |", "|---|---|",
              f"| Architecture | GPT-2 (`{arch}`): {_plural(cfg.n_layer, 'layer')}, {_plural(cfg.n_head, 'head')}, "
              f"{cfg.n_embd} wide, "
              f"MLP {cfg.n_inner or 4 * cfg.n_embd} |",
              f"| Parameters | {params:,} ({model_size(model)}; {'tied' if cfg.tie_embeddings else 'untied'} input/output "
              f"embeddings{'' if cfg.bias else ', trained without biases (exported as zeros)'}) |",
              f"| Context | {cfg.block_size:,} tokens |",
              f"| Vocabulary | {cfg.vocab_size:,} ids |",
              f"| Tokenizer | {_tokenizer_line(tokenizer, facts)} |"]
    if labels is not None:
        lines.append(f"| Labels | {', '.join(f'`{x}`' for x in labels)} |")
    lines.append("")

    # -- the data
    if run_cfg is not None:
        d = run_cfg.data
        lines += ["## Training data", ""]
        lines.append("Sources: " + (", ".join(f"`{s}`" for s in d.sources) or "not recorded") + ".")
        details = []
        if run_cfg.train.task == "classify":
            details.append(f"texts from column `{d.text_column}`, labels from `{d.label_column}`")
        elif d.format == "prompt_completion":
            details.append(f"prompt/completion pairs (`{d.prompt_column}` -> `{d.completion_column}`), loss on "
                           "completions only")
        if d.include:
            details.append("files matching " + ", ".join(f"`{g}`" for g in d.include))
        if d.val_fraction:
            unit = "examples" if run_cfg.train.task == "classify" else "documents"
            details.append(f"{d.val_fraction:.0%} of {unit} held out for validation")
        if details:
            lines.append("; ".join(details).capitalize() + ".")
        meta_d = facts.data_meta
        if meta_d and meta_d.get("splits"):
            lines += ["", "| split | documents | tokens | bytes |", "|---|---:|---:|---:|"]
            for split in ("train", "val"):
                s = meta_d["splits"].get(split) or {}
                lines.append(f"| {split} | {_num(s.get('documents'))} | {_num(s.get('tokens'))} | "
                             f"{_num(s.get('bytes'))} |")
        lines.append("")

    # -- the training
    st = facts.state
    if st or facts.train_rows:
        lines += ["## Training", "", "| | |", "|---|---|"]
        if st.get("step") is not None:
            total = facts.last_state.get("step")
            why = {"best": "the best validation loss", "latest": "the latest checkpoint"}.get(facts.which or "", "")
            ran = f" of {total:,}" if total and total != st["step"] else ""
            lines.append(f"| Steps | {st['step']:,}{ran}" + (f" (exported: {why})" if why else "") + " |")
        if st.get("tokens") is not None:  # what carried a loss: tokens, or one per text for a classifier
            lines.append(f"| {'Examples' if labels is not None else 'Tokens'} seen | {st['tokens']:,} |")
        if run_cfg is not None:
            t, o = run_cfg.train, run_cfg.optim
            lines.append(f"| Batch | {t.batch_size} sequences x {t.grad_accum} accumulation steps per device |")
            lines.append(f"| Optimizer | AdamW, lr {o.lr:g} ({o.schedule}, {o.warmup_steps} warmup steps), weight "
                         f"decay {o.weight_decay:g}, betas ({o.beta1:g}, {o.beta2:g}), grad clip {o.grad_clip:g} |")
            lines.append(f"| Precision | {t.precision} |")
        done = [r for r in facts.train_rows if st.get("step") is None or r.get("step", 0) <= st["step"]]
        if done:
            last = done[-1]
            lines.append(f"| Training loss (step {last['step']:,}) | {_num(last.get('loss'))} |")
            if isinstance(last.get("time"), (int, float)):
                lines.append(f"| Training time | {_duration(float(last['time']))} |")
        lines.append("")

    # -- the evaluation
    row = facts.eval_at_checkpoint()
    if row is not None:
        lines += ["## Evaluation", "", f"On the held-out validation split, at step {row['step']:,}:", "",
                  "| metric | value |", "|---|---:|"]
        names = [("val_loss", "validation loss (nats/token)" if labels is None else "validation loss", 4),
                 ("val_ppl", "perplexity", 3), ("val_bpb", "bits per byte", 4),
                 ("val_acc", "accuracy", 4), ("val_f1", "macro F1", 4)]
        for key, label, digits in names:
            if isinstance(row.get(key), (int, float)):
                lines.append(f"| {label} | {_num(float(row[key]), digits)} |")
        lines.append("")
    files: dict[str, Path] = {}
    if "loss.png" in facts.images:
        files["loss.png"] = facts.images["loss.png"]
        lines += ["![Training and validation loss](loss.png)", ""]
    if labels is not None and "confusion.png" in facts.images:
        files["confusion.png"] = facts.images["confusion.png"]
        lines += ["![Confusion matrix on the validation split](confusion.png)", ""]

    if facts.config_yaml:
        lines += ["## Training configuration", "",
                  "The resolved configuration (`gpt2kit train --config` takes it as it is):", "",
                  _fence(facts.config_yaml, "yaml"), ""]

    # -- intended use and limitations
    lines += ["## Intended use and limitations", ""]
    if labels is not None:
        kept = "start" if run_cfg is not None and run_cfg.data.truncation_side == "right" else "end"
        lines.append(f"It assigns one of {len(labels)} labels to a text, as learned from its training data; on other "
                     "kinds of text its accuracy is unknown, so measure it on your own data before relying on it. It "
                     f"reads at most {cfg.block_size:,} tokens (pass `truncation=True` to cut a longer text, keeping "
                     f"its {kept}, as in training) and its scores are not calibrated probabilities.")
    else:
        lines.append(f"A small research and teaching model, and a starting point for fine-tuning. It continues text in "
                     "the style of its training data; it is not instruction-tuned, has no safety filtering, and its "
                     "output can be wrong, repetitive or offensive and carries the biases of that data: do not use it "
                     f"for facts or decisions. It sees at most {cfg.block_size:,} tokens, prompt and continuation "
                     "together.")
    lines.append("")

    # -- how to use it
    lines += ["## How to use", "", "With transformers:", ""]
    if labels is not None:
        lines.append(_fence(
            "from transformers import pipeline\n\n"
            f"classify = pipeline(\"text-classification\", model=\"{where}\")\n"
            "print(classify([\"first text\", \"second text\"], batch_size=2, truncation=True))", "python"))
        cli = f"gpt2kit predict --model {where} --text \"first text\" --text \"second text\""
    else:
        new = max(1, min(128, cfg.block_size // 2))
        lines.append(_fence(
            "from transformers import pipeline\n\n"
            f"generate = pipeline(\"text-generation\", model=\"{where}\")\n"
            "print(generate(\"Once upon a time\", max_new_tokens=40)[0][\"generated_text\"])\n"
            "# batches pad on the left with the exported pad token\n"
            "print(generate([\"first prompt\", \"second prompt\"], batch_size=2))\n"
            f"# prompts near or over the context ({cfg.block_size} tokens, new ones included): keep their end\n"
            "print(generate(long_prompt, max_new_tokens=40, handle_long_generation=\"hole\"))", "python"))
        lines += ["", f"`generation_config.json` samples like `gpt2kit generate` (temperature 0.8, no top-k/top-p "
                      f"cut) and stops after {new} new tokens; pass `do_sample=False` for greedy decoding."]
        cli = f"gpt2kit generate --model {where} --prompt \"Once upon a time\" --max-new-tokens 40"
    lines += ["", "With gpt2kit, which also reads this folder"
              + (" or the Hub repository" if repo_id else "") + ":", "", _fence(cli, "bash"), ""]
    if tokenizer is not None:
        lines += [f"The tokenizer reads `{tokenizer.eos_token}` written in a text as the EOS token, as Hugging Face "
                  "tokenizers do; gpt2kit (and so the training data) treats it as plain text: pass "
                  "`split_special_tokens=True` to the tokenizer to get gpt2kit's ids.", ""]
    return ModelCard("\n".join(lines), files)
