"""Will it fit? The memory a training run or a generation needs, estimated before anything is allocated.

A model, batch or generation length the machine cannot hold must be one error line, not an allocator
traceback or a machine swapping itself to death. The estimates count only what cannot be avoided, so a
refusal is certain to be right and no run that fits is refused:

- weights 4 bytes a parameter (fp32 master weights); each trainable one adds a gradient and two AdamW
  moments (12 bytes more);
- activations kept for the backward pass, per token of a micro-batch: about 16 values of width n_embd in
  each layer (the inputs of the layer norms, attention and MLP projections, the 4x MLP hidden state; one
  layer's worth plus the layer inputs with gradient checkpointing) and, for a language model, two fp32
  copies of the logits (the loss and its gradient). Attention scores are not counted (fused attention
  kernels do not store them).

Measured on CPU (docs/BENCHMARKS.md, gpt2 at batch 1 x 512, fp32): 2.52 GiB peak; estimated 2.32 GiB.
"""

from __future__ import annotations

from pathlib import Path

import torch


def human(n: float) -> str:
    """Bytes for people: 512 B, 3.1 MiB, 1.2 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup v2 memory limit (containers), or None when there is no limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def _system_available() -> int | None:
    """Memory new allocations can get without killing anything: available RAM plus free swap."""
    try:
        import psutil

        room = psutil.virtual_memory().available + psutil.swap_memory().free
    except ImportError:  # psutil comes with accelerate; /proc/meminfo is the fallback on Linux
        try:
            info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
            room = (int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])) * 1024
        except (OSError, KeyError, ValueError):
            return None
    cgroup = _cgroup_room()
    return room if cgroup is None else min(room, cgroup)


def available_bytes(device: str | torch.device) -> tuple[int, str] | None:
    """(bytes free for allocations on `device`, where they are, for a message), or None when unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(dev)
        except RuntimeError:
            return None
        return free, f"free on {torch.cuda.get_device_name(dev)}"
    room = _system_available()  # cpu, and mps (unified memory)
    return None if room is None else (room, "available on this machine")


def training_bytes(model: torch.nn.Module, batch_size: int, block_size: int, *, activation_bytes: int = 4,
                   grad_checkpointing: bool = False, logits: bool = True) -> tuple[int, int]:
    """(bytes for weights + gradients + AdamW moments, bytes of activations for one micro-batch) of training
    `model` (real or on the meta device) on (batch_size, block_size) batches; see the module docstring.

    activation_bytes: 2 under bf16/fp16 autocast, else 4. logits: a language-model head (False: a classifier)."""
    params = {id(p): p for p in model.parameters()}.values()  # a tied weight once
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    config = model.config
    per_layer = config.n_embd * (1 if grad_checkpointing else 16)
    values = config.n_layer * per_layer + (16 * config.n_embd if grad_checkpointing else 0)
    tokens = batch_size * block_size
    activations = tokens * values * activation_bytes + (tokens * 2 * config.vocab_size * 4 if logits else 0)
    return 4 * n + 12 * trainable, activations


def check_fits(need: int, device: str | torch.device) -> tuple[int, str] | None:
    """None when `need` bytes fit on `device` (or nobody can tell), else (bytes available, where)."""
    room = available_bytes(device)
    return None if room is None or need <= room[0] else room
