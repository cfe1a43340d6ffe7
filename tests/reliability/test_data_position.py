"""Data position across a resume (issue 11, section 3.2): stopped mid-epoch or exactly at an epoch's end, with
shuffling and gradient accumulation, a resumed run reads the same blocks in the same order as an uninterrupted
one - no block twice, none skipped. At the loader (its real state_dict through JSON, as state.json keeps it)
and end to end (`train.epochs 2` stopped by SIGTERM at the boundary or SIGINT mid-epoch, then `--resume auto`)."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from gpt2kit.config import build_config
from gpt2kit.loader import ExampleLoader, PackedLoader


@pytest.fixture(scope="module")
def small_data(corpus_dir, small_tokenizer, tmp_path_factory):
    """~900 tokens: 2 epochs of a tiny model are ~20 steps."""
    from gpt2kit.prepare import prepare

    src = tmp_path_factory.mktemp("position") / "doc.txt"
    src.write_text((corpus_dir / "heapq.py").read_text()[:2500])
    out = src.parent / "data"
    prepare([str(src)], small_tokenizer, out, val_fraction=0.1, progress=False, workers=1)
    return out


def _consume(loaders, steps: int, accum: int, aligned: bool) -> list[list[int]]:
    """Blocks read per optimizer step by all ranks, with the training loop's accumulation rule (an epoch's last
    step may take fewer micro-batches when epoch-aligned)."""
    out = []
    for _ in range(steps):
        ids: list[int] = []
        micro = 0
        while micro < accum and not (aligned and micro and loaders[0].at_epoch_end):
            for ld in loaders:
                x, _ = ld.next_batch()
                ids += [int(r[0]) * 100_000 + int(r[1]) for r in x.numpy()]  # a block's first two ids + ...
            micro += 1
        out.append(ids)
    return out


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_packed_loader_resume_mid_epoch_and_at_the_boundary(small_data, world, aligned):
    block, batch, accum, seed = 16, 3, 2, 7

    def loaders():
        return [PackedLoader(small_data, "train", block, batch, seed=seed, rank=r, world_size=world,
                             epoch_aligned=aligned) for r in range(world)]

    probe = loaders()[0]
    steps_per_epoch = -(-probe.batches_per_epoch // accum)
    total = 2 * steps_per_epoch + 1
    whole = _consume(loaders(), total, accum, aligned)
    if aligned:  # each epoch: every block exactly once (identified by position: a block's tokens and offset)
        blocks = [(ld.stream.perm(0), ld.stream.perm(1)) for ld in loaders()[:1]][0]
        assert sorted(blocks[0]) == sorted(blocks[1]) == list(range(probe.num_blocks))
    for stop in (1, steps_per_epoch // 2, steps_per_epoch, steps_per_epoch + 1):  # mid-epoch, boundary, after
        first = loaders()
        head = _consume(first, stop, accum, aligned)
        states = [json.loads(json.dumps(ld.state_dict())) for ld in first]
        if stop == steps_per_epoch and aligned:
            assert all(ld.at_epoch_end for ld in first) and states[0]["position"] == probe.num_blocks
        resumed = loaders()
        for ld, state in zip(resumed, states):
            ld.load_state_dict(state)
        tail = _consume(resumed, total - stop, accum, aligned)
        assert head + tail == whole, stop


def test_example_loader_resume_at_the_boundary_with_accumulation():
    examples = [(np.arange(i % 5 + 1), np.full(i % 5 + 1, i)) for i in range(23)]
    batch, accum = 4, 2
    loader = ExampleLoader(examples, batch, pad_id=0, seed=3, epoch_aligned=True)
    seen = []
    while loader.epoch < 1 or not loader.at_epoch_end:
        _, y = loader.next_batch()
        seen += sorted({int(v) for v in y.flatten().tolist() if v >= 0})
        if loader.at_epoch_end and loader.epoch == 1:
            state = json.loads(json.dumps(loader.state_dict()))
            again = ExampleLoader(examples, batch, pad_id=0, seed=3, epoch_aligned=True)
            again.load_state_dict(state)
            rest = []
            while not (again.at_epoch_end and again.epoch == 2):
                _, y = again.next_batch()
                rest += sorted({int(v) for v in y.flatten().tolist() if v >= 0})
            assert sorted(rest) == list(range(23))  # the second epoch after a resume: all, once
    assert sorted(seen) == list(range(23))
    assert accum  # the loop's accumulation takes micro-batches one by one: the loader's position is all it needs


# ---------------------------------------------------------------- end to end


TINY = {
    "model.preset": "tiny", "model.block_size": "16", "model.n_embd": "32", "optim.warmup_steps": "1",
    "train.batch_size": "3", "train.grad_accum": "2", "train.epochs": "2", "train.max_steps": "null",
    "train.eval_every": "0", "train.eval_batches": "2", "train.ckpt_every": "0", "train.log_every": "1",
    "train.precision": "fp32", "train.report_to": "", "train.seed": "5",
}


import gpt2kit.train  # noqa: E402  (the originals, before any test wraps them)

_ORIGINAL_BATCH, _ORIGINAL_LR = PackedLoader._batch, gpt2kit.train.get_lr


def _run(small_data, out, monkeypatch, stop_at: int | None = None, resume: str | None = None,
         signum: int = signal.SIGTERM):
    """One train() call; the blocks it reads (train split, by block id) per call, in order; `signum` sent to
    ourselves during step `stop_at` (the run saves at that step's end and stops, as under a real signal)."""
    import gpt2kit.train as train_mod
    from gpt2kit.train import train

    read: list[int] = []
    original_batch, original_lr = _ORIGINAL_BATCH, _ORIGINAL_LR

    def record(self, block_ids):
        if self.split == "train":
            read.extend(int(i) for i in block_ids)
        return original_batch(self, block_ids)

    def lr(step, optim, max_steps):
        if step == stop_at:
            os.kill(os.getpid(), signum)
        return original_lr(step, optim, max_steps)

    monkeypatch.setattr(PackedLoader, "_batch", record)
    monkeypatch.setattr(train_mod, "get_lr", lr)
    result = train(build_config(None, {**TINY, "data.sources": str(small_data)}), out, resume=resume, quiet=True)
    return read, result


def _losses(run) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


_UNINTERRUPTED: dict = {}


@pytest.mark.parametrize("where, signum", [("boundary", signal.SIGTERM), ("mid-epoch", signal.SIGINT)])
def test_train_two_epochs_stopped_and_resumed_reads_the_same_blocks(small_data, tmp_path_factory, tmp_path,
                                                                    monkeypatch, where, signum):
    if "whole" not in _UNINTERRUPTED:  # one uninterrupted run serves both cases
        _UNINTERRUPTED["dir"] = tmp_path_factory.mktemp("whole") / "run"
        _UNINTERRUPTED["whole"] = _run(small_data, _UNINTERRUPTED["dir"], monkeypatch)[0]
    whole = _UNINTERRUPTED["whole"]
    n = PackedLoader(small_data, "train", 16, 3).num_blocks
    assert len(whole) == 2 * n  # two epochs, every block exactly twice
    assert sorted(whole[:n]) == sorted(whole[n:]) == list(range(n))

    per_step = 3 * 2
    steps_per_epoch = -(-n // per_step)
    stop = steps_per_epoch if where == "boundary" else steps_per_epoch // 2 + 1
    run = tmp_path / "run"
    head, first = _run(small_data, run, monkeypatch, stop_at=stop, signum=signum)
    assert first.exit_code == 128 + signum  # 143 for SIGTERM, 130 for SIGINT
    saved = json.loads((run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
                        / "state.json").read_text())
    assert saved["step"] == stop and saved["reason"] == "signal"
    if where == "boundary":
        assert saved["loader"]["position"] == n and len(head) == n
    tail, _ = _run(small_data, run, monkeypatch, resume="auto")
    assert head + tail == whole  # same order; no block twice, none skipped
    assert _losses(run) == _losses(_UNINTERRUPTED["dir"])
