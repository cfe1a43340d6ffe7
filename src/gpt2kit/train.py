"""The training loop: pretrain or fine-tune GPT-2 with Accelerate, resumable to the bit.

Read `train()` top to bottom: set up (run dir, tokenizer, data, model, optimizer, resume), then
one flat loop — learning rate from a pure function, accumulate token-weighted micro-batches,
clip, guard against non-finite values, step, log, and "once in a while" evaluate and checkpoint.
A `last_step` flag makes the final evaluation and save happen inside the loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpt2kit.atomic import write_text_atomic
from gpt2kit.checkpoint import (
    complete_checkpoints,
    find_checkpoint,
    load_checkpoint_state,
    load_gpt2kit_dir,
    load_model,
    prune_checkpoints,
    save_checkpoint,
    tokenizer_source,
)
from gpt2kit.config import OptimArgs, TrainConfig
from gpt2kit.errors import UserError
from gpt2kit.metrics import MetricsLogger, flops_per_token, peak_flops
from gpt2kit.model import GPT, GPTConfig, model_size, num_params

# ---------------------------------------------------------------- pure pieces


def get_lr(step: int, optim: OptimArgs, max_steps: int) -> float:
    """Learning rate at optimizer step `step` (1-based): linear warmup, then cosine/linear/constant
    decay from `lr` to `min_lr` at `max_steps`."""
    min_lr = optim.lr / 10 if optim.min_lr is None else optim.min_lr
    warmup = effective_warmup(optim.warmup_steps, max_steps)
    if step <= warmup:
        return optim.lr * step / max(1, warmup)
    if optim.schedule == "constant":
        return optim.lr
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if optim.schedule == "linear":
        return optim.lr + (min_lr - optim.lr) * progress
    return min_lr + 0.5 * (optim.lr - min_lr) * (1 + math.cos(math.pi * progress))


def effective_warmup(warmup_steps: int, max_steps: int) -> int:
    """Warmup as configured, unless it would fill the whole run (a short fine-tune with the default
    100 warmup steps would never reach its peak LR): then a tenth of the run."""
    return warmup_steps if warmup_steps < max_steps else max_steps // 10


def make_optimizer(model: GPT, optim: OptimArgs, device_type: str) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only: no decay for biases and LayerNorm
    (1-D), nor embeddings unless `decay_embeddings`."""
    embeddings = {id(model.transformer.wte.weight)}
    if "wpe" in model.transformer:
        embeddings.add(id(model.transformer.wpe.weight))
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a tied weight once
        if not p.requires_grad:
            continue
        if p.dim() < 2 or (id(p) in embeddings and not optim.decay_embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
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


def check_run_dir(out: Path, resume: str | None, overwrite: bool) -> tuple[Path | None, bool]:
    """(checkpoint to resume from or None, whether to wipe `out` once set-up has succeeded).

    Nothing is deleted here: a mistake found later in set-up must leave the old run intact."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory for the run")
    exists = out.is_dir() and any(out.iterdir())
    if resume == "auto":
        return (find_checkpoint(out) if exists else None), False
    if resume:
        ckpt = Path(resume)
        if (ckpt / "checkpoints").is_dir():
            ckpt = find_checkpoint(ckpt)
        if ckpt is None or not ckpt.is_dir() or not (ckpt / "COMPLETE").exists():
            raise UserError(f"--resume {resume}: no complete checkpoint there; use --resume auto or a step-* dir")
        return ckpt, False
    if exists:
        if not overwrite:
            raise UserError(f"run directory {out} already exists; pass --resume auto to continue it, "
                            "--overwrite to start over, or choose another --out")
        if not any((out / n).exists() for n in ("config.yaml", "metrics.jsonl", "checkpoints")):
            raise UserError(f"{out} is not a gpt2kit run directory; --overwrite only replaces runs - "
                            "choose another --out")
        return None, True
    return None, False


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


def build_model(cfg: TrainConfig, vocab_size: int, resumed_from: Path | None) -> GPT:
    """From a checkpoint we resume, from --init weights, or fresh from the preset + overrides."""
    m = cfg.model
    if resumed_from is not None:
        model = load_gpt2kit_dir(resumed_from)
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
    return GPT(GPTConfig.from_preset(m.preset, **overrides)).train()


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


def train(cfg: TrainConfig, out: str | os.PathLike, resume: str | None = None, overwrite: bool = False,
          quiet: bool = False) -> RunResult:
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from gpt2kit.loader import PackedLoader
    from gpt2kit.prepare import check_vocab, ensure_prepared, read_meta

    t_start = time.time()
    out = Path(out)
    t = cfg.train
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    mixed = resolve_precision(t.precision, device_type)
    # Accelerate keeps its settings in a process-wide singleton; reset them so that train() can be
    # called again in the same process with another precision (the distributed state is kept).
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed, cpu=device_type == "cpu")
    is_main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    log = (lambda *a: print(*a, file=sys.stderr)) if is_main and not quiet else (lambda *a: None)

    resume_ckpt, wipe = check_run_dir(out, resume, overwrite)

    # ---- data and tokenizer
    if not cfg.data.sources:
        raise UserError("no training data; pass --data DIR_OR_SOURCE (a prepared dir, files, a folder, stdlib, ...)")
    first = Path(cfg.data.sources[0]).expanduser()
    prepared_hint = first if len(cfg.data.sources) == 1 and (first / "meta.json").exists() else None
    tokenizer = load_tokenizer_for(cfg, prepared_hint)
    options = dict(text_column=cfg.data.text_column, include=cfg.data.include or None,
                   val_fraction=cfg.data.val_fraction, workers=cfg.data.workers)
    data_dir = main_first(accelerator, lambda: ensure_prepared(cfg.data.sources, tokenizer,
                                                               cache_dir=cfg.data.cache_dir, **options))
    meta = read_meta(data_dir)
    check_init_tokenizer(cfg, meta, data_dir, resume_ckpt)

    # ---- model, optimizer, loaders
    seed_everything(t.seed)  # same init on every rank
    model = build_model(cfg, tokenizer.vocab_size, resume_ckpt)
    check_vocab(meta["vocab_size"], model.config.vocab_size, f"the data in {data_dir}")
    block_size = model.config.block_size
    model.grad_checkpointing = t.grad_checkpointing
    device = accelerator.device
    model.to(device)
    optimizer = make_optimizer(model, cfg.optim, device.type)
    B, A = t.batch_size, t.grad_accum
    train_loader = PackedLoader(data_dir, "train", block_size, B, seed=t.seed, rank=rank, world_size=world)
    val_loader = PackedLoader(data_dir, "val", block_size, B, seed=t.seed, rank=rank, world_size=world,
                              shuffle=False)
    val = meta["splits"]["val"]
    bytes_per_token = val["bytes"] / max(1, val["tokens"])

    # ---- resume
    step, tokens_seen, best_val, last_val, evals_since_best, skipped = 0, 0, None, None, 0, 0
    best_ckpt_val, elapsed_before = None, 0.0
    opt_state = None
    if resume_ckpt is not None:
        state, opt_state = load_checkpoint_state(resume_ckpt)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state["optimizer"])
        step, tokens_seen = state["step"], state["tokens"]
        best_val, last_val = state.get("best_val_loss"), state.get("last_val_loss")
        best_ckpt_val, elapsed_before = state.get("best_ckpt_val_loss"), state.get("elapsed", 0.0)
        evals_since_best = state.get("evals_since_best", 0)
        train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        log(f"resuming from {resume_ckpt} (step {step}, {tokens_seen:,} tokens)")
    else:
        seed_everything(t.seed + rank)  # dropout masks differ across ranks

    raw_model = model
    if t.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    if opt_state is not None and opt_state.get("scaler") is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(opt_state["scaler"])

    # ---- run directory: set-up succeeded, so now (and only now) an old run may be replaced
    if is_main:
        if wipe:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if resume_ckpt is not None and resume_ckpt.parent == out / "checkpoints":
            set_aside_later_checkpoints(out / "checkpoints", step)
        write_text_atomic(out / "config.yaml", cfg.to_yaml())
        if resume_ckpt is None or not (out / "tokenizer").exists():
            if (out / "tokenizer").exists():
                shutil.rmtree(out / "tokenizer")
            tokenizer.save(out / "tokenizer")
    metrics = MetricsLogger(out, resume_step=step, wandb_config=cfg.to_dict() if t.wandb else None) if is_main else None

    # Printed once set-up has succeeded, so a mistake found during set-up stays a single `error:` line.
    log("config:\n  " + cfg.to_yaml().replace("\n", "\n  ").rstrip())
    log(f"model: {model_size(raw_model)} parameters, block {block_size}, vocab {raw_model.config.vocab_size}; "
        f"data: {meta['splits']['train']['tokens']:,} train / {val['tokens']:,} val tokens")
    log(f"device: {device} x{world}, precision: {mixed}, global batch {B * A * world} x {block_size} tokens")
    if effective_warmup(cfg.optim.warmup_steps, t.max_steps) != cfg.optim.warmup_steps:
        log(f"optim.warmup_steps {cfg.optim.warmup_steps} >= train.max_steps {t.max_steps}: warming up for "
            f"{effective_warmup(cfg.optim.warmup_steps, t.max_steps)} steps instead")

    tokens_per_step = B * A * world * block_size
    # Matmul parameters: everything but the embeddings, plus the output layer (tied or not).
    matmul_params = num_params(raw_model, exclude_embeddings=True) + (
        raw_model.lm_head.weight.numel() if raw_model.config.tie_embeddings else 0)
    fpt = flops_per_token(matmul_params, raw_model.config.n_layer, raw_model.config.n_embd, block_size)
    peak = peak_flops(device, torch.float32 if mixed == "no" else torch.bfloat16) * world
    V = raw_model.config.vocab_size

    def evaluate() -> tuple[float, int]:
        model.eval()
        total = torch.zeros(2, device=device, dtype=torch.float64)
        with torch.no_grad():
            for i, (x, y) in enumerate(val_loader.iter_epoch()):
                if t.eval_batches and i >= t.eval_batches:
                    break
                x, y = x.to(device), y.to(device)
                with accelerator.autocast():
                    logits = model(x)
                total[0] += F.cross_entropy(logits.float().view(-1, V), y.reshape(-1), reduction="sum").double()
                total[1] += y.numel()
        model.train()
        total = accelerator.reduce(total, reduction="sum")
        return (total[0] / total[1]).item(), int(total[1].item())

    def checkpoint(reason: str, val_here: float | None) -> Path | None:
        """Save; `val_here` is this step's validation loss when it was evaluated (it may become `best`)."""
        nonlocal best_ckpt_val
        rngs = gather_object([rng_state()])
        weights = full_state_dict(accelerator, model)
        is_best = val_here is not None and math.isfinite(val_here) and (best_ckpt_val is None or val_here < best_ckpt_val)
        if is_best:
            best_ckpt_val = val_here
        path = None
        if is_main:
            state = {"step": step, "tokens": tokens_seen, "best_val_loss": best_val, "last_val_loss": last_val,
                     "best_ckpt_val_loss": best_ckpt_val, "evals_since_best": evals_since_best,
                     "loader": train_loader.state_dict(), "rng": rngs, "world_size": world, "reason": reason,
                     "elapsed": elapsed_before + time.time() - t_start}
            opt = {"optimizer": optimizer.state_dict(),
                   "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None}
            root = out / "checkpoints"
            path = save_checkpoint(root, step, raw_model, state, opt, tokenizer,
                                   extra_files={"config.yaml": cfg.to_yaml()}, state_dict=weights)
            if is_best:
                write_text_atomic(root / "best", path.name + "\n")
            best_name = (root / "best").read_text().strip() if (root / "best").exists() else ""
            prune_checkpoints(root, t.keep_last, keep={best_name, path.name})
        accelerator.wait_for_everyone()
        return path

    # ---- the loop
    last_ckpt = None
    exit_code = 0
    model.train()
    from tqdm.auto import tqdm

    bar = tqdm(total=t.max_steps, initial=step, disable=not is_main or quiet, dynamic_ncols=True,
               desc="train", unit="step", file=sys.stderr)
    t_window, tokens_window = time.time(), 0
    try:
        with StopRequested() as stop:
            while step < t.max_steps:
                step += 1
                lr = get_lr(step, cfg.optim, t.max_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                # -- forward/backward over A micro-batches; the loss is the mean over all tokens of
                # the global batch, so accumulation and data parallelism equal one big batch.
                loss_sum = torch.zeros((), device=device, dtype=torch.float64)
                scale = world / (B * A * world * block_size)  # DDP averages over ranks: undo that
                for micro in range(A):
                    x, y = train_loader.next_batch()
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    sync = contextlib.nullcontext() if micro == A - 1 else accelerator.no_sync(model)
                    with sync, accelerator.autocast():
                        logits = model(x)
                        loss = F.cross_entropy(logits.float().view(-1, V), y.reshape(-1), reduction="sum")
                        accelerator.backward(loss * scale)
                    loss_sum += loss.detach().double()
                tokens_seen += tokens_per_step
                tokens_window += tokens_per_step

                # -- clip and guard: a non-finite loss or gradient never reaches the weights
                if cfg.optim.grad_clip > 0:
                    grad_norm = accelerator.clip_grad_norm_(raw_model.parameters(), cfg.optim.grad_clip)
                else:
                    accelerator.unscale_gradients()  # fp16: measure the true gradients, not the scaled ones
                    grad_norm = torch.linalg.vector_norm(
                        torch.stack([p.grad.norm() for p in raw_model.parameters() if p.grad is not None]))
                grad_norm = float(grad_norm)
                step_loss = (accelerator.reduce(loss_sum, reduction="sum") / (tokens_per_step)).item()
                if mixed == "fp16" and math.isfinite(step_loss):
                    optimizer.step()  # the loss scaler skips overflowing steps and lowers its scale itself
                    skipped = skipped + 1 if optimizer.step_was_skipped else 0
                elif math.isfinite(grad_norm) and math.isfinite(step_loss):
                    optimizer.step()
                    skipped = 0
                else:
                    skipped += 1
                    msg = f"non-finite {'loss' if not math.isfinite(step_loss) else 'gradient'} at step {step}"
                    if t.nonfinite == "stop" or skipped >= t.max_skipped:
                        optimizer.zero_grad(set_to_none=True)
                        raise UserError(f"{msg}; stopped before it reached the weights (last good checkpoint: "
                                        f"{last_ckpt or 'none'}); lower optim.lr or check the data")
                    log(f"{msg}: update skipped ({skipped} in a row)")
                optimizer.zero_grad(set_to_none=True)

                # -- stop conditions, agreed by all ranks
                # one-hot flags: summing signal numbers across ranks would name the wrong signal
                flags = torch.tensor([stop.signum == signal.SIGINT, stop.signum == signal.SIGTERM,
                                      t.max_minutes is not None and time.time() - t_start > 60 * t.max_minutes],
                                     device=device, dtype=torch.int32)
                flags = accelerator.reduce(flags, reduction="sum")
                signum = signal.SIGINT if flags[0] > 0 else signal.SIGTERM if flags[1] > 0 else 0
                time_up = bool(flags[2] > 0)
                last_step = step == t.max_steps or time_up

                # -- log
                if step % t.log_every == 0 or last_step or step == 1:
                    dt = time.time() - t_window
                    tok_s = tokens_window / max(dt, 1e-9)
                    row = {"step": step, "tokens": tokens_seen, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                           "tok_s": tok_s, "mfu": tok_s * fpt / peak, "time": elapsed_before + time.time() - t_start}
                    if metrics:
                        metrics.log(row)
                    t_window, tokens_window = time.time(), 0
                    bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                                    mfu=f"{100 * row['mfu']:.1f}%", refresh=False)
                bar.update(1)

                # -- evaluate once in a while, and at the end
                evaluated = False
                if (t.eval_every and step % t.eval_every == 0) or last_step:
                    last_val, _ = evaluate()
                    evaluated = True
                    if math.isfinite(last_val) and (best_val is None or last_val < best_val):
                        best_val, evals_since_best = last_val, 0
                    else:
                        evals_since_best += 1
                    if metrics:
                        metrics.log({"step": step, "val_loss": last_val, "val_ppl": math.exp(min(last_val, 50)),
                                     "val_bpb": last_val / math.log(2) / bytes_per_token})
                    if is_main and not quiet:
                        bar.write(f"step {step}: val loss {last_val:.4f}, ppl {math.exp(min(last_val, 50)):.2f}, "
                                  f"bpb {last_val / math.log(2) / bytes_per_token:.3f}", file=sys.stderr)
                    if t.early_stopping and evals_since_best >= t.early_stopping:
                        log(f"early stopping: no better val loss in {t.early_stopping} evaluations")
                        last_step = True

                # -- checkpoint once in a while, at the end, and when asked to stop
                if (t.ckpt_every and step % t.ckpt_every == 0) or last_step or signum:
                    last_ckpt = checkpoint("signal" if signum else "end" if last_step else "periodic",
                                           last_val if evaluated else None)
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
        except Exception as e:  # a plot must never cost a finished run
            log(f"(loss plot skipped: {e})")
        if exit_code == 0:
            best = find_checkpoint(out, "best") or last_ckpt
            log(f"done: {step} steps, {tokens_seen:,} tokens in {seconds / 60:.1f} min; best val loss "
                f"{best_val:.4f} (ppl {math.exp(min(best_val, 50)):.2f}); checkpoint {best}"
                if best_val is not None else f"done: {step} steps; checkpoint {last_ckpt}")
    accelerator.wait_for_everyone()
    return RunResult(step, tokens_seen, best_val, last_val, last_ckpt, seconds, exit_code)
