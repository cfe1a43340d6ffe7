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

TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
_PACKAGES = {"tensorboard": "tensorboard", "comet_ml": "comet_ml"}
# Tracker tags, grouped (metrics.jsonl keeps the flat names of CONTRACTS.md).
_TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens": "train/tokens",
         "epoch": "train/epoch", "tok_s": "perf/tok_s", "mfu": "perf/mfu", "time": "perf/time"}


def check_trackers(names: list[str]) -> None:
    """train.report_to: known names whose packages are installed (checked before anything is written)."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise UserError(f"train.report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        package = _PACKAGES.get(name, name)
        if importlib.util.find_spec(package) is None:
            raise UserError(f"train.report_to {name} needs the {package} package; `pip install {package}`, "
                            "or leave it out of train.report_to")


def tag(key: str) -> str:
    if key.startswith("val_"):
        return "eval/" + key[4:]
    return _TAGS.get(key, key)


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """A nested config as flat scalar hyper-parameters (`optim.lr`), as trackers want them."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:  # None, lists
            out[key] = "null" if v is None else ",".join(map(str, v))
    return out


class MetricsLogger:
    """Append rows to RUN/metrics.jsonl and send them to Accelerate's trackers (`train.report_to`: TensorBoard
    by default, also W&B, MLflow, Comet, Aim, ClearML, ...), tags grouped train/ eval/ perf/, with the run's
    hyper-parameters logged once."""

    def __init__(self, run_dir: Path, resume_step: int = 0, report_to: list[str] | tuple = ("tensorboard",),
                 hparams: dict | None = None):
        """resume_step: rows after it are dropped (0 for a fresh start: stale rows of an earlier attempt go)."""
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

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
        check_trackers(list(report_to))
        self.trackers = []
        for name in report_to:
            cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "tensorboard":
                # RUN/tensorboard; events after the resumed step are purged (they are recomputed)
                tracker = cls("tensorboard", run_dir, purge_step=resume_step + 1 if resume_step else None)
            elif cls.requires_logging_directory:
                tracker = cls(run_dir.name, run_dir / name)
            else:
                tracker = cls("gpt2kit", **({"name": run_dir.name} if name == "wandb" else {}))
            tracker.start()
            if hparams and not resume_step:
                tracker.store_init_configuration(flat_hparams(hparams))
            self.trackers.append(tracker)

    def log(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        values = {tag(k): v for k, v in row.items()
                  if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        for tracker in self.trackers:
            tracker.log(values, step=row["step"])

    def close(self) -> None:
        self._file.close()
        for tracker in self.trackers:
            tracker.finish()


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
