"""Supervised data for fine-tuning: prompt/completion pairs and text classification.

Prompt/completion (instruction tuning): the sequence is prompt + completion + EOS; the loss is only on the
completion and the EOS, so the model learns to answer and to stop. Labels are masked by position (not by
id), so the real EOS label survives even when the pad id equals the EOS id (GPT-2 has no pad token).
Examples are `(x, y)` — x = seq[:-1], y = labels[1:], y = -100 where no loss — batched right padded by
`loader.ExampleLoader` (causal attention never looks right, so padding at the end needs no mask).

Classification: each text + EOS, truncated to `max_length`, left padded so the last position of every
row is the text's final token (the one a GPT classifier reads), with an attention mask of 1 on real tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gpt2kit.errors import UserError
from gpt2kit.loader import IGNORE_INDEX
from gpt2kit.tokenizer import Tokenizer


def encode_prompt_completion(tokenizer: Tokenizer, prompt: str, completion: str, max_length: int
                             ) -> tuple[list[int], list[int]]:
    """(x, y) of one pair, at most `max_length` long; y is IGNORE_INDEX over the prompt.

    Too long: the prompt loses tokens from its start (its end leads into the answer), then the completion
    from its end, keeping at least half the window for the completion."""
    p = tokenizer.encode(prompt)
    c = tokenizer.encode(completion) + [tokenizer.eos_id]
    room = max_length + 1  # x and y are the sequence shifted by one
    if len(p) + len(c) > room:
        keep_c = max(min(len(c), room - len(p)), min(len(c), room // 2))
        p = p[len(p) - (room - keep_c):] if room - keep_c > 0 else []
        c = c[:keep_c]
    seq = p + c
    labels = [IGNORE_INDEX] * len(p) + c
    return seq[:-1], labels[1:]


def encode_classification(tokenizer: Tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels): text + EOS, truncated to max_length, left padded."""
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    rows = [ids[: max_length - 1] + [tokenizer.eos_id] for ids in tokenizer.encode_batch(list(texts))]
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, L - len(r):] = 1
    return ids, mask, torch.as_tensor(list(labels), dtype=torch.long)


@dataclass
class ClassificationData:
    texts: list[str]
    labels: list[int]
    label_names: list[str]  # label_names[i] is the class of label i


def read_prompt_completion(sources: Sequence[str] | str, *, prompt_column: str = "prompt",
                           completion_column: str = "completion", **options) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from .jsonl/.json/.csv/.parquet files or datasets."""
    from gpt2kit.sources import iter_rows

    pairs = [(str(r[prompt_column] or ""), str(r[completion_column] or ""))
             for r in iter_rows(sources, [prompt_column, completion_column], **options)]
    if not pairs:
        raise UserError(f"no prompt/completion pairs in {sources}; check the path")
    return pairs


def read_classification(sources: Sequence[str] | str, *, text_column: str = "text", label_column: str = "label",
                        label_names: Sequence[str] | None = None, **options) -> ClassificationData:
    """(text, label) pairs; labels are class names or ints, mapped to 0..K-1 in sorted order (or `label_names`)."""
    from gpt2kit.sources import iter_rows

    rows = list(iter_rows(sources, [text_column, label_column], **options))
    if not rows:
        raise UserError(f"no examples in {sources}; check the path")
    raw = [r[label_column] for r in rows]
    if label_names is None:
        values = sorted(set(raw), key=lambda v: (isinstance(v, str), v))
        label_names = [str(v) for v in values]
    index = {name: i for i, name in enumerate(label_names)}
    try:
        labels = [index[str(v)] for v in raw]
    except KeyError as e:
        raise UserError(f"label {e.args[0]!r} is not one of {', '.join(label_names)}") from e
    return ClassificationData([str(r[text_column]) for r in rows], labels, list(label_names))


def sft_examples(sources: Sequence[str] | str | os.PathLike, tokenizer: Tokenizer, max_length: int, **options
                 ) -> list[tuple[list[int], list[int]]]:
    """Read and encode prompt/completion pairs in one call."""
    return [encode_prompt_completion(tokenizer, p, c, max_length) for p, c in read_prompt_completion(sources, **options)]
