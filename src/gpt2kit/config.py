"""Training configuration: one typed dataclass per concern, from YAML plus dotted overrides.

`gpt2kit train --config run.yaml --optim.lr 3e-4 --model.n_layer 6`: the YAML file nests the same
names (`optim: {lr: 3e-4}`); the command line wins over the file. Every value is checked against
its field's type and range, and an unknown key is an error that suggests the nearest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpt2kit.errors import UserError


def _f(default, help: str, **kw):
    """A dataclass field with a help string (shown in `train --help` and docs/CONFIG.md)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArgs:
    """The network. Unset (null) fields come from the preset, or from `init` when fine-tuning."""

    preset: str = _f("mini", "size preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, mini, small")
    init: str | None = _f(None, "start from these weights: run dir, checkpoint, Hugging Face dir or hub name")
    vocab_size: int | None = _f(None, "vocabulary size; null = the tokenizer's")
    block_size: int | None = _f(None, "context length in tokens")
    n_layer: int | None = _f(None, "transformer blocks")
    n_head: int | None = _f(None, "attention heads")
    n_embd: int | None = _f(None, "embedding width")
    n_kv_head: int | None = _f(None, "key/value heads for grouped-query attention; null = n_head")
    n_inner: int | None = _f(None, "MLP width; null = 4 * n_embd")
    dropout: float | None = _f(None, "dropout probability (pretraining: 0; fine-tuning small data: 0.1)")
    bias: bool | None = _f(None, "biases in Linear and LayerNorm layers")
    tie_embeddings: bool | None = _f(None, "share the token embedding with the output layer")
    rope: bool | None = _f(None, "rotary position embeddings instead of learned positions")
    rope_theta: float | None = _f(None, "RoPE base")
    sliding_window: int | None = _f(None, "local attention window in tokens; null = full context")
    qk_norm: bool | None = _f(None, "RMS-normalise queries and keys per head (no learned gain) before attention; "
                                    "not exportable to GPT-2")
    mlp_act: str | None = _f(None, "MLP activation: gelu (GPT-2's, tanh approximation) or relu2 (ReLU squared; "
                                   "not exportable to GPT-2); null = gelu", choices=("gelu", "relu2"))
    zero_init_proj: bool | None = _f(None, "start attn.c_proj and mlp.c_proj at zero (init only; exportable)")
    logit_softcap: float | None = _f(None, "cap the logits smoothly: cap * tanh(logits / cap); null = off; "
                                           "not exportable to GPT-2", min=0.0, exclusive_min=True)

    def overrides(self) -> dict[str, Any]:
        """GPTConfig fields the user set."""
        skip = {"preset", "init"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip and v is not None}


@dataclass
class DataArgs:
    sources: list[str] = _f([], "prepared data dir, or sources to prepare on the fly (files, dirs, jsonl/csv/"
                                "parquet, dataset names, stdlib)")
    tokenizer: str | None = _f(None, "tokenizer: gpt2, a tokenizer dir/file; null = the data's, init's, or gpt2")
    text_column: str = _f("text", "text column of tabular sources")
    include: list[str] = _f([], "glob patterns of files to read from directories, e.g. *.py")
    val_fraction: float = _f(0.01, "share of documents held out for validation", min=0.0, max=0.9)
    workers: int | None = _f(None, "tokenizer worker processes; null = all cores")
    cache_dir: str | None = _f(None, "where sources are prepared; null = $GPT2KIT_CACHE or ~/.cache/gpt2kit")
    sample_by: str = _f("file", "documents of a plain text file: the whole file, one per line, blank-line separated "
                                "paragraphs, or auto (paragraphs if the file has blank lines, else lines)",
                        choices=("file", "line", "paragraph", "auto"))
    format: str = _f("text", "text: documents from text_column / files; prompt_completion: pairs from "
                             "prompt_column and completion_column, loss on the completion only",
                     choices=("text", "prompt_completion"))
    packing: bool | None = _f(None, "true: documents packed back to back into full blocks; false: one example per "
                                    "sequence, truncated to the block size and padded; null = true for text, "
                                    "false for prompt_completion")
    prompt_column: str = _f("prompt", "prompt column of prompt_completion data")
    completion_column: str = _f("completion", "completion column of prompt_completion data")
    label_column: str = _f("label", "label column for train.task classify (class names or integers)")
    class_weights: str = _f("none", "classify: 'balanced' weighs each class by n / (k * n_class), for skewed data",
                            choices=("none", "balanced"))
    truncation_side: str = _f("left", "classify: which end of a text longer than the block is dropped (left "
                                      "keeps the end, which the last token reads)", choices=("left", "right"))
    prompt_template: str = _f("{prompt}", "how a prompt is written before its completion, e.g. "
                                          "'Q: {prompt}\\nA:' ; `gpt2kit generate` applies the run's template")


@dataclass
class OptimArgs:
    lr: float = _f(6e-4, "peak learning rate", min=0.0, exclusive_min=True)
    min_lr: float | None = _f(None, "final learning rate of the decay; null = lr / 10", min=0.0)
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (matrices only)", min=0.0)
    beta1: float = _f(0.9, "AdamW beta1", min=0.0, max=1.0)
    beta2: float = _f(0.95, "AdamW beta2", min=0.0, max=1.0)
    eps: float = _f(1e-8, "AdamW epsilon", min=0.0, exclusive_min=True)
    warmup_steps: int = _f(100, "linear warmup steps", min=0)
    warmup_fraction: float | None = _f(None, "warmup as a fraction of the run's steps (replaces warmup_steps)",
                                       min=0.0, max=1.0)
    schedule: str = _f("cosine", "learning-rate decay after warmup (wsd: warmup-stable-decay, constant then a "
                                 "linear decay over the last decay_fraction of the steps)",
                       choices=("cosine", "linear", "constant", "wsd"))
    decay_fraction: float = _f(0.2, "schedule wsd: share of the run's steps spent decaying to min_lr",
                               min=0.0, max=1.0)
    grad_clip: float = _f(1.0, "clip the global gradient norm to this; 0 = off", min=0.0)
    decay_embeddings: bool = _f(False, "apply weight decay to the embeddings too")
    name: str = _f("adamw", "adamw; or muon: orthogonalised momentum (Newton-Schulz) for the blocks' 2-D weight "
                            "matrices, AdamW for embeddings, head, gains and biases", choices=("adamw", "muon"))
    muon_lr: float = _f(0.02, "muon: peak learning rate of the Muon matrices (follows the schedule; "
                              "optim.lr is the AdamW part's)", min=0.0, exclusive_min=True)
    muon_momentum: float = _f(0.95, "muon: momentum", min=0.0, max=1.0)
    muon_nesterov: bool = _f(True, "muon: Nesterov momentum")
    muon_weight_decay: float = _f(0.0, "muon: decoupled weight decay of the Muon matrices", min=0.0)
    muon_ns_steps: int = _f(5, "muon: Newton-Schulz iterations per update (each costs ~3 matrix products per "
                               "weight: fewer is cheaper and less orthogonal)", min=1)


@dataclass
class TrainArgs:
    task: str = _f("lm", "lm: next-token prediction; classify: a label per text (a score head on the last "
                         "token; data.text_column + data.label_column)", choices=("lm", "classify"))
    max_steps: int | None = _f(None, "optimizer steps; null = 1000, or what train.epochs gives", min=1)
    epochs: float | None = _f(None, "passes over the training data (instead of max_steps); evaluates and "
                                    "checkpoints at the end of every epoch", min=0.0, exclusive_min=True)
    max_minutes: float | None = _f(None, "stop (with eval and checkpoint) after this much wall time", min=0.0)
    batch_size: int = _f(8, "sequences per device per micro-step", min=1)
    grad_accum: int = _f(1, "micro-steps per optimizer step", min=1)
    precision: str = _f("auto", "auto (bf16 where supported), bf16, fp16, fp32", choices=("auto", "bf16", "fp16", "fp32"))
    compile: bool = _f(False, "torch.compile the model")
    chunked_loss: str = _f("auto", "the LM loss a few thousand rows of logits at a time, never the whole (batch, "
                           "context, vocab) logits: less memory, same loss up to float rounding; auto = on for "
                           "CUDA, off elsewhere", choices=("auto", "on", "off"))
    grad_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    eval_every: int = _f(200, "evaluate every N steps (and at the end); 0 = only at the end", min=0)
    eval_batches: int | None = _f(None, "validation per evaluation: null = the whole split, or an even sample "
                                        "of 2M target tokens when it is larger; N = an even, fixed sample of N "
                                        "batches per device; 0 = always the whole split", min=0)
    ckpt_every: int = _f(500, "checkpoint every N steps (and at the end); 0 = only at the end", min=0)
    keep_last: int = _f(2, "keep the newest N checkpoints (plus the best)", min=1)
    log_every: int = _f(10, "write a metrics row every N steps", min=1)
    seed: int = _f(1337, "global seed: same seed, same run (bitwise on CPU)")
    early_stopping: int = _f(0, "stop after N evaluations without a better val loss; 0 = off", min=0)
    nonfinite: str = _f("skip", "on a NaN/inf loss or gradient: skip the update, or stop", choices=("skip", "stop"))
    max_skipped: int = _f(20, "stop after this many skipped (non-finite) updates in a row", min=1)
    resize_embeddings: bool = _f(False, "grow the model's vocabulary to the tokenizer's instead of failing")
    report_to: list[str] = _f(["tensorboard"], "trackers (Accelerate's): tensorboard, wandb, mlflow, comet_ml, "
                                               "aim, clearml, dvclive, swanlab, trackio; empty for none")
    wandb: bool = _f(False, "also log to Weights & Biases (the same as adding wandb to report_to)")
    device: str = _f("auto", "auto (CUDA, else Apple MPS, else CPU), cpu, cuda or mps",
                     choices=("auto", "cpu", "cuda", "mps"))


@dataclass
class FinetuneArgs:
    """What is trained. Partial modes checkpoint only the trained tensors; the starting weights are kept
    once in RUN/base/."""

    mode: str = _f("full", "full: every weight; freeze: only the top train_blocks blocks and train_parts; "
                           "lora: low-rank adapters (peft) on lora_targets", choices=("full", "freeze", "lora"))
    train_blocks: int = _f(2, "freeze: how many of the top transformer blocks train", min=0)
    train_parts: list[str] = _f(["ln_f"], "freeze: more parts that train, by name (ln_f, wte, wpe, lm_head, "
                                          "h.0.attn, ...)")
    lora_rank: int = _f(8, "lora: rank of the adapters", min=1)
    lora_alpha: float = _f(16.0, "lora: scaling numerator (the update is scaled by alpha / rank)", min=0.0,
                           exclusive_min=True)
    lora_dropout: float = _f(0.05, "lora: dropout on the adapters' input", min=0.0, max=1.0)
    lora_targets: list[str] = _f(["c_attn", "c_proj", "c_fc"], "lora: Linear layers that get adapters, by name")


@dataclass
class TrainConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    finetune: FinetuneArgs = field(default_factory=FinetuneArgs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- parsing


def _sections(cls=TrainConfig) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _field_types(section_cls) -> dict[str, tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(section_cls)}


def _coerce(key: str, value: Any, tp: Any, meta: dict) -> Any:
    """Turn a YAML or command-line value into the field's type, or raise a UserError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, list):
            raise UserError(f"{key} expects a list, got {value!r}")
        return [_coerce(key, v, args[0], {}) for v in value]
    try:
        if tp is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).lower() in ("true", "1", "yes", "on"):
                out = True
            elif str(value).lower() in ("false", "0", "no", "off"):
                out = False
            else:
                raise ValueError
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        else:
            if not isinstance(value, str | int | float):
                raise ValueError
            out = str(value)
    except (TypeError, ValueError, OverflowError):
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))
        raise UserError(f"{key} expects {kind}, got {value!r}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise UserError(f"{key} must be a finite number, got {value!r}")
    if "choices" in meta and out not in meta["choices"]:
        raise UserError(f"{key} must be one of {', '.join(meta['choices'])}, got {out!r}")
    if "min" in meta and (out < meta["min"] or (meta.get("exclusive_min") and out == meta["min"])):
        op = ">" if meta.get("exclusive_min") else ">="
        raise UserError(f"{key} must be {op} {meta['min']}, got {out}")
    if "max" in meta and out > meta["max"]:
        raise UserError(f"{key} must be <= {meta['max']}, got {out}")
    return out


# What people type out of habit from transformers' Trainer / run_clm.py, nanoGPT and litgpt.
ALIASES = {
    "learning_rate": "optim.lr", "lr": "optim.lr", "min_lr": "optim.min_lr", "weight_decay": "optim.weight_decay",
    "warmup_steps": "optim.warmup_steps", "warmup_iters": "optim.warmup_steps", "lr_warmup_steps": "optim.warmup_steps",
    "warmup_ratio": "optim.warmup_fraction", "lr_scheduler_type": "optim.schedule", "max_grad_norm": "optim.grad_clip",
    "grad_clip": "optim.grad_clip", "adam_beta1": "optim.beta1", "adam_beta2": "optim.beta2", "beta1": "optim.beta1",
    "beta2": "optim.beta2", "adam_epsilon": "optim.eps",
    "per_device_train_batch_size": "train.batch_size", "micro_batch_size": "train.batch_size",
    "batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "num_train_epochs": "train.epochs", "epochs": "train.epochs", "max_steps": "train.max_steps",
    "max_iters": "train.max_steps", "eval_steps": "train.eval_every", "eval_interval": "train.eval_every",
    "eval_iters": "train.eval_batches", "save_steps": "train.ckpt_every", "save_interval": "train.ckpt_every",
    "logging_steps": "train.log_every", "log_interval": "train.log_every", "save_total_limit": "train.keep_last",
    "seed": "train.seed", "gradient_checkpointing": "train.grad_checkpointing", "compile": "train.compile",
    "bf16": "train.precision bf16", "fp16": "train.precision fp16", "dtype": "train.precision",
    "early_stopping_patience": "train.early_stopping",
    "block_size": "model.block_size", "max_seq_length": "model.block_size", "n_layer": "model.n_layer",
    "n_head": "model.n_head", "n_embd": "model.n_embd", "dropout": "model.dropout",
    "model_name_or_path": "--init", "init_from": "--init", "output_dir": "--out", "out_dir": "--out",
    "train_file": "--data", "dataset_name": "--data", "resume_from_checkpoint": "--resume",
    "text_column_name": "data.text_column", "validation_split_percentage": "data.val_fraction (a fraction)",
}


def alias_hint(key: str) -> str | None:
    """`; gpt2kit calls it --optim.lr` for a habitual name (with or without a section), else None."""
    name = key.removeprefix("--").replace("-", "_").split(".")[-1]
    target = ALIASES.get(name)
    if target is None:
        return None
    return f"; gpt2kit calls it {target if target.startswith('--') else '--' + target}"


def _unknown(key: str, known: list[str]) -> UserError:
    shown = key if key.isprintable() else repr(key)  # a key with a newline in it must not break the error line
    hint = alias_hint(key)
    if hint:
        return UserError(f"unknown config key {shown}{hint}")
    near = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {near[0]}?" if near else f"; known: {', '.join(known)}"
    return UserError(f"unknown config key {shown}{hint}")


def all_keys() -> list[str]:
    return [f"{s}.{k}" for s, cls in _sections().items() for k in _field_types(cls)]


def build_config(file_values: dict | None = None, overrides: dict[str, Any] | None = None,
                 base: TrainConfig | None = None) -> TrainConfig:
    """A validated TrainConfig: `base` (or defaults), then the YAML dict, then dotted overrides."""
    flat: dict[str, Any] = {}
    for section, values in (file_values or {}).items():
        if section not in _sections():
            raise _unknown(section, list(_sections()))
        if not isinstance(values, dict):
            raise UserError(f"config section {section!r} must be a mapping of keys to values")
        for k, v in values.items():
            flat[f"{section}.{k}"] = v
    flat.update(overrides or {})
    config = base or TrainConfig()
    sections = {name: dataclasses.asdict(getattr(config, name)) for name in _sections()}
    known = all_keys()
    for key, raw in flat.items():
        section, _, name = key.partition(".")
        types_ = _field_types(_sections().get(section, object)) if section in _sections() else {}
        if name not in types_:
            raise _unknown(key, known)
        tp, f = types_[name]
        sections[section][name] = _coerce(key, raw, tp, dict(f.metadata))
    return TrainConfig(**{name: cls(**sections[name]) for name, cls in _sections().items()})


def parse_overrides(args: list[str]) -> dict[str, str]:
    """['--optim.lr', '3e-4', '--model.n_layer=6'] -> {'optim.lr': '3e-4', 'model.n_layer': '6'}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=")[0]:
            hint = alias_hint(arg.split("=")[0]) if arg.startswith("--") else None
            raise UserError(f"unrecognized argument {arg!r}" + (hint or "; config fields look like --optim.lr 3e-4"))
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise UserError(f"{'--' + key if key.isprintable() else repr('--' + key)} needs a value")
            value = args[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


PRESETS_DIR = Path(__file__).parent / "configs"  # shipped with the package: `--config debug` works anywhere


def presets() -> dict[str, str]:
    """Shipped config presets: name -> the first line of its leading comment."""
    out = {}
    for f in sorted(PRESETS_DIR.glob("*.yaml")):
        first = next((ln.lstrip("# ").strip() for ln in f.read_text().splitlines() if ln.startswith("#")), "")
        out[f.stem] = first
    return out


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or a shipped preset by name (`debug`, `debug.yaml`, `configs/debug.yaml`)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    stem = p.name.removesuffix(".yaml").removesuffix(".yml")
    if (PRESETS_DIR / f"{stem}.yaml").is_file():
        return PRESETS_DIR / f"{stem}.yaml"
    raise UserError(f"config file not found: {path}; pass a YAML file or a preset name "
                    f"({', '.join(presets())}; `gpt2kit configs` lists them)")


def load_yaml(path: str | Path) -> dict:
    p = resolve_config_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; --config takes a YAML file") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a YAML mapping like `optim: {{lr: 3e-4}}`")
    return data


def fields_help() -> str:
    """Every config field, grouped by section, with type, default and meaning (for `train --help`)."""
    lines = ["config fields (--SECTION.FIELD VALUE, or nested in a --config YAML file; docs/CONFIG.md):"]
    for section, cls in _sections().items():
        lines.append(f"  {section}:")
        for name, (tp, f) in _field_types(cls).items():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            tname = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "").replace(" | None", "?")
            choices = f" [{'|'.join(f.metadata['choices'])}]" if "choices" in f.metadata else ""
            lines.append(f"    --{section}.{name} {tname}{choices} (default {default!r})\n"
                         f"        {f.metadata.get('help', '')}")
    return "\n".join(lines)


def reference_markdown() -> str:
    """docs/CONFIG.md, generated from the dataclasses so the reference cannot drift."""
    lines = ["# Configuration reference", "",
             "Generated from `gpt2kit/config.py` (`python -m gpt2kit.config > docs/CONFIG.md`); a test keeps it "
             "in step. Set a field in YAML (`optim: {lr: 3e-4}`) or on the command line (`--optim.lr 3e-4`); "
             "the command line wins.", ""]
    for section, cls in _sections().items():
        lines += [f"## `{section}`", "", "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, (tp, f) in _field_types(cls).items():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            tname = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
            extra = f" ({', '.join(f.metadata['choices'])})" if "choices" in f.metadata else ""
            lines.append(f"| `{section}.{name}` | {tname} | `{default!r}` | {f.metadata.get('help', '')}{extra} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
