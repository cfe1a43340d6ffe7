"""The seam between the training loop and what is learned: how a batch's loss is computed and evaluated.

The loop calls `task.loss(model, batch)` (a sum over the batch's targets) and `task.targets(batch)` (how
many targets it has), and divides by the global count: the loss is the mean over every target token of the
global batch, whatever the padding, accumulation or number of ranks. `task.evaluate` gives the validation
metrics. Packed blocks, padded examples and prompt/completion pairs are all `LMTask`: they differ only in
their loaders (y = -100 where there is no loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt2kit.loader import IGNORE_INDEX


class LMTask:
    """Next-token prediction: cross-entropy on every target that is not IGNORE_INDEX."""

    name = "lm"
    metric = "val_loss"  # lower is better; `best` checkpoints and early stopping follow it

    def __init__(self, bytes_per_token: float | None = None, chunked: bool = False):
        self.bytes_per_token = bytes_per_token
        self.chunked = chunked  # train.chunked_loss: the model computes the loss without whole logits

    def targets(self, batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())

    def loss(self, model, batch, device) -> torch.Tensor:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        if self.chunked:
            return model(x, targets=y)
        logits = model(x)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="sum")

    @torch.no_grad()
    def evaluate(self, model, loader, accelerator) -> dict:
        """Loss over the whole validation split (every rank its share, summed across ranks)."""
        device = accelerator.device
        total = torch.zeros(2, device=device, dtype=torch.float64)
        for batch in loader.iter_epoch():
            with accelerator.autocast():
                total[0] += self.loss(model, batch, device).double()
            total[1] += self.targets(batch)
        total = accelerator.reduce(total, reduction="sum")
        loss = (total[0] / total[1].clamp(min=1)).item()
        out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50))}
        if self.bytes_per_token:
            out["val_bpb"] = loss / math.log(2) / self.bytes_per_token
        out["val_tokens"] = int(total[1].item())
        return out

    @staticmethod
    def describe(metrics: dict) -> str:
        text = f"val loss {metrics['val_loss']:.4f}, ppl {metrics['val_ppl']:.2f}"
        if "val_bpb" in metrics:
            text += f", bpb {metrics['val_bpb']:.3f}"
        return text + f" ({metrics['val_tokens']:,} tokens)"
