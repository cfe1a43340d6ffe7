"""Loaders: exact blocks, every block once per epoch, exact resume, rank slicing, streaming resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt2kit.errors import UserError
from gpt2kit.loader import PackedLoader, StreamingLoader
from gpt2kit.prepare import load_split, prepare
from gpt2kit.tokenizer import train_tokenizer

DOCS = [f"document {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(i % 40 + 5)) for i in range(120)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i, t in enumerate(DOCS):
        (root / f"d{i:03d}.txt").write_text(t)
    return root


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer([str(corpus)], 300)


@pytest.fixture(scope="module")
def data(corpus, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "prep"
    prepare([str(corpus)], tok, out, val_fraction=0.1, shard_tokens=997, progress=False)  # blocks span shards
    return out


def all_tokens(data, split):
    return np.concatenate(load_split(data, split)).astype(np.int64)


def block_set(x):
    return [tuple(r) for r in x.tolist()]


def test_blocks_are_exact_slices(data):
    T = 16
    loader = PackedLoader(data, "train", T, 4, shuffle=False)
    tokens = all_tokens(data, "train")
    assert loader.num_blocks == (len(tokens) - 1) // T and len(loader.shards) > 1
    for k in range(loader.batches_per_epoch):
        x, y = loader.next_batch()
        assert x.dtype == torch.int64 and x.shape == (4, T) and y.shape == (4, T)
        for row in range(4):
            i = (k * 4 + row) % loader.num_blocks
            assert x[row].tolist() == tokens[i * T : i * T + T].tolist()
            assert y[row].tolist() == tokens[i * T + 1 : i * T + T + 1].tolist()


def test_every_block_once_per_epoch_and_reshuffled(data):
    loader = PackedLoader(data, "train", 8, 5, seed=3)
    n = loader.num_blocks
    seen = []
    while len(seen) < 2 * n + 5:
        seen += block_set(loader.next_batch()[0])
    ordered = PackedLoader(data, "train", 8, 5, shuffle=False)
    all_blocks = sorted(b for x, _ in ordered.iter_epoch() for b in block_set(x))
    assert len(all_blocks) == n
    assert sorted(seen[:n]) == all_blocks and sorted(seen[n : 2 * n]) == all_blocks
    assert seen[:n] != seen[n : 2 * n]  # epoch 2 is a new permutation


@pytest.mark.parametrize("k", [0, 3, 17])
def test_resume_is_exact(data, k):
    import json

    a = PackedLoader(data, "train", 8, 4, seed=1)
    expected = [a.next_batch() for _ in range(k + 10)]
    b = PackedLoader(data, "train", 8, 4, seed=1)
    for _ in range(k):
        b.next_batch()
    state = json.loads(json.dumps(b.state_dict()))
    c = PackedLoader(data, "train", 8, 4, seed=1)
    c.load_state_dict(state)
    for want in expected[k:]:
        got = c.next_batch()
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_two_ranks_see_what_one_rank_with_double_batch_sees(data):
    one = PackedLoader(data, "train", 8, 6, seed=5)
    r0 = PackedLoader(data, "train", 8, 3, seed=5, rank=0, world_size=2)
    r1 = PackedLoader(data, "train", 8, 3, seed=5, rank=1, world_size=2)
    for _ in range(30):
        x, _ = one.next_batch()
        assert torch.equal(torch.cat([r0.next_batch()[0], r1.next_batch()[0]]), x)
    # elastic resume: the 1-rank state restores into 2 ranks at the same global position
    r0b = PackedLoader(data, "train", 8, 3, seed=5, rank=0, world_size=2)
    r0b.load_state_dict(one.state_dict())
    assert torch.equal(r0b.next_batch()[0], one.next_batch()[0][:3])


def test_iter_epoch_covers_val_once_and_is_stateless(data):
    loader = PackedLoader(data, "val", 8, 4)
    tokens = all_tokens(data, "val")
    blocks = [b for x, _ in loader.iter_epoch() for b in block_set(x)]
    assert blocks == [tuple(tokens[i * 8 : i * 8 + 8].tolist()) for i in range(loader.num_blocks)]
    assert loader.position == 0
    assert len(list(loader.iter_epoch(max_batches=1))) == 1
    halves = [PackedLoader(data, "val", 8, 4, rank=r, world_size=2) for r in range(2)]
    n0, n1 = (sum(len(x) for x, _ in h.iter_epoch()) for h in halves)
    assert n0 == n1 == loader.num_blocks // 2


def test_too_small_split_says_how_many_tokens(data):
    n = len(all_tokens(data, "val"))
    with pytest.raises(UserError, match=f"has {n} tokens.*needs at least {n + 7}"):
        PackedLoader(data, "val", n + 6, 1)
    with pytest.raises(UserError, match="fewer ranks"):
        PackedLoader(data, "val", (n - 1) // 2, 1, rank=0, world_size=3)


def test_resume_rejects_other_data(data):
    a = PackedLoader(data, "train", 8, 4)
    state = a.state_dict() | {"num_tokens": 5}
    with pytest.raises(UserError, match="num_tokens"):
        PackedLoader(data, "train", 8, 4).load_state_dict(state)


def test_streaming_matches_packed_and_resumes(corpus, tok, tmp_path):
    out = tmp_path / "prep"
    prepare([str(corpus)], tok, out, val_fraction=0.0, progress=False)
    packed = PackedLoader(out, "train", 16, 3, shuffle=False)
    stream = StreamingLoader([str(corpus)], tok, 16, 3)
    expected = [packed.next_batch() for _ in range(packed.batches_per_epoch + 4)]  # crosses an epoch
    got = []
    for k in range(len(expected)):
        if k in (2, 7):  # save and restore into a fresh loader mid-way
            state = stream.state_dict()
            stream = StreamingLoader([str(corpus)], tok, 16, 3)
            stream.load_state_dict(state)
        got.append(stream.next_batch())
    n_full = (packed.num_tokens - 1) // 16 // 3  # until the packed loader wraps, the streams are identical
    for (gx, gy), (ex, ey) in list(zip(got, expected))[:n_full]:
        assert torch.equal(gx, ex) and torch.equal(gy, ey)
    uninterrupted = StreamingLoader([str(corpus)], tok, 16, 3)
    for gx, _ in got:  # also past the end of the source, where it wraps to a new epoch
        assert torch.equal(uninterrupted.next_batch()[0], gx)
    r1 = StreamingLoader([str(corpus)], tok, 16, 3, rank=1, world_size=2)
    both = StreamingLoader([str(corpus)], tok, 16, 6)
    assert torch.equal(r1.next_batch()[0], both.next_batch()[0][3:])
