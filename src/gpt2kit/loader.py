"""Batches of `(x, y)` token blocks for training, resumable to the exact next block.

`PackedLoader` reads a prepared split (`gpt2kit.prepare`) through numpy memmaps. The split is one stream
of N tokens (shards concatenated: a block may span two shards); block i is

    x = tokens[i*T : i*T + T],  y = tokens[i*T + 1 : i*T + T + 1],   i < num_blocks = (N - 1) // T

Documents are packed back to back, separated by EOS, no padding. The order of blocks is an endless stream:
epoch e is the permutation of all blocks drawn from `(seed, e)`, and the epochs follow each other. The global
batch at step k is stream[k*B*W : (k+1)*B*W] and rank r takes the r-th contiguous slice of B, so a 2-rank
run with batch B sees exactly what a 1-rank run with batch 2B sees, every block is seen once per epoch, and
the batch shape never changes (the last batch of an epoch is completed by the start of the next epoch).

The loader's whole state is `position`, the number of stream entries consumed by all ranks together; so
resuming is exact, and also works when the world size or batch size changed (as long as B*W divides it).
With `epoch_aligned=True` (training by epochs) a batch never crosses an epoch's end: the last batch of an
epoch is smaller, so `train.epochs 2` visits every block exactly twice.

`ExampleLoader` has the same order and resume rules over examples of different lengths (fine-tuning with
`data.packing: false`): one example per row, truncated to the block size, right padded, no loss on padding.

`StreamingLoader` packs on the fly from any source (no prepare step): documents are read and encoded as
needed, in order (no shuffling); its state is (epoch, document index, token offset) so it resumes exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from gpt2kit.errors import UserError, flag
from gpt2kit.prepare import is_val, load_split, read_meta


def _check_sizes(block_size: int, batch_size: int, rank: int, world_size: int) -> None:
    if block_size < 1 or batch_size < 1:
        raise UserError(f"block_size and batch_size must be positive, got {block_size} and {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not within world_size {world_size}")


class BlockStream:
    """The order of items (blocks or examples): epoch e is permutation(seed, e); epochs are concatenated."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._epoch, self._perm = -1, np.arange(0)

    def perm(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            else:
                self._perm = np.arange(self.n)
            self._epoch = epoch
        return self._perm

    def take(self, start: int, count: int) -> np.ndarray:
        """Stream entries [start, start + count), crossing epochs as needed."""
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            epoch, offset = divmod(start + done, self.n)
            part = self.perm(epoch)[offset : offset + count - done]
            out[done : done + len(part)] = part
            done += len(part)
        return out


IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index: no loss at that position


def next_slice(stream: BlockStream, position: int, rank: int, batch_size: int, world_size: int,
               epoch_aligned: bool) -> tuple[np.ndarray, int]:
    """(this rank's items of the next global batch, the position after it).

    Rank r takes the r-th slice of B. With `epoch_aligned`, the global batch stops at the end of the epoch;
    such a smaller batch is shared out evenly, so a rank gets nothing only when fewer items than ranks remain."""
    B, W = batch_size, world_size
    size = B * W
    if epoch_aligned:
        size = min(size, stream.n - position % stream.n)
    if size == B * W:
        lo, count = rank * B, B
    else:
        base, extra = divmod(size, W)
        lo, count = rank * base + min(rank, extra), base + int(rank < extra)
    return stream.take(position + lo, count), position + size


def collate_examples(pad_id: int, items: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (x, y) pairs: x with `pad_id`, y with IGNORE_INDEX."""
    L = max(len(x) for x, _ in items)
    X = torch.full((len(items), L), pad_id, dtype=torch.long)
    Y = torch.full((len(items), L), IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(items):
        X[i, : len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
        Y[i, : len(y)] = torch.as_tensor(np.asarray(y, dtype=np.int64))
    return X, Y


def _eval_count(n: int, world_size: int, batch_size: int, max_batches: int | None) -> int:
    return n if not max_batches else min(n, max_batches * batch_size * world_size)


def _eval_ids(n: int, rank: int, world_size: int, batch_size: int, max_batches: int | None) -> Iterator[np.ndarray]:
    """This rank's batches of item ids for evaluation: all n items, or an even spread of at most
    max_batches * batch_size * world_size of them (the same ones every time, so evaluations compare)."""
    k = _eval_count(n, world_size, batch_size, max_batches)
    chosen = np.arange(n) if k == n else np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))
    share = chosen[rank::world_size]
    for i in range(0, len(share), batch_size):
        yield share[i : i + batch_size]


def empty_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """One padding token without a target: a rank with no data left in an epoch still runs forward and
    backward (DDP needs every rank to), adding nothing to the loss."""
    return torch.zeros((1, 1), dtype=torch.long), torch.full((1, 1), IGNORE_INDEX, dtype=torch.long)


class PackedLoader:
    """Shuffled, packed `(x, y)` int64 batches of shape (batch_size, block_size) from a prepared split."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        block_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        epoch_aligned: bool = False,
    ):
        _check_sizes(block_size, batch_size, rank, world_size)
        self.epoch_aligned = epoch_aligned
        self.meta = read_meta(data_dir)
        self.data_dir, self.split = str(data_dir), split
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.shards = load_split(data_dir, split, self.meta)
        lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.ends = np.cumsum(lengths)  # token index where each shard ends
        self.starts = self.ends - lengths
        self.num_tokens = int(self.ends[-1]) if len(self.ends) else 0
        self.num_blocks = max(0, (self.num_tokens - 1) // block_size)
        if self.num_blocks < world_size:
            need = world_size * block_size + 1
            raise UserError(
                f"the {split} split of {data_dir} has {self.num_tokens} tokens, but block_size {block_size} "
                f"needs at least {need} ({world_size} block(s) of {block_size} + 1); add data, lower "
                + flag("model.block_size") + (", or use fewer ranks" if world_size > 1 else "")
                + (f", or raise {flag('data.val_fraction')} when preparing" if split == "val" else "")
            )
        self.stream = BlockStream(self.num_blocks, seed, shuffle)
        self.position = 0
        self._arange = np.arange(block_size + 1, dtype=np.int64)

    @property
    def num_items(self) -> int:
        return self.num_blocks

    @property
    def batches_per_epoch(self) -> int:
        """Batches per epoch (rounded up: a smaller last batch, or one completed by the next epoch)."""
        return -(-self.num_blocks // (self.batch_size * self.world_size))

    @property
    def epoch(self) -> int:
        return self.position // self.num_blocks

    @property
    def at_epoch_end(self) -> bool:
        return self.position > 0 and self.position % self.num_blocks == 0

    def _blocks(self, block_ids: np.ndarray) -> np.ndarray:
        """(len(block_ids), T + 1) tokens; one gather when all blocks sit in one shard (the common case)."""
        T = self.block_size
        first = block_ids * T
        shard = np.searchsorted(self.ends, first, side="right")
        last_shard = np.searchsorted(self.ends, first + T, side="right")
        if len(self.shards) == 1 or (np.all(shard == shard[0]) and np.all(last_shard == shard)):
            s = int(shard[0])
            idx = (first - self.starts[s])[:, None] + self._arange
            return self.shards[s][idx].astype(np.int64)
        out = np.empty((len(block_ids), T + 1), dtype=np.int64)
        for row, (start, s) in enumerate(zip(first.tolist(), shard.tolist())):
            end, filled = start + T + 1, 0
            while filled < T + 1:  # a block that spans shards
                local = start + filled - int(self.starts[s])
                part = self.shards[s][local : local + (end - start - filled)]
                out[row, filled : filled + len(part)] = part
                filled += len(part)
                s += 1
        return out

    def _batch(self, block_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = self._blocks(block_ids)
        # meta.json's max_id spares load_split a scan; this (microseconds a batch) catches shards changed since
        if blocks.size and int(blocks.max()) >= self.meta["vocab_size"]:
            raise UserError(f"the {self.split} shards of {self.data_dir} hold token id {int(blocks.max())}, beyond "
                            f"meta.json's vocab_size {self.meta['vocab_size']}; re-run `gpt2kit prepare`")
        tokens = torch.from_numpy(blocks)
        return tokens[:, :-1], tokens[:, 1:]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) of this rank; endless (a new epoch reshuffles with (seed, epoch))."""
        ids, self.position = next_slice(self.stream, self.position, self.rank, self.batch_size, self.world_size,
                                        self.epoch_aligned)
        return self._batch(ids) if len(ids) else empty_batch()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def iter_epoch(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over this rank's share of the split, in order (for evaluation; the state is untouched).

        Rank r takes blocks r, r + W, r + 2W, ... of the first W * (num_blocks // W), so every rank yields the
        same number of batches (the last one may be smaller than batch_size). With `max_batches`, a fixed
        sample of blocks spread evenly over the whole split (the same at every call), never just its start."""
        for ids in _eval_ids((self.num_blocks // self.world_size) * self.world_size, self.rank, self.world_size,
                             self.batch_size, max_batches):
            yield self._batch(ids)

    def eval_tokens(self, max_batches: int | None = None) -> tuple[int, int]:
        """(target tokens an evaluation with `max_batches` reads over all ranks, target tokens in the split)."""
        n = (self.num_blocks // self.world_size) * self.world_size
        return min(n, _eval_count(n, self.world_size, self.batch_size, max_batches)) * self.block_size, \
            self.num_blocks * self.block_size

    def state_dict(self) -> dict:
        """JSON-able position; restore with load_state_dict to continue at exactly the next block."""
        return {
            "kind": "packed",
            "position": int(self.position),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "split": self.split,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "num_tokens": self.num_tokens,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "shuffle", "block_size", "num_tokens"):
            if key in state and state[key] != getattr(self, key):
                raise UserError(
                    f"cannot resume the data loader: {key} was {state[key]!r} and is now {getattr(self, key)!r}; "
                    "resume with the same data and settings, or start a new run"
                )
        self.position = int(state["position"])


class ExampleLoader:
    """Shuffled batches of variable-length examples, right padded; the order and resume rules of PackedLoader.

    `examples[i]` is `(x, y)`: input ids and targets of equal length (at most block_size), y = IGNORE_INDEX
    where there is no loss (e.g. a prompt). Padding gets `pad_id` in x and IGNORE_INDEX in y; causal attention
    never looks right, so right padding needs no attention mask and changes no real position's logits."""

    def __init__(self, examples, batch_size: int, *, pad_id: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, epoch_aligned: bool = False, name: str = "train",
                 collate=None, empty=None, targets=None):
        _check_sizes(1, batch_size, rank, world_size)
        if len(examples) == 0:
            raise UserError(f"the {name} split has no examples; add data")
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        # Other example kinds (classification: left padded, a label per row) bring their own batching.
        self.collate = collate or collate_examples
        self.empty = empty or empty_batch
        self.targets = targets or (lambda ex: int((np.asarray(ex[1]) != IGNORE_INDEX).sum()))
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch_aligned = epoch_aligned
        self.stream = BlockStream(len(examples), seed, shuffle)
        self.position = 0

    @property
    def num_items(self) -> int:
        return len(self.examples)

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.examples) // (self.batch_size * self.world_size))

    @property
    def epoch(self) -> int:
        return self.position // len(self.examples)

    @property
    def at_epoch_end(self) -> bool:
        return self.position > 0 and self.position % len(self.examples) == 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids, self.position = next_slice(self.stream, self.position, self.rank, self.batch_size, self.world_size,
                                        self.epoch_aligned)
        return self.collate(self.pad_id, [self.examples[i] for i in ids.tolist()]) if len(ids) else self.empty()

    def iter_epoch(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every example once, in order, rank r taking examples r, r + W, ...; with `max_batches`, an even
        spread over the split (for evaluation; the state is untouched)."""
        for ids in _eval_ids(len(self.examples), self.rank, self.world_size, self.batch_size, max_batches):
            yield self.collate(self.pad_id, [self.examples[j] for j in ids.tolist()])

    def eval_tokens(self, max_batches: int | None = None) -> tuple[int, int]:
        """(target tokens an evaluation with `max_batches` reads, target tokens in the split)."""
        def targets(ids) -> int:
            return sum(self.targets(self.examples[i]) for i in ids)
        n = len(self.examples)
        chosen = [i for r in range(self.world_size) for b in _eval_ids(n, r, self.world_size, self.batch_size,
                                                                     max_batches) for i in b.tolist()]
        return targets(chosen), targets(range(n))

    def state_dict(self) -> dict:
        return {"kind": "examples", "position": int(self.position), "seed": self.seed, "shuffle": self.shuffle,
                "examples": len(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        for key, now in (("seed", self.seed), ("shuffle", self.shuffle), ("examples", len(self.examples))):
            if key in state and state[key] != now:
                raise UserError(f"cannot resume the data loader: {key} was {state[key]!r} and is now {now!r}; "
                                "resume with the same data and settings, or start a new run")
        self.position = int(state["position"])


def lm_example(seq: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one document for per-example LM training: the document + EOS, cut to block_size + 1."""
    seq = seq[: block_size + 1]
    return seq[:-1], seq[1:]


class StreamingLoader:
    """Packed (x, y) batches straight from sources, tokenized as they are read; resumable exactly.

    Documents come in source order (no shuffle), each followed by EOS; epochs repeat the source. Every rank
    reads the whole stream and keeps its slice of each global batch of B * W blocks, so the batches are those
    of a PackedLoader with shuffle=False over the same documents. `split`/`val_fraction` select documents with
    the same hash split as `prepare`."""

    def __init__(
        self,
        sources: Sequence[str] | str,
        tokenizer,
        block_size: int,
        batch_size: int,
        *,
        split: str = "train",
        val_fraction: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        **source_options,
    ):
        from gpt2kit.sources import open_sources
        from gpt2kit.tokenizer import load_tokenizer

        _check_sizes(block_size, batch_size, rank, world_size)
        self.tokenizer = load_tokenizer(tokenizer)
        self.corpus = open_sources(sources, **source_options)
        self.block_size, self.batch_size, self.rank, self.world_size = block_size, batch_size, rank, world_size
        self.split, self.val_fraction = split, val_fraction
        self._open(0, 0, 0)

    def _keep(self, key: str) -> bool:
        if self.val_fraction <= 0:
            return self.split == "train"
        return is_val(key, self.val_fraction) == (self.split == "val")

    def _documents(self) -> Iterator:
        n = 0
        for d in self.corpus:
            if self._keep(d.key):
                n += 1
                yield d
        if n == 0:
            raise UserError(f"no {self.split} documents in {' '.join(s.spec for s in self.corpus.sources)}; "
                            f"check --data and {flag('data.val_fraction')}")

    def _open(self, epoch: int, doc: int, offset: int) -> None:
        """Start reading at token `offset` of document `doc` of `epoch` (skipping the documents before it)."""
        self._segs: list[list] = []  # [epoch, doc, ids, cursor] of the documents in the buffer
        self._avail = 0
        self._epoch, self._doc = epoch, doc  # the next document to read
        self._docs = self._documents()
        for _ in range(doc):
            if next(self._docs, None) is None:
                raise UserError("cannot resume the streaming loader: the source has fewer documents than before")
        self._skip = offset

    def _read(self) -> None:
        doc = next(self._docs, None)
        if doc is None:  # end of the source: the next epoch starts over
            self._epoch, self._doc = self._epoch + 1, 0
            self._docs = self._documents()
            doc = next(self._docs)
        ids = np.asarray(self.tokenizer.encode(doc.text) + [self.tokenizer.eos_id], dtype=np.int64)
        self._segs.append([self._epoch, self._doc, ids, self._skip])
        self._avail += len(ids) - self._skip
        self._skip = 0
        self._doc += 1

    def _take_block(self) -> np.ndarray:
        """T + 1 tokens from the front of the stream, advancing it by T."""
        T = self.block_size
        while self._avail < T + 1:
            self._read()
        out = np.empty(T + 1, dtype=np.int64)
        filled = 0
        for _, _, ids, cur in self._segs:
            part = ids[cur : cur + T + 1 - filled]
            out[filled : filled + len(part)] = part
            filled += len(part)
            if filled == T + 1:
                break
        advance = T
        while advance:
            seg = self._segs[0]
            n = min(advance, len(seg[2]) - seg[3])
            seg[3] += n
            advance -= n
            if seg[3] == len(seg[2]):
                self._segs.pop(0)
        self._avail -= T
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) of this rank; endless."""
        B = self.batch_size
        rows = [self._take_block() for _ in range(B * self.world_size)][self.rank * B : (self.rank + 1) * B]
        tokens = torch.from_numpy(np.stack(rows))
        return tokens[:, :-1], tokens[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """JSON-able position of the next block: (epoch, document index, token offset in that document)."""
        if self._segs:
            epoch, doc, _, cur = self._segs[0]
        else:
            epoch, doc, cur = self._epoch, self._doc, self._skip
        return {"kind": "streaming", "epoch": int(epoch), "doc": int(doc), "offset": int(cur),
                "block_size": self.block_size, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        if state.get("block_size", self.block_size) != self.block_size:
            raise UserError(f"cannot resume the data loader: block_size was {state['block_size']}, now {self.block_size}")
        self._open(int(state["epoch"]), int(state["doc"]), int(state["offset"]))
