"""A golden file of per-step losses for a debug run: silent numeric changes show up here.

The corpus is generated (no dependence on the Python version's stdlib), the tokenizer is trained on
it, and the run is tiny and fp32. After an intended numeric change, regenerate with
`GPT2KIT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py` and say why in the commit.
"""

import json
import os
import random
from pathlib import Path

import pytest

from gpt2kit.config import build_config
from gpt2kit.prepare import prepare
from gpt2kit.tokenizer import train_tokenizer
from gpt2kit.train import train

GOLDEN = Path(__file__).parent / "golden" / "debug_losses.json"
WORDS = ["def", "return", "self", "if", "else", "for", "in", "range", "(", ")", ":", "=", "+", "x", "y",
         "value", "items", "None", "True", "print", "len", "\n", "    ", "import", "class", "1", "0"]


def synthetic_corpus(directory: Path) -> None:
    rng = random.Random(1234)
    for i in range(12):
        words = [WORDS[int(rng.random() * len(WORDS))] for _ in range(3000)]
        (directory / f"doc{i:02d}.py").write_text(" ".join(words))


@pytest.mark.parametrize("chunked", ["off", "on"])
def test_debug_run_matches_golden_losses(tmp_path, chunked):
    """The default path (chunked_loss auto = off on a CPU) and the chunked loss both give the golden losses."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    synthetic_corpus(corpus)
    tok = train_tokenizer([str(corpus)], vocab_size=300)
    prepare([str(corpus)], tok, tmp_path / "data", val_fraction=0.2, progress=False)
    cfg = build_config(None, {
        "data.sources": str(tmp_path / "data"), "model.preset": "tiny", "model.block_size": "32",
        "model.n_embd": "32", "model.dropout": "0.1", "optim.lr": "1e-2", "optim.warmup_steps": "3",
        "train.batch_size": "4", "train.grad_accum": "2", "train.max_steps": "12", "train.eval_every": "6",
        "train.eval_batches": "2", "train.ckpt_every": "0", "train.log_every": "1", "train.precision": "fp32",
        "train.seed": "7", "train.chunked_loss": chunked})
    train(cfg, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    got = {"loss": [r["loss"] for r in rows if "loss" in r], "val_loss": [r["val_loss"] for r in rows if "val_loss" in r]}
    if os.environ.get("GPT2KIT_UPDATE_GOLDEN") and chunked == "off":
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert len(got["loss"]) == 12 and len(got["val_loss"]) == 2
    # rtol 1e-4: far above float noise across CPUs, far below any change to the math
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-4)
