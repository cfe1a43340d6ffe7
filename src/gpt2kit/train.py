"""The training loop: pretrain or fine-tune GPT-2 with Accelerate, resumable to the bit.

Read `train()` top to bottom: set up (run dir, tokenizer, data, model, optimizer, resume), then
one flat loop — learning rate from a pure function, accumulate token-weighted micro-batches,
clip, guard against non-finite values, step, log, and "once in a while" evaluate and checkpoint.
A `last_step` flag makes the final evaluation and save happen inside the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt2kit.atomic import write_text_atomic
from gpt2kit.checkpoint import (
    choose_checkpoint,
    complete_checkpoints,
    find_checkpoint,
    load_checkpoint_state,
    load_gpt2kit_dir,
    load_model,
    prune_checkpoints,
    recover_interrupted,
    save_base,
    save_checkpoint,
    tokenizer_source,
    update_checkpoint_state,
)
from gpt2kit.config import OptimArgs, TrainConfig
from gpt2kit.errors import UserError
from gpt2kit.metrics import MetricsLogger, check_trackers, flops_per_token, peak_flops
from gpt2kit.model import GPT, GPTConfig, model_size, num_params
from gpt2kit.optim import Muon
from gpt2kit.rundir import MARKER, RunLock, is_empty, is_run_dir, remove_run_files, write_marker

# ---------------------------------------------------------------- pure pieces


def get_lr(step: int, optim: OptimArgs, max_steps: int) -> float:
    """Learning rate at optimizer step `step` (1-based): linear warmup, then cosine/linear/constant
    decay from `lr` to `min_lr` at `max_steps`; or wsd: constant `lr`, then a linear decay to `min_lr`
    over the last `decay_fraction` of the steps (warmup-stable-decay)."""
    min_lr = optim.lr / 10 if optim.min_lr is None else optim.min_lr
    warmup = effective_warmup(optim.warmup_steps, max_steps)
    if step <= warmup:
        return optim.lr * step / max(1, warmup)
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule == "wsd":
        decay_start = max(warmup, max_steps - round(optim.decay_fraction * max_steps))
        if step <= decay_start:
            return optim.lr
        return optim.lr + (min_lr - optim.lr) * min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if optim.schedule == "linear":
        return optim.lr + (min_lr - optim.lr) * progress
    return min_lr + 0.5 * (optim.lr - min_lr) * (1 + math.cos(math.pi * progress))


def effective_warmup(warmup_steps: int, max_steps: int) -> int:
    """Warmup as configured, unless it would fill the whole run (a short fine-tune with the default
    100 warmup steps would never reach its peak LR): then a tenth of the run."""
    return warmup_steps if warmup_steps < max_steps else max_steps // 10


def make_optimizer(model: GPT, optim: OptimArgs, device_type: str) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on matrices only: no decay for biases and LayerNorm
    (1-D), nor embeddings unless `decay_embeddings`. With `optim.name` muon, the blocks' 2-D weight
    matrices go to Muon instead (gpt2kit.optim), the rest to AdamW as above."""
    embeddings = {id(model.transformer.wte.weight)}
    if "wpe" in model.transformer:
        embeddings.add(id(model.transformer.wpe.weight))
    hidden = {id(p) for p in model.transformer.h.parameters() if p.dim() == 2} if optim.name == "muon" else set()
    decay, no_decay, matrices = [], [], []
    for p in model.parameters():  # parameters() yields a tied weight once
        if not p.requires_grad:
            continue
        if id(p) in hidden:
            matrices.append(p)
        elif p.dim() < 2 or (id(p) in embeddings and not optim.decay_embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optim.name == "muon":
        return Muon(matrices, groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                    muon_lr=optim.muon_lr, momentum=optim.muon_momentum, nesterov=optim.muon_nesterov,
                    muon_weight_decay=optim.muon_weight_decay, ns_steps=optim.muon_ns_steps)
    # fused is fastest on GPU; on CPU foreach is, and both are bitwise deterministic there.
    kw = {"fused": True} if device_type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, **kw)


def cpu_supports_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run at about twice the fp32 speed there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_train_device(device: str) -> str:
    """train.device -> 'cuda', 'mps' or 'cpu' (auto: the best available), or a UserError when it is absent."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device cuda, but no CUDA device is visible; use --train.device auto or cpu")
    if device == "mps" and not has_mps:
        raise UserError("train.device mps, but Apple MPS is not available here; use --train.device auto or cpu")
    return device


def launcher_processes() -> int | None:
    """How many processes the launcher that started us was asked for (accelerate launch --num_processes,
    torchrun --nproc_per_node x --nnodes), read from the parent's command line; None when unknown."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    if not any("accelerate" in a or "torchrun" in a or "torch.distributed.run" in a for a in argv[:3]):
        return None

    def value(*names: str) -> int | None:
        for i, a in enumerate(argv):
            for n in names:
                if a == n and i + 1 < len(argv) and argv[i + 1].isdigit():
                    return int(argv[i + 1])
                if a.startswith(n + "=") and a.split("=", 1)[1].isdigit():
                    return int(a.split("=", 1)[1])
        return None

    per_node = value("--num_processes", "--num-processes", "--nproc_per_node", "--nproc-per-node")
    nodes = value("--nnodes", "--num_machines", "--num-machines") or 1
    if per_node is None:
        return None
    return per_node if "--num_processes" in argv or "--num-processes" in argv else per_node * nodes


def resolve_precision(precision: str, device_type: str) -> str:
    """Accelerate's mixed_precision name ('no', 'bf16', 'fp16') for train.precision."""
    if precision == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device_type == "cpu" and cpu_supports_bf16() else "no"
    if precision == "fp16" and device_type == "cpu":
        raise UserError("train.precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return {"fp32": "no"}.get(precision, precision)


# ---------------------------------------------------------------- RNG state, JSON-able


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2]}
    np_state = np.random.get_state()
    state["numpy"] = {"keys": np_state[1].tolist(), "pos": int(np_state[2])}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", np.array(state["numpy"]["keys"], dtype=np.uint32), state["numpy"]["pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- set-up helpers


class StopRequested:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint at the next step boundary."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step", file=sys.stderr)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


STATE_KEYS = ("step", "tokens", "rng", "loader")  # what a resume reads from state.json


@dataclass
class RunPlan:
    """What `open_run` decided about `--out`: the checkpoint to resume from (with its state and optimizer state
    when this process loaded them), and whether to remove the old run's files once set-up has succeeded."""

    resume_ckpt: Path | None = None
    wipe: bool = False
    saved_state: dict | None = None
    opt_state: dict | None = None


def check_out(out: Path, resume: str | None, overwrite: bool) -> None:
    """The mistakes `--out` / `--resume` / `--overwrite` can hold that need no lock to see (nothing is written)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory for the run")
    if is_empty(out) or is_run_dir(out):
        return
    what = f"{out} is not a gpt2kit run directory (it has no {MARKER} marker) and is not empty"
    if overwrite:
        raise UserError(f"{what}; --overwrite only replaces runs, so nothing was deleted - choose another --out")
    if resume:
        raise UserError(f"{what}; --resume {resume} only continues into a run, so nothing was changed - "
                        "choose another (new or empty) --out")
    raise UserError(f"{what}; choose another (new or empty) --out")


def open_run(out: Path, resume: str | None, overwrite: bool, warn: Callable[[str], None]) -> RunPlan:
    """Decide how `train` treats `out` (call it holding the run's lock). Nothing is deleted here: a mistake found
    later in set-up must leave the old run intact."""
    check_out(out, resume, overwrite)  # again: another process may have changed --out before we held the lock
    fresh = is_empty(out)
    if resume == "auto":
        if fresh:
            return RunPlan()
        recover_interrupted(out / "checkpoints")
        found = choose_checkpoint(out, STATE_KEYS, warn)
        if found is None:
            warn(f"{out} has no checkpoint yet: starting it from step 0")
            return RunPlan()
        return RunPlan(found[0], False, found[1], found[2])
    if resume:
        ckpt = Path(resume).expanduser()
        if (ckpt / "checkpoints").is_dir():
            found = choose_checkpoint(ckpt, STATE_KEYS, warn)
            if found is None:
                raise UserError(f"--resume {resume}: that run has no checkpoint yet; use --resume auto or a "
                                "step-* dir")
            return RunPlan(found[0], False, found[1], found[2])
        if not ckpt.is_dir() or not (ckpt / "COMPLETE").exists():
            raise UserError(f"--resume {resume}: no complete checkpoint there; use --resume auto or a step-* dir")
        saved, opt = load_checkpoint_state(ckpt, STATE_KEYS)
        return RunPlan(ckpt, False, saved, opt)
    if not fresh and not overwrite:
        raise UserError(f"run directory {out} already exists; pass --resume auto to continue it, "
                        "--overwrite to start over, or choose another --out")
    return RunPlan(wipe=not fresh)


def set_aside_later_checkpoints(ckpt_root: Path, step: int) -> None:
    """Resuming from an older checkpoint: move the newer ones out of the way (kept, never deleted),
    so `latest`, `best` and pruning only ever see the run being continued."""
    later = [d for d in complete_checkpoints(ckpt_root) if int(d.name.split("-")[1]) > step]
    if not later:
        return
    aside = ckpt_root / f"abandoned-after-{step:08d}-{int(time.time())}"
    aside.mkdir()
    for d in later:
        os.replace(d, aside / d.name)
    best = ckpt_root / "best"
    if best.exists() and not (ckpt_root / best.read_text().strip()).is_dir():
        best.unlink()
    write_text_atomic(ckpt_root / "latest", f"step-{step:08d}\n")
    print(f"newer checkpoints than step {step} moved to {aside}", file=sys.stderr)


def on_main(accelerator, fn):
    """Run `fn` on rank 0 only; its (picklable) result, or its UserError, reaches every rank."""
    from accelerate.utils import broadcast_object_list

    box = [None, None]
    if accelerator.is_main_process:
        try:
            box[0] = fn()
        except UserError as e:
            box[1] = str(e)
    if accelerator.num_processes > 1:
        broadcast_object_list(box)
    if box[1] is not None:
        raise UserError(box[1])
    return box[0]


def main_first(accelerator, fn):
    """Run `fn` on rank 0, then on the others (which reuse its cached work). A UserError on rank 0
    reaches every rank, so no rank is left waiting at a barrier."""
    from accelerate.utils import broadcast_object_list

    result, error = None, [None]
    if accelerator.is_main_process:
        try:
            result = fn()
        except UserError as e:
            error = [str(e)]
    if accelerator.num_processes > 1:
        broadcast_object_list(error)
    if error[0] is not None:
        raise UserError(error[0])
    return result if accelerator.is_main_process else fn()


def full_state_dict(accelerator, model) -> dict:
    """The full weights under their plain names (FSDP gathers them; torch.compile adds `_orig_mod.`)."""
    sd = accelerator.get_state_dict(model)  # a collective under FSDP: every rank calls it
    return {k.removeprefix("_orig_mod."): v for k, v in sd.items()}


def load_tokenizer_for(cfg: TrainConfig, data_dir_hint: Path | None):
    """The tokenizer: explicit data.tokenizer, else the prepared data's, else --init's, else GPT-2."""
    from gpt2kit.tokenizer import load_tokenizer

    if cfg.data.tokenizer:
        return load_tokenizer(cfg.data.tokenizer)
    if data_dir_hint is not None and (data_dir_hint / "tokenizer.json").exists():
        return load_tokenizer(str(data_dir_hint))
    if cfg.model.init:
        src = tokenizer_source(cfg.model.init)
        if src:
            return load_tokenizer(src)
    return load_tokenizer("gpt2")


def check_init_tokenizer(cfg: TrainConfig, meta: dict, data_dir: Path, resume_ckpt: Path | None) -> None:
    """Fine-tuning on data tokenized by another tokenizer than the --init model's trains on garbage ids."""
    from gpt2kit.tokenizer import load_tokenizer

    if not cfg.model.init or cfg.data.tokenizer or resume_ckpt is not None or cfg.train.resize_embeddings:
        return
    src = tokenizer_source(cfg.model.init)
    if src and load_tokenizer(src).sha256 != meta.get("tokenizer_sha256"):
        raise UserError(f"the data in {data_dir} was tokenized with another tokenizer than the --init model's "
                        f"({src}); prepare the data with --tokenizer {src}, or pass --tokenizer to train with it anyway")


def resize_vocab(model: GPT, vocab_size: int) -> GPT:
    """Grow the token embedding (and untied head) to `vocab_size`; new rows ~ N(0, 0.02)."""
    old = model.config.vocab_size
    wte = model.transformer.wte.weight.data
    new_wte = torch.empty(vocab_size, wte.size(1), dtype=wte.dtype).normal_(0.0, 0.02)
    new_wte[:old] = wte
    cfg = GPTConfig.from_dict({**model.config.to_dict(), "vocab_size": vocab_size})
    sd = model.state_dict()
    sd["transformer.wte.weight"] = new_wte
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    else:
        head = torch.empty_like(new_wte).normal_(0.0, 0.02)
        head[:old] = sd["lm_head.weight"]
        sd["lm_head.weight"] = head
    new = GPT(cfg)
    new.load_state_dict(sd, strict=not cfg.tie_embeddings)
    return new


def build_model(cfg: TrainConfig, vocab_size: int, resumed_from: Path | None,
                check: Callable[[GPT], None] | None = None) -> GPT:
    """From a checkpoint we resume, from --init weights, or fresh from the preset + overrides.
    `check(model)` sees a fresh model on the meta device first, before any memory is allocated for it."""
    m = cfg.model
    if resumed_from is not None:
        model = load_gpt2kit_dir(resumed_from, merge=False)  # LoRA resumes with its adapters apart
        changed = sorted(k for k, v in m.overrides().items()
                         if k not in ("dropout", "vocab_size") and getattr(model.config, k) != v)
        if changed:
            k = changed[0]
            raise UserError(f"model.{k} is {getattr(m, k)} but the checkpoint being resumed has "
                            f"{getattr(model.config, k)}; a resumed run keeps its architecture - start a new --out")
        return model.train()
    if m.init:
        model = load_model(m.init)
        over = m.overrides()
        allowed = {"dropout", "block_size", "vocab_size"}
        fixed = sorted(k for k, v in over.items() if k not in allowed and getattr(model.config, k) != v)
        if fixed:
            raise UserError(f"model.{fixed[0]} cannot differ from the --init model's "
                            f"({getattr(model.config, fixed[0])}); remove it from the config")
        if "block_size" in over and over["block_size"] != model.config.block_size:
            model = crop_block_size(model, over["block_size"])
        if "dropout" in over:
            model.config.dropout = over["dropout"]
            for mod in model.modules():
                if isinstance(mod, torch.nn.Dropout):
                    mod.p = over["dropout"]
                elif hasattr(mod, "dropout") and isinstance(mod.dropout, float):
                    mod.dropout = over["dropout"]
        want = over.get("vocab_size", vocab_size)
        if want > model.config.vocab_size:
            if not cfg.train.resize_embeddings:
                raise UserError(
                    f"the tokenizer has {vocab_size} ids but the --init model only {model.config.vocab_size}; "
                    "use the model's own tokenizer, or pass --train.resize_embeddings true to grow the model")
            model = resize_vocab(model, want)
        return model.train()
    overrides = m.overrides()
    overrides.setdefault("vocab_size", vocab_size)
    if overrides["vocab_size"] < vocab_size:
        raise UserError(f"model.vocab_size ({overrides['vocab_size']}) is smaller than the tokenizer's "
                        f"{vocab_size} ids; remove model.vocab_size or set it >= {vocab_size}")
    config = GPTConfig.from_preset(m.preset, **overrides)
    if check is not None:
        with torch.device("meta"):  # costs no memory and draws no random numbers
            check(GPT(config))
    return GPT(config).train()


def check_memory(model: GPT, cfg: TrainConfig, block_size: int, device: torch.device | str, mixed: str,
                 processes: int = 1) -> None:
    """A UserError saying how much memory training `model` (real or on the meta device) needs and how much
    there is, when it cannot fit; `processes` share the device (CPU ranks of one machine)."""
    from gpt2kit.errors import flag
    from gpt2kit.memory import check_fits, human, training_bytes

    t = cfg.train
    states, acts = training_bytes(model, t.batch_size, block_size,
                                  activation_bytes=2 if mixed in ("bf16", "fp16") else 4,
                                  grad_checkpointing=t.grad_checkpointing, logits=t.task == "lm")
    need = (states + acts) * processes
    short = check_fits(need, device)
    if short is None:
        return
    if states >= acts:
        fix = (f"use a smaller model ({flag('model.preset')}, {flag('model.n_layer')}, {flag('model.n_embd')})"
               + (f", or {flag('finetune.mode')} lora" if cfg.model.init else ""))
    else:
        fix = (f"lower {flag('train.batch_size')} (raise {flag('train.grad_accum')} to keep the batch) or "
               f"{flag('model.block_size')}" + ("" if t.grad_checkpointing else
                                               f", or set {flag('train.grad_checkpointing')} true"))
    each = f" for each of {processes} processes" if processes > 1 else ""
    raise UserError(f"training needs at least {human(need)} of memory{each} (weights, gradients and AdamW moments of "
                    f"{model_size(model)} parameters: {human(states)}; activations of a {t.batch_size} x "
                    f"{block_size} batch: {human(acts)}) but {human(short[0])} is {short[1]}; {fix}")


def crop_block_size(model: GPT, block_size: int) -> GPT:
    """Use a shorter context than the model was trained with (fine-tuning on short texts)."""
    if block_size > model.config.block_size and not model.config.rope:
        raise UserError(f"model.block_size {block_size} exceeds the --init model's "
                        f"{model.config.block_size} positions; use at most {model.config.block_size}")
    model.config.block_size = block_size
    if not model.config.rope:
        model.transformer.wpe.weight = torch.nn.Parameter(model.transformer.wpe.weight[:block_size].clone())
        model.transformer.wpe.num_embeddings = block_size
    return model


# ---------------------------------------------------------------- the loop


@dataclass
class RunResult:
    step: int
    tokens: int
    best_val_loss: float | None
    last_val_loss: float | None
    checkpoint: Path | None
    seconds: float
    exit_code: int = 0


@dataclass
class LoopState:
    """Everything the loop carries from step to step; saved in state.json, so a resume continues it exactly."""

    step: int = 0
    tokens: int = 0  # target tokens seen (tokens that carry a loss)
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    best_ckpt_val_loss: float | None = None  # the best among evaluated *checkpoints* (what `best` points to)
    evals_since_best: int = 0
    skipped: int = 0  # non-finite updates skipped in a row
    stopped_early: bool = False
    elapsed: float = 0.0  # seconds of training before this process

    def to_json(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_json(cls, state: dict) -> LoopState:
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})


def plan_steps(t, batches_per_epoch: int) -> tuple[int, int]:
    """(max_steps, steps per epoch): train.epochs or train.max_steps (default 1000), not both."""
    steps_per_epoch = -(-batches_per_epoch // t.grad_accum)
    if t.epochs is not None and t.max_steps is not None:
        raise UserError(f"train.max_steps ({t.max_steps}) and train.epochs ({t.epochs:g}) both set; set one of "
                        "them (the other to null)")
    if t.epochs is not None:
        return max(1, math.ceil(t.epochs * steps_per_epoch)), steps_per_epoch
    return t.max_steps or DEFAULT_MAX_STEPS, steps_per_epoch


DEFAULT_MAX_STEPS = 1000


def is_partial(cfg: TrainConfig) -> bool:
    from gpt2kit.finetune import PARTIAL_MODES

    return cfg.finetune.mode in PARTIAL_MODES


def check_resume_mode(cfg: TrainConfig, resume_ckpt: Path | None) -> None:
    if resume_ckpt is None:
        return
    saved = json.loads((resume_ckpt / "config.json").read_text()).get("finetune", {}).get("mode", "full")
    if saved != cfg.finetune.mode:
        raise UserError(f"finetune.mode is {cfg.finetune.mode} but the checkpoint being resumed was trained with "
                        f"{saved}; resume with the same mode or start a new --out")


def finish_model(cfg: TrainConfig, model: GPT, labels: list[str] | None, resume_ckpt: Path | None
                 ) -> tuple[GPT, dict | None]:
    """(the model to train: a classifier head added for train.task classify, the fine-tuning mode applied;
    the starting weights to keep in RUN/base when a partial mode starts now)."""
    from gpt2kit.classify import GPTClassifier
    from gpt2kit.finetune import apply_mode

    if cfg.train.task == "classify":
        if isinstance(model, GPTClassifier):
            if model.labels != labels:
                raise UserError(f"the model classifies into {', '.join(model.labels)} but the data's labels are "
                                f"{', '.join(labels)}; use data with the same labels, or --init a language model")
        else:
            model = GPTClassifier.from_lm(model, labels)  # a fresh head from the seeded RNG
    elif isinstance(model, GPTClassifier):
        raise UserError("the model is a classifier; fine-tune it with --task classify (train.task classify), "
                        "or --init a language model")
    base = None
    if resume_ckpt is None and is_partial(cfg):
        base = dict(model.state_dict())  # the same tensors: written to RUN/base before any step changes them
    if resume_ckpt is None or not is_partial(cfg):
        model = apply_mode(model, cfg.finetune)
    return model.train(), base


class _Hold:
    """The run's lock while `train` runs, and whether the run directory was written yet (if not, a failed
    set-up removes the lock file and any directory it created)."""

    def __init__(self):
        self.lock = None
        self.written = False

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release(failed_setup=not self.written)


def train(cfg: TrainConfig, out: str | os.PathLike, resume: str | None = None, overwrite: bool = False,
          quiet: bool = False, on_eval: Callable[[int, dict], bool | None] | None = None) -> RunResult:
    """Train `cfg` into run directory `out` (see the module docstring), holding the run's lock throughout.

    on_eval(step, metrics) runs after every evaluation; a true result ends the run there as early stopping
    does (final checkpoint, normal return): how `gpt2kit sweep` prunes a hopeless trial."""
    hold = _Hold()
    try:
        return _train(cfg, Path(out), resume, overwrite, quiet, on_eval, hold)
    finally:
        hold.release()


def _train(cfg: TrainConfig, out: Path, resume: str | None, overwrite: bool, quiet: bool,
           on_eval: Callable[[int, dict], bool | None] | None, hold: _Hold) -> RunResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, gather_object

    from gpt2kit.classify import ClassifyTask, plot_confusion
    from gpt2kit.data import build_data
    from gpt2kit.finetune import (
        base_sha256,
        check_mode,
        describe,
        finetune_meta,
        partial_state_dict,
        trainable_names,
    )
    from gpt2kit.prepare import check_vocab
    from gpt2kit.tasks import LMTask

    t_start = time.time()
    t = cfg.train
    plan_steps(t, 1)  # train.epochs together with train.max_steps: say so before any data is prepared
    device_type = resolve_train_device(t.device)
    report_to = list(dict.fromkeys([*t.report_to, *(["wandb"] if t.wandb else [])]))
    check_trackers(report_to)
    mixed = resolve_precision(t.precision, device_type)
    # Accelerate keeps its settings in a process-wide singleton; reset them so that train() can be
    # called again in the same process with another precision (the distributed state is kept).
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed, cpu=device_type == "cpu")
    is_main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    log = (lambda *a: print(*a, file=sys.stderr)) if is_main and not quiet else (lambda *a: None)
    asked = launcher_processes()
    if asked and asked > world:
        log(f"warning: the launcher was asked for {asked} processes but {world} is running (`accelerate launch "
            "--cpu` starts one; use `--multi_gpu --num_processes N`, or torchrun --nproc_per_node N, for N CPU "
            "processes)")

    # ---- the run directory: rank 0 locks it and decides; every rank learns the decision (or the error)
    plan: RunPlan | None = None

    def decide() -> RunPlan:
        nonlocal plan
        check_out(out, resume, overwrite)  # before a lock file is created in a directory that is not a run
        hold.lock = RunLock(out)
        plan = open_run(out, resume, overwrite, log)
        return RunPlan(plan.resume_ckpt, plan.wipe)  # what the other ranks need, without the loaded state

    shared = on_main(accelerator, decide)
    plan = plan if is_main else shared
    resume_ckpt, wipe = plan.resume_ckpt, plan.wipe
    state = LoopState()
    if resume_ckpt is not None and plan.saved_state is None:
        plan.saved_state, plan.opt_state = load_checkpoint_state(resume_ckpt, STATE_KEYS)
    saved_state, opt_state = (plan.saved_state, plan.opt_state) if resume_ckpt is not None else ({}, None)
    if saved_state.get("stopped_early"):
        log(f"{out} stopped early at step {saved_state['step']} (no better val loss in {t.early_stopping} "
            "evaluations); nothing to resume - start a new --out, or --overwrite, to train again")
        return RunResult(saved_state["step"], saved_state["tokens"], saved_state.get("best_val_loss"),
                         saved_state.get("last_val_loss"), resume_ckpt, 0.0)

    # ---- tokenizer, model, data
    first = Path(cfg.data.sources[0]).expanduser() if cfg.data.sources else None
    prepared_hint = first if first is not None and len(cfg.data.sources) == 1 and (first / "meta.json").exists() else None
    tokenizer = load_tokenizer_for(cfg, prepared_hint)
    seed_everything(t.seed)  # same init on every rank
    check_resume_mode(cfg, resume_ckpt)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", world)) if device_type != "cuda" else 1  # sharing RAM

    def fits(m: GPT) -> None:
        check_memory(m, cfg, m.config.block_size, accelerator.device, mixed, processes)

    # A fresh model is checked before it exists; a partial fine-tune once its mode says what trains.
    model = build_model(cfg, tokenizer.vocab_size, resume_ckpt, check=fits if cfg.finetune.mode == "full" else None)
    if resume_ckpt is None:
        check_mode(model, cfg.finetune)
    block_size = model.config.block_size
    data = build_data(cfg, tokenizer, block_size, rank=rank, world=world,
                      run_first=lambda fn: main_first(accelerator, fn))
    if data.meta is not None:
        check_init_tokenizer(cfg, data.meta, data.data_dir, resume_ckpt)
        check_vocab(data.meta["vocab_size"], model.config.vocab_size, f"the data in {data.data_dir}")
    model, base_weights = finish_model(cfg, model, data.labels, resume_ckpt)
    fits(model)
    classify = t.task == "classify"
    chunked = t.chunked_loss == "on" or (t.chunked_loss == "auto" and accelerator.device.type == "cuda")
    task = ClassifyTask(data.labels, data.class_weights) if classify else LMTask(data.bytes_per_token, chunked)
    train_loader, val_loader = data.train, data.val
    B, A = t.batch_size, t.grad_accum
    max_steps, steps_per_epoch = plan_steps(t, train_loader.batches_per_epoch)
    aligned = t.epochs is not None
    optim = cfg.optim
    if optim.warmup_fraction is not None:
        optim = dataclasses.replace(optim, warmup_steps=round(optim.warmup_fraction * max_steps))
    model.grad_checkpointing = t.grad_checkpointing
    device = accelerator.device
    model.to(device)
    if optim.name == "muon" and accelerator.distributed_type == DistributedType.FSDP:
        raise UserError("optim.name muon orthogonalises whole weight matrices, which FSDP shards; "
                        "train with DDP, or use optim.name adamw")
    optimizer = make_optimizer(model, optim, device.type)
    partial = is_partial(cfg)
    trained = trainable_names(model)

    # ---- resume
    if resume_ckpt is not None:
        if opt_state is not None:
            saved = "muon" if opt_state["optimizer"]["param_groups"][0].get("use_muon") else "adamw"
            if saved != optim.name:
                raise UserError(f"optim.name is {optim.name} but the checkpoint being resumed was trained with "
                                f"{saved}; a resumed run keeps its optimizer - set optim.name {saved} or start a new --out")
            optimizer.load_state_dict(opt_state["optimizer"])
        state = LoopState.from_json(saved_state)
        try:
            train_loader.load_state_dict(saved_state["loader"])
            rngs = saved_state["rng"]
            set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        except UserError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{resume_ckpt / 'state.json'} has a damaged loader position or RNG state "
                            f"({type(e).__name__}: {e}); resume from an earlier checkpoint") from None
        log(f"resuming from {resume_ckpt} (step {state.step}, {state.tokens:,} tokens)")
    else:
        seed_everything(t.seed + rank)  # dropout masks differ across ranks

    raw_model = model
    if t.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    if opt_state is not None and opt_state.get("scaler") is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(opt_state["scaler"])
    # Evaluation runs on the plain module (no DDP collectives per forward, so ranks may hold unequal shares);
    # FSDP needs its wrapper to gather the weights.
    eval_model = model if accelerator.distributed_type == DistributedType.FSDP else raw_model

    # ---- run directory: set-up succeeded, so now (and only now) an old run may be replaced
    if is_main:
        if wipe:
            kept = remove_run_files(out)
            if kept:
                log(f"--overwrite: kept {len(kept)} entries gpt2kit did not write in {out}: {', '.join(kept[:5])}"
                    + (", ..." if len(kept) > 5 else ""))
        out.mkdir(parents=True, exist_ok=True)
        hold.written = True
        write_marker(out)
        if resume_ckpt is not None and resume_ckpt.parent == out / "checkpoints":
            set_aside_later_checkpoints(out / "checkpoints", state.step)
        write_text_atomic(out / "config.yaml", cfg.to_yaml())
        if resume_ckpt is None or not (out / "tokenizer").exists():
            if (out / "tokenizer").exists():
                shutil.rmtree(out / "tokenizer")
            tokenizer.save(out / "tokenizer")
        if base_weights is not None:
            save_base(out, raw_model, base_weights)
    base_weights = None
    ft_meta = finetune_meta(cfg.finetune, base_sha256(out / "base")) if partial and is_main else None
    metrics = MetricsLogger(out, resume_step=state.step, report_to=report_to, hparams=cfg.to_dict()) if is_main else None

    # Printed once set-up has succeeded, so a mistake found during set-up stays a single `error:` line.
    log("config:\n  " + cfg.to_yaml().replace("\n", "\n  ").rstrip())
    log(f"model: {model_size(raw_model)} parameters, block {block_size}, vocab {raw_model.config.vocab_size}; "
        f"{describe(raw_model, cfg.finetune.mode)}")
    log(data.summary)
    eval_batches = t.eval_batches if t.eval_batches is not None else default_eval_batches(val_loader, world)
    evaluated_tokens, val_total = val_loader.eval_tokens(eval_batches or None)
    log(f"validation: {'all ' if evaluated_tokens == val_total else 'a fixed sample of '}{evaluated_tokens:,}"
        + ("" if evaluated_tokens == val_total else f" of {val_total:,}")
        + (" examples" if classify else " target tokens") + " per evaluation")
    log(f"device: {device} x{world}, precision: {mixed}, global batch {B * A * world} x {block_size} tokens")
    if aligned:
        log(f"1 epoch = {steps_per_epoch} steps; {t.epochs:g} epochs = {max_steps} steps "
            "(evaluation and checkpoint at the end of every epoch)")
    if effective_warmup(optim.warmup_steps, max_steps) != optim.warmup_steps:
        log(f"optim.warmup_steps {optim.warmup_steps} >= {max_steps} steps: warming up for "
            f"{effective_warmup(optim.warmup_steps, max_steps)} steps instead")

    # Matmul parameters: everything but the embeddings, plus the output layer (tied or not).
    head = getattr(raw_model, "lm_head", None)  # a classifier has none
    matmul_params = num_params(raw_model, exclude_embeddings=True) + (
        head.weight.numel() if head is not None and raw_model.config.tie_embeddings else 0)
    fpt = flops_per_token(matmul_params, raw_model.config.n_layer, raw_model.config.n_embd, block_size)
    peak = peak_flops(device, torch.float32 if mixed == "no" else torch.bfloat16) * world

    def checkpoint(reason: str, val_here: float | None, final_eval_pending: bool = False) -> Path | None:
        """Save; `val_here` is this step's validation loss when it was evaluated (it may become `best`);
        `final_eval_pending`: saved before the final evaluation, which `record_final_eval` then adds."""
        rngs = gather_object([rng_state()])
        weights = full_state_dict(accelerator, model)
        is_best = mark_best(val_here)
        path = None
        if is_main:
            if partial:
                weights = partial_state_dict(weights, trained)
            elapsed = state.elapsed + time.time() - t_start
            saved = {**state.to_json(), "elapsed": elapsed, "loader": train_loader.state_dict(), "rng": rngs,
                     "world_size": world, "reason": reason, "final_eval_pending": final_eval_pending}
            opt = {"optimizer": optimizer.state_dict(),
                   "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None}
            root = out / "checkpoints"
            path = save_checkpoint(root, state.step, raw_model, saved, opt, tokenizer,
                                   extra_files={"config.yaml": cfg.to_yaml()}, state_dict=weights, finetune=ft_meta)
            point_best_and_prune(path, is_best)
        accelerator.wait_for_everyone()
        return path

    def mark_best(val_here: float | None) -> bool:
        """Whether a checkpoint with this validation loss becomes `best` (the state remembers it)."""
        is_best = val_here is not None and math.isfinite(val_here) and (
            state.best_ckpt_val_loss is None or val_here < state.best_ckpt_val_loss)
        if is_best:
            state.best_ckpt_val_loss = val_here
        return is_best

    def point_best_and_prune(path: Path, is_best: bool) -> None:
        root = out / "checkpoints"
        if is_best:
            write_text_atomic(root / "best", path.name + "\n")
        best_name = (root / "best").read_text().strip() if (root / "best").exists() else ""
        prune_checkpoints(root, t.keep_last, keep={best_name, path.name})

    def record_final_eval(path: Path | None, val_here: float | None) -> None:
        """The final evaluation runs after the final save, so a crash in it loses nothing; its result then
        goes into that checkpoint's state.json and may make it `best`."""
        is_best = mark_best(val_here)
        if is_main and path is not None:
            changes = {k: v for k, v in state.to_json().items() if k != "elapsed"}
            update_checkpoint_state(path, {**changes, "final_eval_pending": False})
            point_best_and_prune(path, is_best)
        accelerator.wait_for_everyone()

    def evaluate(step: int, epoch_end: bool) -> dict:
        """Evaluate, keep the best/last validation loss in the state, log the result."""
        nonlocal last_result
        eval_model.eval()
        result = last_result = task.evaluate(eval_model, _limited(val_loader, eval_batches), accelerator)
        eval_model.train()
        state.last_val_loss = result[task.metric]
        if math.isfinite(state.last_val_loss) and (state.best_val_loss is None
                                                   or state.last_val_loss < state.best_val_loss):
            state.best_val_loss, state.evals_since_best = state.last_val_loss, 0
        else:
            state.evals_since_best += 1
        if metrics:
            row = {"step": step, **{k: v for k, v in result.items() if k not in ("val_tokens", "val_examples")}}
            if aligned:
                row["epoch"] = round(train_loader.position / train_loader.num_items, 4)
            metrics.log(row)
        where = f" (epoch {train_loader.epoch})" if epoch_end else ""
        if is_main and not quiet:
            bar.write(f"step {step}{where}: {task.describe(result)}", file=sys.stderr)
        return result

    # ---- the loop
    last_ckpt, last_result = None, None
    exit_code = 0
    model.train()
    from tqdm.auto import tqdm

    bar = tqdm(total=max_steps, initial=state.step, disable=not is_main or quiet, dynamic_ncols=True,
               desc="train", unit="step", file=sys.stderr)
    t_window, tokens_window = time.time(), 0
    try:
        with StopRequested() as stop:
            if (saved_state.get("final_eval_pending") and state.step >= max_steps
                    and resume_ckpt.parent == out / "checkpoints"):
                log(f"the final evaluation of step {state.step} did not finish: evaluating now")
                evaluate(state.step, False)
                record_final_eval(resume_ckpt, state.last_val_loss)
            while state.step < max_steps:
                state.step += 1
                step = state.step
                lr = get_lr(step, optim, max_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's matrices follow from their own peak
                if aligned:
                    bar.set_description(f"epoch {train_loader.epoch + 1}/{math.ceil(t.epochs)}", refresh=False)

                # -- up to A micro-batches (an epoch's last step may have fewer); the loss is the mean over
                # every target token of the global batch, so padding, accumulation and ranks change nothing.
                micro = []
                while len(micro) < A and not (aligned and micro and train_loader.at_epoch_end):
                    micro.append(train_loader.next_batch())
                n_targets = sum(task.targets(b) for b in micro)
                if world > 1:
                    n_targets = int(accelerator.reduce(torch.tensor(n_targets, device=device), reduction="sum"))
                scale = world / max(1, n_targets)  # DDP averages over ranks: undo that
                loss_sum = torch.zeros((), device=device, dtype=torch.float64)
                for i, batch in enumerate(micro):
                    sync = contextlib.nullcontext() if i == len(micro) - 1 else accelerator.no_sync(model)
                    with sync, accelerator.autocast():
                        loss = task.loss(model, batch, device)
                        accelerator.backward(loss * scale)
                    loss_sum += loss.detach().double()
                state.tokens += n_targets
                tokens_window += n_targets

                # -- clip and guard: a non-finite loss or gradient never reaches the weights
                params = [p for p in raw_model.parameters() if p.requires_grad]
                if cfg.optim.grad_clip > 0:
                    grad_norm = accelerator.clip_grad_norm_(params, cfg.optim.grad_clip)
                else:
                    accelerator.unscale_gradients()  # fp16: measure the true gradients, not the scaled ones
                    grad_norm = torch.linalg.vector_norm(
                        torch.stack([p.grad.norm() for p in params if p.grad is not None]))
                grad_norm = float(grad_norm)
                step_loss = (accelerator.reduce(loss_sum, reduction="sum") / max(1, n_targets)).item()
                if mixed == "fp16" and math.isfinite(step_loss):
                    optimizer.step()  # the loss scaler skips overflowing steps and lowers its scale itself
                    state.skipped = state.skipped + 1 if optimizer.step_was_skipped else 0
                elif math.isfinite(grad_norm) and math.isfinite(step_loss):
                    optimizer.step()
                    state.skipped = 0
                else:
                    state.skipped += 1
                    msg = f"non-finite {'loss' if not math.isfinite(step_loss) else 'gradient'} at step {step}"
                    if t.nonfinite == "stop" or state.skipped >= t.max_skipped:
                        optimizer.zero_grad(set_to_none=True)
                        raise UserError(f"{msg}; stopped before it reached the weights (last good checkpoint: "
                                        f"{last_ckpt or 'none'}); lower optim.lr or check the data")
                    log(f"{msg}: update skipped ({state.skipped} in a row)")
                optimizer.zero_grad(set_to_none=True)

                # -- stop conditions, agreed by all ranks
                # one-hot flags: summing signal numbers across ranks would name the wrong signal
                flags = torch.tensor([stop.signum == signal.SIGINT, stop.signum == signal.SIGTERM,
                                      t.max_minutes is not None and time.time() - t_start > 60 * t.max_minutes],
                                     device=device, dtype=torch.int32)
                flags = accelerator.reduce(flags, reduction="sum")
                signum = signal.SIGINT if flags[0] > 0 else signal.SIGTERM if flags[1] > 0 else 0
                last_step = step == max_steps or bool(flags[2] > 0)
                epoch_end = aligned and train_loader.at_epoch_end

                # -- log
                if step % t.log_every == 0 or last_step or step == 1:
                    dt = time.time() - t_window
                    tok_s = tokens_window / max(dt, 1e-9)
                    row = {"step": step, "tokens": state.tokens, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                           "tok_s": tok_s, "mfu": tok_s * fpt / peak, "time": state.elapsed + time.time() - t_start}
                    if metrics:
                        metrics.log(row)
                    t_window, tokens_window = time.time(), 0
                    bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                                    mfu=f"{100 * row['mfu']:.1f}%", refresh=False)
                bar.update(1)

                # -- the final checkpoint comes before the final evaluation: a crash there loses nothing
                saved_first = last_step
                if saved_first:
                    last_ckpt = checkpoint("signal" if signum else "end", None, final_eval_pending=True)

                # -- evaluate once in a while, at the end of every epoch, and at the end
                evaluated = False
                if (t.eval_every and step % t.eval_every == 0) or epoch_end or last_step:
                    result, evaluated = evaluate(step, epoch_end), True
                    if t.early_stopping and state.evals_since_best >= t.early_stopping and not last_step:
                        log(f"early stopping: no better val loss in {t.early_stopping} evaluations")
                        last_step = state.stopped_early = True
                    if on_eval is not None and on_eval(step, result) and not last_step:
                        log(f"stopped after step {step}: on_eval asked to stop (a pruned sweep trial)")
                        last_step = True

                # -- checkpoint once in a while, at every epoch's end, at the end, and when asked to stop
                if saved_first:
                    if evaluated:
                        record_final_eval(last_ckpt, state.last_val_loss)
                elif (t.ckpt_every and step % t.ckpt_every == 0) or epoch_end or last_step or signum:
                    last_ckpt = checkpoint("signal" if signum else "end" if last_step else "periodic",
                                           state.last_val_loss if evaluated else None)
                if signum:
                    exit_code = 128 + (signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
                    log(f"stopped by {signal.Signals(signum).name} after step {step}; resume with --resume auto")
                    break
                if last_step:
                    break
    finally:  # also on errors, so the bar never prints after the error line
        bar.close()
        if metrics:
            metrics.close()
    seconds = time.time() - t_start
    if is_main:
        try:
            from gpt2kit.plot import plot_runs

            plot_runs([out], out / "loss.png")
            if classify and task.confusion is not None:
                plot_confusion(task.confusion, data.labels, out / "confusion.png",
                               f"validation confusion matrix, step {state.step}")
        except Exception as e:  # a plot must never cost a finished run
            log(f"(plot skipped: {e})")
        if exit_code == 0:
            best = find_checkpoint(out, "best") or last_ckpt
            bv = state.best_val_loss
            seen = f"{state.tokens:,} {'examples' if classify else 'tokens'}"
            quality = ("" if bv is None else f"ppl {math.exp(min(bv, 50)):.2f}" if not classify else
                       f"last evaluation: {task.describe(last_result)}; confusion matrix {out / 'confusion.png'}"
                       if last_result else "")
            log(f"done: {state.step} steps, {seen} in {seconds / 60:.1f} min; best val loss {bv:.4f} ({quality}); "
                f"checkpoint {best}" if bv is not None else f"done: {state.step} steps; checkpoint {last_ckpt}")
    accelerator.wait_for_everyone()
    return RunResult(state.step, state.tokens, state.best_val_loss, state.last_val_loss, last_ckpt, seconds,
                     exit_code)


EVAL_TOKEN_BUDGET = 2 * 1024 * 1024  # target tokens an evaluation reads by default before it samples


def default_eval_batches(loader, world: int) -> int:
    """0 (the whole split) when it is at most EVAL_TOKEN_BUDGET target tokens, else the batches per rank of an
    even sample of about that many: exact numbers where they are affordable, a fixed sample where not."""
    _, total = loader.eval_tokens(None)
    if total <= EVAL_TOKEN_BUDGET:
        return 0
    per_batch = total / max(1, -(-loader.num_items // (loader.batch_size * world)))
    return max(1, round(EVAL_TOKEN_BUDGET / per_batch))


class _limited:
    """A loader whose evaluation pass reads at most `max_batches` batches per rank, spread over the split."""

    def __init__(self, loader, max_batches: int):
        self.loader, self.max_batches = loader, max_batches or None

    def iter_epoch(self):
        return self.loader.iter_epoch(self.max_batches)
