"""Loss, perplexity and bits per byte of a model over documents, with a sliding window.

Each document is scored on its own as `[eos] + tokens` (the EOS plays the role of the separator the
model saw before every document in training), so every token of the document is predicted exactly
once. A document longer than the context is scored with overlapping windows: the first window scores
its first `context` tokens, each next window moves on by `stride` tokens and scores only the tokens
not scored yet, with at least `context - stride` tokens of context before them.

- loss: token-weighted mean negative log-likelihood in nats (total nats / scored tokens);
- perplexity: exp(loss);
- bits per byte: total nats / ln 2 / UTF-8 bytes of the evaluated text. Unlike loss, it does not
  depend on the tokenizer, so models with different vocabularies compare. None when the bytes are unknown
  (never a division by zero).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from gpt2kit.errors import UserError
from gpt2kit.model import GPT


@dataclass
class EvalResult:
    loss: float  # nats per token
    perplexity: float
    bits_per_byte: float | None  # None: bytes unknown
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the evaluated text
    documents: int

    def to_dict(self) -> dict:
        return asdict(self)


def sliding_windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (start, end, first) covering a sequence of `n` tokens.

    The model reads ids[start:end] (at most `context` tokens) and predicts ids[start+1:end+1]; only the
    predictions of positions >= `first` count. Over all windows, positions 1 .. n-1 are each predicted
    exactly once (position 0 has no context).
    """
    if context < 1 or not 1 <= stride <= context:
        raise UserError(f"need 1 <= stride ({stride}) <= context ({context}); lower --stride")
    windows = []
    first = 1  # the next position to predict
    while first < n:
        budget = context if first == 1 else stride
        last = min(n - 1, first + budget - 1)  # the last position this window predicts
        start = max(0, last - context)
        windows.append((start, last, first))
        first = last + 1
    return windows


class NLLAccumulator:
    """Sums negative log-likelihoods over windows from many documents, batched for speed."""

    def __init__(self, model: GPT, context: int, stride: int, batch_size: int = 8):
        self.model, self.context, self.stride, self.batch_size = model, context, stride, batch_size
        self.device = model.transformer.wte.weight.device
        self.pending: list[tuple[torch.Tensor, int]] = []  # (window ids, index of the first scored target)
        self.nats = 0.0
        self.tokens = 0

    def add(self, ids: Sequence[int] | torch.Tensor) -> None:
        ids = torch.as_tensor(ids, dtype=torch.long)
        for start, end, first in sliding_windows(len(ids), self.context, self.stride):
            self.pending.append((ids[start : end + 1], first - start - 1))
            if len(self.pending) >= self.batch_size:
                self.flush()

    @torch.inference_mode()
    def flush(self) -> None:
        if not self.pending:
            return
        # Right padding is harmless for a causal model: real tokens never attend to later positions.
        T = max(len(w) for w, _ in self.pending) - 1
        inp = torch.zeros((len(self.pending), T), dtype=torch.long)
        tgt = torch.full((len(self.pending), T), -100, dtype=torch.long)  # -100: not scored
        for i, (w, skip) in enumerate(self.pending):
            inp[i, : len(w) - 1] = w[:-1]
            tgt[i, skip : len(w) - 1] = w[1 + skip :]
        logits = self.model(inp.to(self.device))
        nll = F.cross_entropy(logits.float().flatten(0, 1), tgt.to(self.device).flatten(), reduction="sum")
        self.nats += float(nll)
        self.tokens += int((tgt != -100).sum())
        self.pending = []


def evaluate_token_documents(
    model: GPT,
    documents: Iterable[tuple[Sequence[int], int]],
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> EvalResult:
    """Score documents given as (token ids, UTF-8 bytes); each ids list starts with its separator (EOS)."""
    context = context or model.config.block_size
    if not model.config.rope and context > model.config.block_size:
        raise UserError(f"--context {context} exceeds the model's block_size {model.config.block_size}")
    stride = stride or max(1, context // 2)
    was_training = model.training
    model.eval()
    acc = NLLAccumulator(model, context, stride, batch_size)
    n_bytes = n_docs = 0
    try:
        for ids, nb in documents:
            if len(ids) < 2:
                continue
            acc.add(ids)
            n_bytes += nb
            n_docs += 1
            if progress and n_docs % 100 == 0:
                print(f"eval: {n_docs} documents, {acc.tokens} tokens", file=sys.stderr)
        acc.flush()
    finally:
        model.train(was_training)
    if acc.tokens == 0:
        raise UserError("no tokens to evaluate; the data is empty")
    loss = acc.nats / acc.tokens
    bpb = acc.nats / math.log(2) / n_bytes if n_bytes > 0 else None
    return EvalResult(loss, math.exp(min(loss, 700.0)), bpb, acc.tokens, n_bytes, n_docs)


def evaluate_texts(
    model: GPT,
    tokenizer,
    texts: Iterable[str],
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> EvalResult:
    """Loss, perplexity and bits per byte of `model` over documents `texts` (see the module docstring)."""
    eos = getattr(tokenizer, "eos_id", None)
    head = [eos] if eos is not None else []  # without an EOS the first token of each document goes unscored

    def docs():
        for text in texts:
            ids = tokenizer.encode(text)
            if ids and max(ids) >= model.config.vocab_size:
                raise UserError(f"the tokenizer gives id {max(ids)} but the model has only "
                                f"{model.config.vocab_size} tokens; use the tokenizer the model was trained with")
            yield head + ids, len(text.encode("utf-8"))

    return evaluate_token_documents(model, docs(), context=context, stride=stride, batch_size=batch_size,
                                    progress=progress)


def evaluate_prepared(
    model: GPT,
    data_dir: str,
    split: str = "val",
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    limit_docs: int | None = None,
    progress: bool = False,
) -> EvalResult:
    """The same numbers over a split of a prepared directory (`gpt2kit prepare`): its EOS-separated
    documents are scored like `evaluate_texts` scores texts; bytes come from meta.json."""
    import numpy as np

    from gpt2kit.prepare import check_vocab, load_split, read_meta, split_bytes_per_token

    meta = read_meta(data_dir)
    check_vocab(meta["vocab_size"], model.config.vocab_size, data_dir)
    eos = int(meta["eos_id"])

    def docs():
        n = 0
        for shard in load_split(data_dir, split, meta):
            arr = np.asarray(shard, dtype=np.int64)
            if arr.size and int(arr.max()) >= meta["vocab_size"]:  # shards changed since meta.json's max_id
                raise UserError(f"the {split} shards of {data_dir} hold token id {int(arr.max())}, beyond "
                                f"meta.json's vocab_size {meta['vocab_size']}; re-run `gpt2kit prepare`")
            start = 0
            for end in [*np.flatnonzero(arr == eos).tolist(), len(arr)]:
                if end > start:
                    yield [eos, *arr[start:end].tolist()], 0
                    n += 1
                    if limit_docs is not None and n >= limit_docs:
                        return
                start = end + 1

    res = evaluate_token_documents(model, docs(), context=context, stride=stride, batch_size=batch_size,
                                   progress=progress)
    info = meta["splits"][split]
    # Bytes are known for the whole split only (and not at all in directories prepared before tail splits
    # counted them, where meta says 0).
    if limit_docs is not None or split_bytes_per_token(info) is None:
        res.bytes, res.bits_per_byte = 0, None
    else:
        res.bytes = int(info["bytes"])
        res.bits_per_byte = res.loss * res.tokens / math.log(2) / res.bytes
    return res


@torch.no_grad()
def evaluate_blocks(model: GPT, data_dir: str, split: str = "val", *, batch_size: int = 8,
                    progress: bool = False) -> EvalResult:
    """A prepared split cut into consecutive blocks of the model's block_size, documents packed back to back,
    each token predicted from the start of its block: exactly what `train` reports as val loss over the
    whole split (the numbers agree to float rounding). Bits per byte use the split's bytes per token."""
    from gpt2kit.loader import PackedLoader
    from gpt2kit.prepare import check_vocab, read_meta, split_bytes_per_token

    meta = read_meta(data_dir)
    check_vocab(meta["vocab_size"], model.config.vocab_size, data_dir)
    loader = PackedLoader(data_dir, split, model.config.block_size, batch_size, shuffle=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, tokens = 0.0, 0
    try:
        for i, (x, y) in enumerate(loader.iter_epoch()):
            logits = model(x.to(device)).float()
            nats += F.cross_entropy(logits.view(-1, logits.size(-1)), y.to(device).reshape(-1),
                                    reduction="sum").item()
            tokens += y.numel()
            if progress and (i + 1) % 50 == 0:
                print(f"eval: {tokens:,} of {loader.num_blocks * loader.block_size:,} tokens", file=sys.stderr)
    finally:
        model.train(was_training)
    loss = nats / tokens
    bpt = split_bytes_per_token(meta["splits"][split])
    n_bytes = round(tokens * bpt) if bpt else 0
    bpb = loss / math.log(2) / bpt if bpt else None
    return EvalResult(loss, math.exp(min(loss, 700.0)), bpb, tokens, n_bytes, int(meta["splits"][split]["documents"]))
