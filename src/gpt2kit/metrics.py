"""Where training numbers go: RUN/metrics.jsonl (one JSON object per line), TensorBoard, W&B.

Also the throughput arithmetic: FLOPs per token and the device's peak, for MFU.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from gpt2kit.atomic import write_text_atomic
from gpt2kit.errors import UserError


class MetricsLogger:
    """Append rows to RUN/metrics.jsonl and mirror scalars to TensorBoard (and W&B when asked)."""

    def __init__(self, run_dir: Path, resume_step: int = 0, wandb_config: dict | None = None):
        """resume_step: rows after it are dropped (0 for a fresh start: stale rows of an earlier attempt go)."""
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():
            # Rows after the checkpoint we resume from are about to be recomputed: drop them.
            # A kill -9 can leave a torn last line; it is dropped with them.
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        keep.append(line)
                except (ValueError, AttributeError):
                    continue
            write_text_atomic(self.path, "".join(line + "\n" for line in keep))
        self._file = open(self.path, "a")
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge events after the resumed step (they are recomputed); the step itself stays
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # tensorboard is a dependency, but don't die over a missing logger
            pass
        self._wandb = None
        if wandb_config is not None:
            try:
                import wandb
            except ImportError:
                raise UserError("train.wandb is on but wandb is not installed; `pip install wandb`") from None
            self._wandb = wandb.init(project="gpt2kit", name=run_dir.name, config=wandb_config, resume="allow")

    def log(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        step = row["step"]
        for k, v in row.items():
            if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                if self._tb is not None:
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward + backward) + attention scores
    (PaLM appendix B; nanoGPT's estimate_mfu). N excludes position embeddings."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len


# Dense peak FLOP/s of common accelerators (bf16/fp16 tensor cores, no sparsity).
GPU_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12, "L40": 181e12,
            "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's peak FLOP/s: a table for GPUs, a short matmul probe (~0.3 s) on CPUs."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in sorted(GPU_PEAK.items(), key=lambda kv: -len(kv[0])):  # "L40" before "L4"
            if key in name:
                return value if dtype != torch.float32 else value / 2  # tf32 ~ half the bf16 peak
        return 100e12
    n = 1024
    g = torch.Generator().manual_seed(0)  # never touch the global RNG: resumed runs must replay it exactly
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        best = min(best, (time.perf_counter() - t0) / 3)
    return 2 * n**3 / best
