"""Sequence classification with GPT-2: a `score` head on the hidden state of the last real token.

GPT-2 reads left to right, so only the last token has seen the whole text. Texts are therefore padded on
the LEFT (pad = EOS, GPT-2 has none of its own) with an attention mask, and positions count real tokens
only, so the last column of every row is its text's last token and a padded row gives the logits it would
give alone. The head is `transformers`' GPT2ForSequenceClassification's: `score`, a Linear without bias,
named the same, so export is a key-for-key copy and `pipeline("text-classification")` predicts what
`gpt2kit predict` does (no EOS is appended: transformers finds the last token that is not the pad id).

Pieces: `GPTClassifier` (the model), `read_examples` + `stratified_split` (data: text and label columns,
labels as names or integers, a stable validation split with every class represented), `ClassifyTask`
(the loop's seam: weighted cross-entropy; validation loss, accuracy, macro-F1), `predict`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2kit.errors import UserError
from gpt2kit.loader import IGNORE_INDEX
from gpt2kit.model import GPT, GPTConfig


class GPTClassifier(GPT):
    """GPT-2 body + `score` (n_embd -> num_labels, no bias); no LM head. `forward` takes LEFT-padded ids."""

    def __init__(self, config: GPTConfig, labels: Sequence[str]):
        super().__init__(config)
        del self.lm_head  # a classifier has no LM head (transformers' GPT2ForSequenceClassification neither)
        self.labels = [str(x) for x in labels]
        self.score = nn.Linear(config.n_embd, len(self.labels), bias=False)
        nn.init.normal_(self.score.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor, *, attention_mask: torch.Tensor | None = None, **_) -> torch.Tensor:
        """Class logits (B, num_labels) from the hidden state at the last position."""
        return self.score(self.hidden(idx, attention_mask=attention_mask)[:, -1])

    @classmethod
    def from_lm(cls, lm: GPT, labels: Sequence[str]) -> GPTClassifier:
        """A classifier with `lm`'s body and a fresh head (N(0, 0.02), from the current torch seed)."""
        model = cls(GPTConfig.from_dict(lm.config.to_dict()), labels)
        sd = {k: v for k, v in lm.state_dict().items() if k != "lm_head.weight"}
        sd["score.weight"] = model.score.weight.data
        model.load_state_dict(sd)
        return model


# ---------------------------------------------------------------- data


def label_names(raw: Iterable) -> list[str]:
    """The label set in a stable order: integers numerically, then names alphabetically."""
    values = set(raw)
    ints = sorted(v for v in values if isinstance(v, int) and not isinstance(v, bool))
    strs = sorted(str(v) for v in values if not (isinstance(v, int) and not isinstance(v, bool)))
    if all(s.lstrip("-").isdigit() for s in strs) and not ints:  # "0", "1", "2" from a CSV: numeric order
        strs = sorted(strs, key=int)
    return [str(v) for v in ints] + strs


def read_examples(sources: Sequence[str], text_column: str, label_column: str
                  ) -> tuple[list[str], list[str], list[str], list[str]]:
    """(texts, labels as strings, keys, the label set) of every row with a text and a label."""
    from gpt2kit.sources import iter_rows

    texts, labels, keys = [], [], []
    for spec in sources:
        name = Path(spec).name or spec
        for i, row in enumerate(iter_rows(spec, [text_column, label_column],
                                          column_keys=["data.text_column", "data.label_column"])):
            text, label = row[text_column], row[label_column]
            if text is None or label is None or str(text) == "" or str(label) == "":
                continue
            texts.append(str(text))
            labels.append(label)
            keys.append(f"{name}:{i}")
    if not texts:
        raise UserError(f"no labelled examples in {' '.join(sources)}; check --data, data.text_column and "
                        "data.label_column")
    names = label_names(labels)
    return texts, [str(v) for v in labels], keys, names


def stratified_split(keys: Sequence[str], labels: Sequence[str], val_fraction: float) -> list[bool]:
    """Held-out flags by class: each class splits by the hash of its keys, with at least one held out for
    every class that has two or more examples (stable: the same rows every run)."""
    from gpt2kit.data import split_by_key

    flags = [False] * len(keys)
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    for idx in by_class.values():
        for i, f in zip(idx, split_by_key([keys[i] for i in idx], val_fraction)):
            flags[i] = f
    return flags


def encode(tokenizer, texts: Sequence[str], max_length: int, truncation: str = "left") -> list[np.ndarray]:
    """Token ids of each text, at most max_length (truncation 'left' drops the start and keeps the end)."""
    out = []
    for ids in tokenizer.encode_batch(list(texts)):
        if len(ids) > max_length:
            ids = ids[len(ids) - max_length:] if truncation == "left" else ids[:max_length]
        out.append(np.asarray(ids or [tokenizer.eos_id], dtype=np.int64))  # an empty text reads as EOS
    return out


def collate_left(pad_id: int, items: Sequence[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, ...]:
    """(ids, attention_mask, labels): left padded so that every row's last column is its last token."""
    L = max(len(x) for x, _ in items)
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), L), dtype=torch.long)
    for i, (x, _) in enumerate(items):
        ids[i, L - len(x):] = torch.as_tensor(x)
        mask[i, L - len(x):] = 1
    return ids, mask, torch.tensor([y for _, y in items], dtype=torch.long)


def empty_classify_batch() -> tuple[torch.Tensor, ...]:
    """A row that adds nothing (label ignored): for a rank with no data left in an epoch (DDP needs all)."""
    return torch.zeros((1, 1), dtype=torch.long), torch.ones((1, 1), dtype=torch.long), \
        torch.full((1,), IGNORE_INDEX, dtype=torch.long)


def class_weights(labels: Sequence[int], k: int) -> torch.Tensor:
    """'balanced' weights n / (k * n_c), as scikit-learn computes them: rare classes count more."""
    counts = Counter(labels)
    n = len(labels)
    return torch.tensor([n / (k * counts[c]) if counts[c] else 0.0 for c in range(k)], dtype=torch.float32)


# ---------------------------------------------------------------- the task


class ClassifyTask:
    """Cross-entropy on the label (optionally class-weighted); validation loss, accuracy and macro-F1."""

    name = "classify"
    metric = "val_loss"

    def __init__(self, labels: Sequence[str], weights: torch.Tensor | None = None):
        self.labels = list(labels)
        self.weights = weights
        self.confusion: np.ndarray | None = None  # of the last evaluation

    def targets(self, batch) -> int:
        return int((batch[2] != IGNORE_INDEX).sum())

    def loss(self, model, batch, device) -> torch.Tensor:
        ids, mask, y = (t.to(device, non_blocking=True) for t in batch)
        logits = model(ids, attention_mask=mask).float()
        w = self.weights.to(device) if self.weights is not None else None
        return F.cross_entropy(logits, y, weight=w, ignore_index=IGNORE_INDEX, reduction="sum")

    @torch.no_grad()
    def evaluate(self, model, loader, accelerator) -> dict:
        device = accelerator.device
        k = len(self.labels)
        confusion = torch.zeros(k, k, dtype=torch.float64, device=device)  # rows: true, columns: predicted
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for ids, mask, y in loader.iter_epoch():
            ids, mask, y = ids.to(device), mask.to(device), y.to(device)
            with accelerator.autocast():
                logits = model(ids, attention_mask=mask).float()
            total[0] += F.cross_entropy(logits, y, reduction="sum").double()  # unweighted: comparable across runs
            total[1] += len(y)
            confusion.index_put_((y, logits.argmax(-1)), torch.ones_like(y, dtype=torch.float64), accumulate=True)
        total = accelerator.reduce(total, reduction="sum")
        confusion = accelerator.reduce(confusion, reduction="sum")
        self.confusion = confusion.cpu().numpy().astype(np.int64)
        loss = (total[0] / total[1].clamp(min=1)).item()
        return {"val_loss": loss, **scores(self.confusion), "val_examples": int(total[1].item())}

    @staticmethod
    def describe(metrics: dict) -> str:
        return (f"val loss {metrics['val_loss']:.4f}, accuracy {metrics['val_acc']:.4f}, macro-F1 "
                f"{metrics['val_f1']:.4f} ({metrics['val_examples']:,} examples)")


def scores(confusion: np.ndarray) -> dict:
    """Accuracy and macro-F1 from a confusion matrix (rows true, columns predicted); a class that never
    occurs and is never predicted is left out of the macro average."""
    tp = np.diag(confusion).astype(np.float64)
    pred, true = confusion.sum(0), confusion.sum(1)
    f1s = [2 * tp[c] / (pred[c] + true[c]) for c in range(len(tp)) if pred[c] + true[c] > 0]
    n = confusion.sum()
    return {"val_acc": float(tp.sum() / n) if n else math.nan, "val_f1": float(np.mean(f1s)) if f1s else math.nan}


def plot_confusion(confusion: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * k + 2), max(3.5, 0.6 * k + 1.5)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = confusion.max() or 1
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center",
                    color="white" if confusion[i, j] > top / 2 else "black")
    ax.set_title(title or "validation confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- inference


@torch.no_grad()
def predict_proba(model: GPTClassifier, tokenizer, texts: Sequence[str], *, batch_size: int = 32,
                  truncation: str = "left") -> torch.Tensor:
    """Class probabilities (len(texts), num_labels), batched with left padding."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    encoded = encode(tokenizer, texts, model.config.block_size, truncation)
    out = []
    for i in range(0, len(encoded), batch_size):
        ids, mask, _ = collate_left(pad, [(x, 0) for x in encoded[i : i + batch_size]])
        out.append(torch.softmax(model(ids.to(device), attention_mask=mask.to(device)).float(), -1).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(model.labels))
