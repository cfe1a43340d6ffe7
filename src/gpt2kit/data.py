"""What the trainer trains on: packed blocks, one example per sequence, or prompt/completion pairs.

`build_data(cfg, tokenizer, block_size, ...)` returns the train and validation loaders and what the log and
bits-per-byte need. Three shapes, chosen by `data.format` and `data.packing`:

| format            | packing | source of examples                          | a row of a batch                       |
|-------------------|---------|---------------------------------------------|----------------------------------------|
| text              | true    | prepared shards (cached `prepare`)          | block_size tokens of documents + EOS   |
| text              | false   | the same shards, cut at EOS                 | one document + EOS, truncated, padded  |
| prompt_completion | false   | rows of jsonl/csv/parquet/datasets          | template(prompt) + completion + EOS    |

Every loader yields `(x, y)` with y = -100 where there is no loss (padding, prompts), so one loss function
serves all three. Validation is held out by documents (rows), stable under re-runs (hash of the key), with a
floor: at least one example whenever there are two or more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2kit.config import TrainConfig
from gpt2kit.errors import UserError, flag
from gpt2kit.loader import IGNORE_INDEX, ExampleLoader, PackedLoader, lm_example
from gpt2kit.tokenizer import Tokenizer


@dataclass
class TrainData:
    train: PackedLoader | ExampleLoader
    val: PackedLoader | ExampleLoader
    bytes_per_token: float | None  # UTF-8 bytes per validation target token (None: unknown, no bits per byte)
    summary: str  # one line for the log
    data_dir: Path | None = None  # the prepared directory, when there is one
    meta: dict | None = None
    labels: list[str] | None = None  # classify: the label set, index = class id
    class_weights: object = None  # classify: a (num_labels,) tensor, or None


def packing_for(cfg: TrainConfig) -> bool:
    """data.packing, or its default: packed for text corpora, one example per row for prompt/completion."""
    packing = cfg.data.packing if cfg.data.packing is not None else cfg.data.format == "text"
    if packing and cfg.data.format != "text":
        raise UserError(f"data.format {cfg.data.format} trains one example per sequence; set --data.packing false")
    return packing


def apply_template(template: str, prompt: str) -> str:
    """The text a prompt becomes before its completion: `{prompt}` replaced (other braces kept as they are).
    A written `\\n` / `\\t` means a newline / tab, so templates can be given on the command line."""
    if "{prompt}" not in template:
        raise UserError(f"data.prompt_template {template!r} must contain {{prompt}}, e.g. 'Q: {{prompt}}\\nA:'")
    return template.replace("\\n", "\n").replace("\\t", "\t").replace("{prompt}", prompt)


def _hash01(key: str) -> float:
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h / 2**64


def split_by_key(keys: list[str], val_fraction: float) -> list[bool]:
    """Which examples are held out: hash(key) < val_fraction, and at least one when there are two or more
    (the smallest hashes, so the choice is as stable as the split itself)."""
    if val_fraction <= 0 or len(keys) < 2:
        return [False] * len(keys)
    h = [_hash01(k) for k in keys]
    flags = [x < val_fraction for x in h]
    if not any(flags):
        flags[int(np.argmin(h))] = True
    if all(flags):
        flags[int(np.argmax(h))] = False
    return flags


def _target_bytes(tokenizer: Tokenizer, examples: list[tuple]) -> float | None:
    """UTF-8 bytes per target token over `examples` (EOS counts as a token of no bytes, as in prepare)."""
    n_bytes = n_targets = 0
    for _, y in examples:
        y = np.asarray(y)
        targets = y[y != IGNORE_INDEX]
        n_targets += len(targets)
        n_bytes += len(tokenizer.decode(t for t in targets.tolist() if t != tokenizer.eos_id).encode("utf-8"))
    return n_bytes / n_targets if n_targets and n_bytes else None


def _documents(data_dir: Path, split: str, meta: dict) -> list[np.ndarray]:
    """The documents of a prepared split, each with its EOS (a piece cut by a tail split has none)."""
    from gpt2kit.prepare import load_split

    shards = load_split(data_dir, split, meta)
    if not shards:
        return []
    tokens = np.concatenate([np.asarray(s) for s in shards]).astype(np.int64)
    ends = (np.flatnonzero(tokens == meta["eos_id"]) + 1).tolist()
    if not ends or ends[-1] != len(tokens):
        ends.append(len(tokens))
    starts = [0, *ends[:-1]]
    return [tokens[a:b] for a, b in zip(starts, ends) if b - a >= 2]  # a lone EOS predicts nothing


def _prompt_completion_examples(cfg: TrainConfig, tokenizer: Tokenizer, block_size: int
                                ) -> tuple[list[tuple], list[str], int]:
    """(examples, keys, rows skipped) from every source's rows."""
    from gpt2kit.sft import encode_prompt_completion
    from gpt2kit.sources import iter_rows

    d = cfg.data
    examples, keys, skipped = [], [], 0
    for spec in d.sources:
        name = Path(spec).name or spec
        for i, row in enumerate(iter_rows(spec, [d.prompt_column, d.completion_column],
                                          column_keys=["data.prompt_column", "data.completion_column"])):
            prompt, completion = row[d.prompt_column], row[d.completion_column]
            if prompt is None or completion is None or (prompt == "" and completion == ""):
                skipped += 1
                continue
            x, y = encode_prompt_completion(tokenizer, apply_template(d.prompt_template, str(prompt)),
                                            str(completion), block_size)
            if not x:
                skipped += 1
                continue
            examples.append((np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)))
            keys.append(f"{name}:{i}")
    return examples, keys, skipped


def build_data(cfg: TrainConfig, tokenizer: Tokenizer, block_size: int, *, rank: int, world: int,
               run_first: Callable = lambda fn: fn()) -> TrainData:
    """Loaders for the run. `run_first(fn)` runs preparation on rank 0 before the others (they reuse its cache)."""
    from gpt2kit.prepare import ensure_prepared, read_meta, split_bytes_per_token

    d, t = cfg.data, cfg.train
    if not d.sources:
        raise UserError("no training data; pass --data DIR_OR_SOURCE (a prepared dir, files, a folder, stdlib, ...)")
    packing = packing_for(cfg)
    aligned = t.epochs is not None
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    loader_args = dict(seed=t.seed, rank=rank, world_size=world)

    if t.task == "classify":
        return _classification_data(cfg, tokenizer, block_size, pad, aligned, loader_args)

    if d.format == "prompt_completion":
        examples, keys, skipped = _prompt_completion_examples(cfg, tokenizer, block_size)
        if not examples:
            raise UserError(f"no prompt/completion pairs in {' '.join(d.sources)}; check --data and the "
                            "data.prompt_column / data.completion_column names")
        held = split_by_key(keys, d.val_fraction)
        train_ex = [e for e, v in zip(examples, held) if not v]
        val_ex = [e for e, v in zip(examples, held) if v] or train_ex  # val_fraction 0: report on train
        note = f", {skipped} empty rows skipped" if skipped else ""
        summary = (f"data: {len(train_ex):,} train / {len(val_ex):,} val prompt/completion pairs "
                   f"(loss on completions only{note})")
        return TrainData(ExampleLoader(train_ex, t.batch_size, pad_id=pad, epoch_aligned=aligned, **loader_args),
                         ExampleLoader(val_ex, t.batch_size, pad_id=pad, shuffle=False, name="val", **loader_args),
                         _target_bytes(tokenizer, val_ex), summary)

    options = dict(text_column=d.text_column, include=d.include or None, val_fraction=d.val_fraction,
                   workers=d.workers, sample_by=d.sample_by, min_val_tokens=block_size + 1 if packing else 2)
    data_dir = run_first(lambda: ensure_prepared(d.sources, tokenizer, cache_dir=d.cache_dir, **options))
    meta = read_meta(data_dir)
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    if packing:
        train = PackedLoader(data_dir, "train", block_size, t.batch_size, epoch_aligned=aligned, **loader_args)
        val = PackedLoader(data_dir, "val", block_size, t.batch_size, shuffle=False, **loader_args)
        summary = f"data: {tr['tokens']:,} train / {va['tokens']:,} val tokens, packed in blocks of {block_size}"
        return TrainData(train, val, split_bytes_per_token(va), summary, data_dir, meta)
    train_ex = [lm_example(doc, block_size) for doc in _documents(data_dir, "train", meta)]
    val_ex = [lm_example(doc, block_size) for doc in _documents(data_dir, "val", meta)]
    longer = sum(1 for x, _ in train_ex if len(x) == block_size)
    summary = (f"data: {len(train_ex):,} train / {len(val_ex):,} val examples, one per sequence "
               f"(padded; {longer:,} truncated to {block_size} tokens)")
    train = ExampleLoader(train_ex, t.batch_size, pad_id=pad, epoch_aligned=aligned, **loader_args)
    val = ExampleLoader(val_ex, t.batch_size, pad_id=pad, shuffle=False, name="val", **loader_args)
    return TrainData(train, val, _target_bytes(tokenizer, val_ex), summary, data_dir, meta)


def _classification_data(cfg: TrainConfig, tokenizer: Tokenizer, block_size: int, pad: int, aligned: bool,
                         loader_args: dict) -> TrainData:
    """Texts + labels -> left-padded (ids, mask, label) batches; a stratified, stable validation split."""
    from collections import Counter

    from gpt2kit.classify import (
        class_weights,
        collate_left,
        empty_classify_batch,
        encode,
        read_examples,
        stratified_split,
    )

    d, t = cfg.data, cfg.train
    texts, labels, keys, names = read_examples(d.sources, d.text_column, d.label_column)
    if len(names) < 2:
        raise UserError(f"every example in {' '.join(d.sources)} has the label {names[0]!r}; a classifier needs "
                        f"at least two classes in {flag('data.label_column')}")
    held = stratified_split(keys, labels, d.val_fraction)
    index = {name: i for i, name in enumerate(names)}
    ids = encode(tokenizer, texts, block_size, d.truncation_side)
    examples = [(x, index[y]) for x, y in zip(ids, labels)]
    train_ex = [e for e, v in zip(examples, held) if not v]
    val_ex = [e for e, v in zip(examples, held) if v] or train_ex
    counts = Counter(y for _, y in train_ex)
    weights = class_weights([y for _, y in train_ex], len(names)) if d.class_weights == "balanced" else None
    kw = dict(collate=collate_left, empty=empty_classify_batch, targets=lambda ex: 1, **loader_args)
    summary = (f"data: {len(train_ex):,} train / {len(val_ex):,} val examples, {len(names)} classes ("
               + ", ".join(f"{n}: {counts[i]:,}" for i, n in enumerate(names[:8]))
               + (", ..." if len(names) > 8 else "") + " in train)"
               + (", balanced class weights" if weights is not None else "")
               + (f", {sum(len(x) == block_size for x in ids):,} texts truncated to {block_size} tokens"))
    return TrainData(ExampleLoader(train_ex, t.batch_size, pad_id=pad, epoch_aligned=aligned, **kw),
                     ExampleLoader(val_ex, t.batch_size, pad_id=pad, shuffle=False, name="val", **kw),
                     None, summary, labels=names, class_weights=weights)
