"""What is trained when fine-tuning: every weight, the top blocks only, or LoRA adapters (through `peft`).

`apply_mode(model, args)` sets `requires_grad` (and, for LoRA, injects peft's adapter layers into our own
`nn.Linear`s, so the model stays a `GPT` and the training loop does not change). The optimizer then holds
only trainable parameters.

Partial modes (freeze, lora) checkpoint only what changes: the trainable tensors under their module names
(`transformer.h.0.attn.c_attn.lora_A.default.weight`, ...), with `config.json` saying how to rebuild:

    "finetune": {"mode": "lora", "lora_rank": 8, ..., "base_sha256": "<sha of RUN/base/model.safetensors>"}

The starting weights are written once per run to RUN/base/ (a complete gpt2kit model directory), so a
checkpoint never depends on the `--init` source still being there. `load_partial` rebuilds: base, mode,
trained tensors; for inference LoRA is merged into the base weights (peft's own merge) and the adapters
removed, which gives a plain GPT-2 that `export` writes and `transformers` loads.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import torch

from gpt2kit.config import FinetuneArgs
from gpt2kit.errors import UserError
from gpt2kit.model import GPT

PARTIAL_MODES = ("freeze", "lora")
BASE_DIR = "base"


def _matches(name: str, part: str) -> bool:
    """`ln_f` matches transformer.ln_f.weight; `h.0.attn` matches transformer.h.0.attn.*; globs work too."""
    return f".{part}." in f".{name}." or fnmatch.fnmatch(name, part) or fnmatch.fnmatch(name, f"*.{part}.*")


def check_mode(model: GPT, args: FinetuneArgs) -> None:
    """The mode's options against the model (blocks, part names, LoRA targets): a UserError before any data
    is read, not after."""
    if args.mode == "freeze":
        L = model.config.n_layer
        if args.train_blocks > L:
            raise UserError(f"finetune.train_blocks {args.train_blocks} exceeds the model's {L} blocks; "
                            f"use at most {L}")
        names = [n for n, _ in model.named_parameters()]
        for part in args.train_parts:
            if not any(_matches(n, part) for n in names):
                raise UserError(f"finetune.train_parts: no parameter matches {part!r}; parts look like ln_f, wte, "
                                "wpe, lm_head, h.11, h.11.attn (see `gpt2kit info`)")
    elif args.mode == "lora":
        linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        linear.discard("score")  # a classifier's head trains whole, never through adapters
        unknown = [t for t in args.lora_targets if t not in linear]
        if unknown or not args.lora_targets:
            raise UserError(f"finetune.lora_targets: {', '.join(unknown) or 'none given'} is not a Linear layer "
                            f"of the model; choose from {', '.join(sorted(linear))}")


def apply_mode(model: GPT, args: FinetuneArgs) -> GPT:
    """Make only what `args.mode` trains require gradients (and add LoRA adapters); returns the model.
    A classifier's head (`score`, new and small) trains in every mode."""
    check_mode(model, args)
    if args.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif args.mode == "freeze":
        L = model.config.n_layer
        trained = [f"transformer.h.{i}" for i in range(L - args.train_blocks, L)]
        for name, p in model.named_parameters():
            p.requires_grad_(any(_matches(name, t) for t in trained) or any(_matches(name, t) for t in args.train_parts))
    else:
        model = _inject_lora(model, args)
    if hasattr(model, "score"):
        model.score.weight.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("finetune.mode freeze with nothing to train; set finetune.train_blocks or "
                        "finetune.train_parts")
    return model


def _lora_config(args: FinetuneArgs):
    try:
        from peft import LoraConfig
    except ImportError:
        raise UserError("finetune.mode lora needs peft; pip install 'gpt2kit[finetune]' (or peft)") from None
    return LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=list(args.lora_targets), bias="none")


def _inject_lora(model: GPT, args: FinetuneArgs) -> GPT:
    from peft import inject_adapter_in_model

    for p in model.parameters():
        p.requires_grad_(False)
    return inject_adapter_in_model(_lora_config(args), model)  # adapters require grad, the rest is frozen


def merge_lora(model: GPT) -> GPT:
    """Fold every LoRA adapter into its base weight (W += B A * alpha / r) and remove the adapters."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    return model


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def describe(model: torch.nn.Module, mode: str) -> str:
    """`trainable 1.2M of 124.4M parameters (0.95%), mode lora` (tied weights counted once)."""
    from gpt2kit.model import model_size

    total = sum(p.numel() for p in model.parameters())  # parameters() yields a shared weight once
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"trainable {model_size(trainable)} of {model_size(total)} parameters "
            f"({100 * trainable / max(1, total):.2f}%), finetune.mode {mode}")


def partial_state_dict(full: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """The trained tensors of a full state dict (what a partial checkpoint stores)."""
    missing = [n for n in names if n not in full]
    if missing:
        raise RuntimeError(f"trainable parameters missing from the state dict: {missing[:3]}")
    return {n: full[n] for n in names}


def finetune_meta(args: FinetuneArgs, base_sha256: str) -> dict:
    """What config.json records so a partial checkpoint can be rebuilt."""
    meta = {"mode": args.mode, "base_sha256": base_sha256}
    if args.mode == "freeze":
        meta.update(train_blocks=args.train_blocks, train_parts=list(args.train_parts))
    else:
        meta.update(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                    lora_targets=list(args.lora_targets))
    return meta


def args_from_meta(meta: dict) -> FinetuneArgs:
    known = {k: v for k, v in meta.items() if k in FinetuneArgs.__dataclass_fields__}
    return FinetuneArgs(**known)


def base_sha256(base: Path) -> str:
    """The base weights' sha256 as recorded in its MANIFEST (no re-hash of gigabytes on every load)."""
    try:
        return json.loads((base / "MANIFEST.json").read_text())["model.safetensors"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{base} is not a complete base model directory (no MANIFEST.json); the run is damaged") from None


def find_base(checkpoint: Path) -> Path:
    """RUN/base for a checkpoint under RUN/checkpoints/ (also RUN/checkpoints/abandoned-*/step-*)."""
    for parent in list(checkpoint.resolve().parents)[:3]:
        if (parent / BASE_DIR / "COMPLETE").is_file():
            return parent / BASE_DIR
    raise UserError(f"{checkpoint} holds only fine-tuned weights and its run's base/ directory is missing; "
                    "keep checkpoints inside their run directory, or export the run with `gpt2kit export`")


def load_partial(directory: Path, meta: dict, trained: dict[str, torch.Tensor], *, merge: bool) -> GPT:
    """A model from a partial checkpoint: RUN/base + the mode + the trained tensors (LoRA merged if `merge`)."""
    from gpt2kit.checkpoint import load_gpt2kit_dir

    base = find_base(directory)
    if base_sha256(base) != meta["base_sha256"]:
        raise UserError(f"{base} is not the base model {directory} was trained from (sha256 differs); "
                        "the run directory was mixed with another one")
    model = apply_mode(load_gpt2kit_dir(base), args_from_meta(meta))
    expected = set(trainable_names(model))
    if meta["mode"] == "freeze" and model.config.tie_embeddings and "transformer.wte.weight" in expected:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(trained)), sorted(set(trained) - expected)
    if missing or unexpected:
        raise UserError(f"the fine-tuned weights in {directory} do not fit its base model (missing: "
                        f"{', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'})")
    model.load_state_dict(trained, strict=False)
    if merge and meta["mode"] == "lora":
        model = merge_lora(model)
    if merge:
        for p in model.parameters():
            p.requires_grad_(True)
    return model
