"""Supervised data: loss only on the completion (EOS label kept when pad = EOS), left-padded classification."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2kit.errors import UserError
from gpt2kit.loader import IGNORE_INDEX, ExampleLoader, collate_examples
from gpt2kit.sft import (
    encode_classification,
    encode_prompt_completion,
    read_classification,
    read_prompt_completion,
    sft_examples,
)
from gpt2kit.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


def test_loss_only_on_completion_and_eos(gpt2):
    x, y = encode_prompt_completion(gpt2, "Q: 2+2?\nA:", " 4", max_length=64)
    p, c = gpt2.encode("Q: 2+2?\nA:"), gpt2.encode(" 4")
    seq = p + c + [gpt2.eos_id]
    assert x == seq[:-1]
    assert y == [IGNORE_INDEX] * (len(p) - 1) + c + [gpt2.eos_id]
    # pad = EOS (GPT-2 has no pad): the EOS label survives collation, padding does not get labels
    X, Y = collate_examples(gpt2.eos_id, [(x, y), ([1, 2], [IGNORE_INDEX, 3])])
    assert Y[0, len(y) - 1].item() == gpt2.eos_id and X.shape == Y.shape == (2, len(x))
    assert (Y[1, 2:] == IGNORE_INDEX).all() and (X[1, 2:] == gpt2.eos_id).all()


def test_truncation_keeps_prompt_end_and_completion(gpt2):
    x, y = encode_prompt_completion(gpt2, "word " * 100 + "END", " answer here", max_length=16)
    assert len(x) == len(y) == 16
    assert y[-1] == gpt2.eos_id and gpt2.decode(x).endswith("END answer here")


def test_classification_left_padding(gpt2):
    ids, mask, labels = encode_classification(gpt2, ["short", "a somewhat longer text here"], [1, 0], max_length=32)
    assert ids.shape == mask.shape and labels.tolist() == [1, 0]
    assert (ids[:, -1] == gpt2.eos_id).all()  # every row ends with its own last token
    n0 = len(gpt2.encode("short")) + 1
    assert mask[0].tolist() == [0] * (ids.shape[1] - n0) + [1] * n0
    assert ids[0, -n0:].tolist() == gpt2.encode("short") + [gpt2.eos_id]
    ids, mask, _ = encode_classification(gpt2, ["x " * 100], [0], max_length=8)
    assert ids.shape == (1, 8) and mask.all()


def test_readers_and_unknown_columns(tmp_path, gpt2):
    rows = [{"prompt": f"q{i}", "completion": f" a{i}", "label": "pos" if i % 2 else "neg"} for i in range(10)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pairs = read_prompt_completion(str(tmp_path / "d.jsonl"))
    assert pairs[3] == ("q3", " a3")
    data = read_classification(str(tmp_path / "d.jsonl"), text_column="prompt")
    assert data.label_names == ["neg", "pos"] and data.labels[:2] == [0, 1]
    with pytest.raises(UserError, match="no column 'answer'.*prompt, completion, label"):
        read_prompt_completion(str(tmp_path / "d.jsonl"), completion_column="answer")


def test_supervised_loader_resume_and_epoch(tmp_path, gpt2):
    rows = [{"prompt": f"question {i}", "completion": f" answer {i}"} for i in range(11)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ex = sft_examples(str(tmp_path / "d.jsonl"), gpt2, 32)
    a = ExampleLoader(ex, 3, pad_id=gpt2.eos_id, seed=2)
    first = [a.next_batch() for _ in range(8)]
    b = ExampleLoader(ex, 3, pad_id=gpt2.eos_id, seed=2)
    [b.next_batch() for _ in range(5)]
    c = ExampleLoader(ex, 3, pad_id=gpt2.eos_id, seed=2)
    c.load_state_dict(b.state_dict())
    for want in first[5:]:
        got = c.next_batch()
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    seen = [tuple(x[x != gpt2.eos_id].tolist()) for x, _ in ExampleLoader(ex, 4, pad_id=gpt2.eos_id).iter_epoch()
            for x in x]
    assert len(seen) == 11 and len(set(seen)) == 11
