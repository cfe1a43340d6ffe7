"""Perplexity / bits per byte against hand-computed references; the sliding window scores each token once."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from gpt2kit.cli import main
from gpt2kit.evaluate import evaluate_texts, evaluate_token_documents, sliding_windows
from gpt2kit.model import GPT, GPTConfig

V = 61


def build(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=V)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 40, 101])
@pytest.mark.parametrize("context,stride", [(16, 16), (16, 8), (16, 1), (16, 15), (7, 3)])
def test_sliding_windows_predict_each_token_once_with_enough_context(n, context, stride):
    predicted = []
    for start, end, first in sliding_windows(n, context, stride):
        assert end - start <= context  # the model never reads more than its context
        assert start < first <= end  # something is scored, with at least one token of context
        for pos in range(first, end + 1):
            predicted.append(pos)
            assert pos - start >= min(pos, context - stride + 1)  # context before each scored token
    assert predicted == list(range(1, n))  # positions 1..n-1, once each, in order


def reference_nll(model: GPT, ids: list[int], context: int) -> list[float]:
    """By hand: position t predicted from exactly the `context` tokens before it (stride 1)."""
    out = []
    with torch.no_grad():
        for t in range(1, len(ids)):
            ctx = torch.tensor([ids[max(0, t - context) : t]])
            out.append(-F.log_softmax(model(ctx)[0, -1], -1)[ids[t]].item())
    return out


def test_stride_one_equals_a_token_by_token_reference():
    model = build()
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, V, (n,), generator=g).tolist() for n in (40, 9, 23)]
    ref = [x for d in docs for x in reference_nll(model, d, 16)]
    res = evaluate_token_documents(model, [(d, 10) for d in docs], stride=1, batch_size=5)
    assert res.tokens == len(ref) == 39 + 8 + 22
    assert res.loss == pytest.approx(sum(ref) / len(ref), rel=1e-5)
    assert res.perplexity == pytest.approx(math.exp(sum(ref) / len(ref)), rel=1e-5)
    assert res.bits_per_byte == pytest.approx(sum(ref) / math.log(2) / 30, rel=1e-5)


def test_short_documents_give_the_full_forward_loss_whatever_the_stride():
    model = build()
    ids = torch.randint(0, V, (1, 16))
    with torch.no_grad():
        full = F.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:]).item()
    for stride in (1, 5, 16):
        res = evaluate_token_documents(model, [(ids[0].tolist(), 1)], stride=stride)
        assert res.tokens == 15 and res.loss == pytest.approx(full, rel=1e-5)


@pytest.fixture(scope="module")
def tok():
    from gpt2kit.tokenizer import load_tokenizer

    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def uniform_model(tok):
    """All weights zero: every next-token distribution is uniform, so loss = ln V exactly."""
    model = build(vocab_size=tok.vocab_size, block_size=32)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


TEXTS = ["def f(x):\n    return x + 1\n", "héllo wörld " * 20, "a"]


def test_uniform_model_perplexity_is_the_vocabulary_size(tok, uniform_model):
    res = evaluate_texts(uniform_model, tok, TEXTS, context=32, stride=7)
    n_tokens = sum(len(tok.encode(t)) for t in TEXTS)  # every token, the first one of each document too
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    assert res.tokens == n_tokens and res.bytes == n_bytes and res.documents == 3
    assert res.loss == pytest.approx(math.log(tok.vocab_size), rel=1e-6)
    assert res.perplexity == pytest.approx(tok.vocab_size, rel=1e-5)
    assert res.bits_per_byte == pytest.approx(n_tokens * math.log2(tok.vocab_size) / n_bytes, rel=1e-6)


def test_cli_eval_on_a_text_file(tok, uniform_model, tmp_path, capsys):
    from gpt2kit.hf import export

    model_dir = export(uniform_model, tmp_path / "hf", tokenizer=tok)
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    rc = main(["eval", "--model", str(model_dir), "--data", str(data), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["perplexity"] == pytest.approx(tok.vocab_size, rel=1e-4)
    assert out["documents"] == 3

    rc = main(["eval", "--model", str(model_dir), "--data", str(data), "--stride", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_cli_eval_needs_data_or_humaneval(capsys):
    rc = main(["eval", "--model", "whatever"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "--data" in err


def test_prepared_directory_scores_like_the_texts(tok, tmp_path):
    from gpt2kit.evaluate import evaluate_prepared
    from gpt2kit.prepare import prepare

    texts = [f"document {i}: " + "word " * (i % 7 + 1) + "é" * (i % 3) for i in range(40)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    meta = prepare([str(tmp_path / "docs.jsonl")], tok, tmp_path / "prep", val_fraction=0.3, workers=1,
                   progress=False)
    assert not meta["splits"]["val"].get("from_train_tail")
    model = build(vocab_size=tok.vocab_size, block_size=32)
    parts = [evaluate_prepared(model, str(tmp_path / "prep"), s, context=32, stride=8) for s in ("train", "val")]
    whole = evaluate_texts(model, tok, texts, context=32, stride=8)
    # every document's own tokens are scored; its trailing EOS is the next one's separator
    assert [p.tokens for p in parts] == [meta["splits"][s]["tokens"] - meta["splits"][s]["documents"]
                                         for s in ("train", "val")]
    assert sum(p.tokens for p in parts) == whole.tokens
    assert sum(p.loss * p.tokens for p in parts) == pytest.approx(whole.loss * whole.tokens, rel=1e-5)
    assert sum(p.bytes for p in parts) == whole.bytes
    assert parts[1].bits_per_byte == pytest.approx(parts[1].loss * parts[1].tokens / math.log(2) / parts[1].bytes)


def test_bits_per_byte_is_none_when_bytes_are_unknown(tok, tmp_path, capsys):
    """Never a division by zero: a tail split has real bytes; a split without them (older prepares) gets None."""
    from gpt2kit.evaluate import evaluate_prepared
    from gpt2kit.prepare import prepare

    model = build(vocab_size=tok.vocab_size, block_size=32)
    assert evaluate_token_documents(model, [([1, 2, 3, 4], 0)]).bits_per_byte is None
    (tmp_path / "one.txt").write_text("a single document, " * 30)
    meta = prepare([str(tmp_path / "one.txt")], tok, tmp_path / "prep", min_val_tokens=20, progress=False)
    assert meta["splits"]["val"]["from_train_tail"]
    res = evaluate_prepared(model, str(tmp_path / "prep"), "val", context=32)
    assert res.bytes == meta["splits"]["val"]["bytes"] > 0
    assert res.bits_per_byte == pytest.approx(res.loss * res.tokens / math.log(2) / res.bytes)
    meta["splits"]["val"]["bytes"] = 0  # what tail splits recorded before they counted bytes
    (tmp_path / "prep" / "meta.json").write_text(json.dumps(meta))
    res = evaluate_prepared(model, str(tmp_path / "prep"), "val", context=32)
    assert res.bits_per_byte is None and res.bytes == 0 and res.loss > 0

    from gpt2kit.hf import export

    model_dir = export(model, tmp_path / "hf", tokenizer=tok)
    assert main(["eval", "--model", str(model_dir), "--data", str(tmp_path / "prep")]) == 0
    assert "n/a (bytes unknown)" in capsys.readouterr().out
    assert main(["eval", "--model", str(model_dir), "--data", str(tmp_path / "prep"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_byte"] is None


def test_cli_eval_sample_by_line(tok, uniform_model, tmp_path, capsys):
    from gpt2kit.hf import export

    model_dir = export(uniform_model, tmp_path / "hf", tokenizer=tok)
    (tmp_path / "jokes.txt").write_text("one joke\n\ntwo jokes\nthree jokes\n")
    assert main(["eval", "--model", str(model_dir), "--data", str(tmp_path / "jokes.txt"), "--sample-by", "line",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["documents"] == 3 and out["bytes"] == len("one joketwo jokesthree jokes")


def test_eval_of_a_prepared_split_equals_the_runs_reported_val_loss(prepared_dir, tmp_path, capsys):
    """`gpt2kit eval --data PREPARED` reads packed blocks like training: the numbers a run reports (over the
    whole split, the default) and eval's agree to float rounding."""
    import json as _json

    from gpt2kit.cli import main as cli_main
    from gpt2kit.config import build_config
    from gpt2kit.train import train

    run = tmp_path / "run"
    cfg = build_config(None, {
        "data.sources": str(prepared_dir), "model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32",
        "optim.lr": "3e-3", "train.batch_size": "32", "train.max_steps": "4", "train.eval_every": "2",
        "train.ckpt_every": "2", "train.precision": "fp32"})
    train(cfg, run, quiet=True)
    rows = [_json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    best = (run / "checkpoints" / "best").read_text().strip()
    want = next(r for r in rows if r["step"] == int(best.split("-")[1]))
    assert cli_main(["eval", "--model", str(run), "--data", str(prepared_dir), "--json", "--batch-size", "32"]) == 0
    got = _json.loads(capsys.readouterr().out)
    assert got["method"] == "blocks"
    assert got["loss"] == pytest.approx(want["val_loss"], rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(want["val_bpb"], rel=1e-5)
