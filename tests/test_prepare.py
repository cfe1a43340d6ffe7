"""prepare: shards decode to the documents + EOS, stable disjoint splits, reuse, atomicity, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2kit.cli import main
from gpt2kit.errors import UserError
from gpt2kit.prepare import DEFAULT_SHARD_TOKENS, ensure_prepared, is_val, load_split, prepare, read_meta
from gpt2kit.sources import open_sources
from gpt2kit.tokenizer import load_tokenizer

DOCS = [
    "def f(x):\n    return x + 1\n",
    "Hello world, with <|endoftext|> inside the text.",
    "unicode: héllo wörld 你好 🤗\n\n\t  trailing   ",
    "class A:\n    pass\n" * 20,
] + [f"document number {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(60)]


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


def make_corpus(root: Path, docs=DOCS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(docs):
        (root / f"sub{i % 3}").mkdir(exist_ok=True)
        (root / f"sub{i % 3}" / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
    return root


def split_tokens(out: Path, split: str) -> np.ndarray:
    parts = load_split(out, split)
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def expected(tok, corpus, val_fraction, split):
    ids = []
    for d in open_sources([str(corpus)]):
        if is_val(d.key, val_fraction) == (split == "val"):
            ids += tok.encode(d.text) + [tok.eos_id]
    return ids


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_decode_to_documents_plus_eos(tmp_path, gpt2, workers):
    corpus = make_corpus(tmp_path / "corpus")
    meta = prepare([str(corpus)], gpt2, tmp_path / "out", val_fraction=0.2, workers=workers, shard_tokens=50,
                   progress=False)
    assert meta["format"] == "gpt2kit-tokens" and meta["version"] == 1 and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == 50257 and meta["eos_id"] == 50256 and meta["tokenizer_sha256"] == gpt2.sha256
    assert len(meta["splits"]["train"]["files"]) > 1  # small shards: documents cross shard boundaries
    for split in ("train", "val"):
        got = split_tokens(tmp_path / "out", split).tolist()
        assert got == expected(gpt2, corpus, 0.2, split)
        assert meta["splits"][split]["tokens"] == len(got)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == len(DOCS)
    assert 0 < meta["splits"]["val"]["documents"] < len(DOCS)
    # raw little-endian files, readable without us
    raw = np.fromfile(tmp_path / "out" / "train-00000.bin", dtype="<u2")
    assert raw.tolist() == split_tokens(tmp_path / "out", "train")[: len(raw)].tolist()
    # the literal special-token text is plain text, never the EOS id
    assert (split_tokens(tmp_path / "out", "train") == 50256).sum() + (
        split_tokens(tmp_path / "out", "val") == 50256).sum() == len(DOCS)
    assert load_tokenizer(tmp_path / "out").sha256 == gpt2.sha256


def test_split_is_disjoint_and_stable(tmp_path, gpt2):
    corpus = make_corpus(tmp_path / "corpus")
    prepare([str(corpus)], gpt2, tmp_path / "a", val_fraction=0.3, progress=False)
    # same corpus elsewhere, plus one new document: earlier documents keep their side
    corpus2 = make_corpus(tmp_path / "corpus2", DOCS + ["a brand new document"])
    prepare([str(corpus2)], gpt2, tmp_path / "b", val_fraction=0.3, progress=False)
    keys = [d.key for d in open_sources([str(corpus)])]
    val = {k for k in keys if is_val(k, 0.3)}
    assert val and val != set(keys)
    assert split_tokens(tmp_path / "a", "val").tolist() == expected(gpt2, corpus, 0.3, "val")
    val2 = {d.key for d in open_sources([str(corpus2)]) if is_val(d.key, 0.3)}
    assert val2 - {"sub1/doc064.txt"} == val  # keys are relative paths: moving and growing keep the split
    assert split_tokens(tmp_path / "b", "val").tolist() == expected(gpt2, corpus2, 0.3, "val")
    train_keys = {d.key for d in open_sources([str(corpus)])} - val
    assert not train_keys & val


def test_rerun_reuses_and_change_redoes(tmp_path, gpt2, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    prepare([str(corpus)], gpt2, tmp_path / "out", progress=False)
    mtime = (tmp_path / "out" / "meta.json").stat().st_mtime_ns
    prepare([str(corpus)], gpt2, tmp_path / "out", progress=True)
    assert "up to date" in capsys.readouterr().err
    assert (tmp_path / "out" / "meta.json").stat().st_mtime_ns == mtime
    (corpus / "sub0" / "new.txt").write_text("more text here")
    meta = prepare([str(corpus)], gpt2, tmp_path / "out", progress=False)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == len(DOCS) + 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dirs left


def test_single_document_gets_val_from_tail(tmp_path, gpt2):
    (tmp_path / "one.txt").write_text("one long document " * 200)
    meta = prepare([str(tmp_path / "one.txt")], gpt2, tmp_path / "out", val_fraction=0.1, progress=False)
    val, train = meta["splits"]["val"], meta["splits"]["train"]
    assert val["from_train_tail"] and val["tokens"] > 0
    whole = gpt2.encode("one long document " * 200) + [gpt2.eos_id]
    assert split_tokens(tmp_path / "out", "train").tolist() + split_tokens(tmp_path / "out", "val").tolist() == whole
    assert train["tokens"] + val["tokens"] == len(whole)


def test_trained_tokenizer_uint16_and_jsonl(tmp_path):
    from gpt2kit.tokenizer import train_tokenizer

    rows = [{"text": t, "id": i} for i, t in enumerate(DOCS)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tok = train_tokenizer([str(tmp_path / "d.jsonl")], 300)
    meta = prepare([str(tmp_path / "d.jsonl")], tok, tmp_path / "out", val_fraction=0.0, progress=False)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 300
    want = [i for t in DOCS for i in tok.encode(t) + [tok.eos_id]]
    assert split_tokens(tmp_path / "out", "train").tolist() == want


def test_ensure_prepared_caches_and_checks_tokenizer(tmp_path, gpt2, monkeypatch):
    from gpt2kit.tokenizer import train_tokenizer

    corpus = make_corpus(tmp_path / "corpus")
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))
    d1 = ensure_prepared([str(corpus)], gpt2, progress=False)
    d2 = ensure_prepared([str(corpus)], gpt2, progress=False)
    assert d1 == d2 and d1.parent == tmp_path / "cache" and read_meta(d1)["tokenizer_sha256"] == gpt2.sha256
    assert ensure_prepared([str(d1)], gpt2) == d1
    other = train_tokenizer([str(corpus)], 300)
    with pytest.raises(UserError, match="different tokenizer"):
        ensure_prepared([str(d1)], other)


def test_engine_disagreement_falls_back(tmp_path, gpt2, monkeypatch, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    tok = load_tokenizer("gpt2")
    monkeypatch.setattr(tok, "reference_encode", lambda text: [0])  # pretend the engines disagree
    meta = prepare([str(corpus)], tok, tmp_path / "out", progress=False)
    assert meta["engine"] == "tokenizers" and "disagree" in capsys.readouterr().err


# -- bad input ----------------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def assert_one_error(rc, err, *needles):
    lines = [line for line in err.strip().splitlines() if line]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_missing_path(tmp_path, capsys):
    rc, err = run_cli(capsys, "prepare", "--data", str(tmp_path / "nope.txt"), "--tokenizer", "gpt2", "--out",
                      str(tmp_path / "out"))
    assert_one_error(rc, err, "not found", "nope.txt")
    assert not (tmp_path / "out").exists()


def test_cli_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    rc, err = run_cli(capsys, "prepare", "--data", str(tmp_path / "empty"), "--tokenizer", "gpt2", "--out",
                      str(tmp_path / "out"), "--quiet")
    assert_one_error(rc, err, "no documents", "1 binary")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_cli_too_small_for_block(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("just a few tokens")
    rc, err = run_cli(capsys, "prepare", "--data", str(tmp_path / "a.txt"), "--tokenizer", "gpt2", "--out",
                      str(tmp_path / "out"), "--block-size", "64", "--val-fraction", "0", "--quiet")
    assert_one_error(rc, err, "has 5 tokens", "needs 65")
    assert not (tmp_path / "out").exists()


def test_cli_unknown_text_column(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text('{"content": "x", "meta": 1}\n')
    rc, err = run_cli(capsys, "prepare", "--data", str(tmp_path / "d.jsonl"), "--tokenizer", "gpt2", "--out",
                      str(tmp_path / "out"))
    assert_one_error(rc, err, "'text'", "content, meta", "--text-column")


def test_cli_refuses_foreign_out_dir(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("some text " * 10)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    rc, err = run_cli(capsys, "prepare", "--data", str(tmp_path / "a.txt"), "--tokenizer", "gpt2", "--out",
                      str(tmp_path / "out"))
    assert_one_error(rc, err, "not a prepared data directory")
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_old_format_and_damaged_meta(tmp_path, gpt2, capsys):
    (tmp_path / "a.txt").write_text("some text " * 10)
    prepare([str(tmp_path / "a.txt")], gpt2, tmp_path / "out", progress=False)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    meta["version"] = 0
    (tmp_path / "out" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="older gpt2kit"):
        read_meta(tmp_path / "out")
    meta["version"] = 1
    meta["splits"]["train"]["tokens"] += 1
    (tmp_path / "out" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="damaged"):
        read_meta(tmp_path / "out")
    with pytest.raises(UserError, match="not a prepared data directory"):
        read_meta(tmp_path)


def test_cli_json_output(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus", DOCS[:10])
    rc = main(["prepare", "--data", str(corpus), "--tokenizer", "gpt2", "--out", str(tmp_path / "out"), "--json",
               "--workers", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    meta = json.loads(captured.out)
    assert meta == read_meta(tmp_path / "out")
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 10


def test_console_script_error(tmp_path):
    script = Path(sys.executable).with_name("gpt2kit")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "gpt2kit"]
    bad = subprocess.run(
        cmd + ["prepare", "--data", str(tmp_path / "missing"), "--tokenizer", "gpt2", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: data not found") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_model_vocab_mismatch_is_a_user_error():
    from gpt2kit.prepare import check_vocab

    check_vocab(50257, 50304)
    with pytest.raises(UserError, match="50257 ids but the model has model.vocab_size 1000"):
        check_vocab(50257, 1000)


def test_stdlib_subset_and_streaming_dataset(tmp_path, gpt2):
    import datasets

    meta = prepare(["stdlib"], gpt2, tmp_path / "std", include=["json/*.py"], val_fraction=0.0, progress=False)
    docs = list(open_sources(["stdlib"], include=["json/*.py"]))
    assert meta["splits"]["train"]["documents"] == len(docs) >= 4
    assert split_tokens(tmp_path / "std", "train").tolist() == [i for d in docs for i in gpt2.encode(d.text) + [50256]]
    datasets.Dataset.from_dict({"text": DOCS[:8]}).save_to_disk(str(tmp_path / "ds"))
    meta = prepare([str(tmp_path / "ds")], gpt2, tmp_path / "out", streaming=True, val_fraction=0.0, progress=False)
    assert split_tokens(tmp_path / "out", "train").tolist() == [i for t in DOCS[:8] for i in gpt2.encode(t) + [50256]]


def test_a_corpus_that_hashes_entirely_into_validation_still_trains(tmp_path):
    """One small file whose key lands in validation: it becomes the training split, validation its tail."""
    from gpt2kit.prepare import is_val, prepare
    from gpt2kit.tokenizer import load_tokenizer, train_tokenizer

    name = next(f"notes{i}.txt" for i in range(10_000) if is_val(f"notes{i}.txt", 0.05))  # a key that lands in val
    f = tmp_path / name
    f.write_text("def f(x):\n    return x + 1\n" * 200)
    meta = prepare([str(f)], load_tokenizer("gpt2"), tmp_path / "out", val_fraction=0.05, progress=False)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["documents"] == 1 and val["from_train_tail"] and val["tokens"] > 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.bin")) == ["train-00000.bin", "val-00000.bin"]
    tok = train_tokenizer([str(f)], vocab_size=300, heldout_fraction=0.999999)  # the one document is held out
    assert tok.vocab_size > 258 and tok.decode(tok.encode(f.read_text())) == f.read_text()  # learned merges


# -- small data: documents per line, a validation floor, real bytes ------------------------------------
def split_docs(tok, out: Path, split: str) -> list[list[int]]:
    """A split's token stream cut at EOS: the ids of each document (the last piece may lack its EOS)."""
    ids = split_tokens(out, split).tolist()
    docs, cur = [], []
    for i in ids:
        if i == tok.eos_id:
            docs.append(cur)
            cur = []
        else:
            cur.append(i)
    return docs + ([cur] if cur else [])


def check_floor(tok, out: Path, meta: dict, docs: list, floor: int) -> None:
    """Validation = the hashed documents + the fewest whole documents from the end of training that reach
    `floor` tokens; both streams are exactly encode(doc) + EOS per document; bytes are the documents' bytes."""
    hashed = [d for d in docs if is_val(d.key, 0.01)]
    rest = [d for d in docs if not is_val(d.key, 0.01)]
    enc = {d.key: tok.encode(d.text) + [tok.eos_id] for d in docs}
    k = len(rest)
    while sum(len(enc[d.key]) for d in hashed + rest[k:]) < floor:
        k -= 1
    assert 0 < k < len(rest)  # whole documents moved, training keeps some
    train, val = rest[:k], hashed + rest[k:]
    for split, part in (("train", train), ("val", val)):
        info = meta["splits"][split]
        assert split_tokens(out, split).tolist() == [i for d in part for i in enc[d.key]]
        assert info["documents"] == len(part) and info["tokens"] == sum(len(enc[d.key]) for d in part)
        assert info["bytes"] == sum(len(d.text.encode()) for d in part) > 0
    assert meta["splits"]["val"]["tokens"] >= floor and meta["splits"]["val"]["val_floor"]
    assert not {d.key for d in train} & {d.key for d in val}
    assert "from_train_tail" not in meta["splits"]["val"]


def test_jokes_file_one_per_line_gets_a_validation_floor_of_whole_documents(tmp_path, gpt2):
    jokes = "".join(f"Joke {i}: ha{'!' * (i % 4)}\n" + ("\n" if i % 50 == 0 else "") for i in range(300))
    (tmp_path / "jokes.txt").write_text(jokes)
    meta = prepare([str(tmp_path / "jokes.txt")], gpt2, tmp_path / "out", sample_by="line", min_val_tokens=33,
                   progress=False)
    docs = list(open_sources([str(tmp_path / "jokes.txt")], sample_by="line"))
    assert len(docs) == 300 and docs[7].key == "jokes.txt:7" and docs[7].text == "Joke 7: ha!!!"
    assert sum(len(gpt2.encode(d.text)) + 1 for d in docs if is_val(d.key, 0.01)) < 33  # the hash alone falls short
    check_floor(gpt2, tmp_path / "out", meta, docs, 33)
    assert meta["options"]["min_val_tokens"] == 33 and meta["options"]["sample_by"] == "line"
    # tiny shards: documents move across shard boundaries, validation's shards stay within shard_tokens
    small = prepare([str(tmp_path / "jokes.txt")], gpt2, tmp_path / "small", sample_by="line", min_val_tokens=33,
                    shard_tokens=7, progress=False)
    check_floor(gpt2, tmp_path / "small", small, docs, 33)
    assert len(small["splits"]["val"]["files"]) > 1 and read_meta(tmp_path / "small") == small
    assert max(p.stat().st_size for p in (tmp_path / "small").glob("*.bin")) == 7 * 2


def test_csv_of_examples_gets_a_validation_floor(tmp_path, gpt2):
    import csv

    with open(tmp_path / "recipes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["title", "body"])
        w.writerows([f"dish {i}", f"mix {i} eggs, bake"] for i in range(300))
    meta = prepare([str(tmp_path / "recipes.csv")], gpt2, tmp_path / "out", text_column="body",
                   min_val_tokens=33, progress=False)
    docs = list(open_sources([str(tmp_path / "recipes.csv")], text_column="body"))
    check_floor(gpt2, tmp_path / "out", meta, docs, 33)


def test_single_file_tail_split_records_real_bytes(tmp_path, gpt2):
    text = "naïve café 😀 日本語 " * 40 + "end"  # multi-byte characters: the cut may fall inside one
    (tmp_path / "one.txt").write_text(text)
    for floor in (None, 33, 100):
        out = tmp_path / f"out{floor}"
        meta = prepare([str(tmp_path / "one.txt")], gpt2, out, min_val_tokens=floor, progress=False,
                       shard_tokens=5 if floor == 100 else DEFAULT_SHARD_TOKENS)  # tiny shards: a cut across them
        assert read_meta(out) == meta
        train, val = meta["splits"]["train"], meta["splits"]["val"]
        assert val["from_train_tail"] and val["tokens"] >= (floor or 1) and train["tokens"] >= (floor or 1)
        assert train["bytes"] > 0 and val["bytes"] > 0
        assert train["bytes"] + val["bytes"] == len(text.encode())
        assert train["documents"] == val["documents"] == 1  # the one document, cut in two
        assert split_tokens(out, "train").tolist() + split_tokens(out, "val").tolist() == gpt2.encode(text) + [
            gpt2.eos_id]


def test_floor_never_starves_training(tmp_path, gpt2):
    """Two documents, the last one most of the corpus: moving it would leave training too little, so the
    tail split is used; training keeps min_val_tokens tokens."""
    (tmp_path / "c").mkdir()
    a, b = "short one", "a much longer document " * 30
    name_a, name_b = "a.txt", "b.txt"
    assert not is_val(name_a, 0.01) and not is_val(name_b, 0.01)
    (tmp_path / "c" / name_a).write_text(a)
    (tmp_path / "c" / name_b).write_text(b)
    meta = prepare([str(tmp_path / "c")], gpt2, tmp_path / "out", min_val_tokens=20, progress=False)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert val["from_train_tail"] and "val_floor" not in val and val["tokens"] >= 20 and train["tokens"] >= 20
    assert train["documents"] == 2 and val["documents"] == 1
    assert train["bytes"] + val["bytes"] == len(a) + len(b) and val["bytes"] > 0
    # the other way round, the last document is small enough to move whole (also without a floor)
    (tmp_path / "c" / name_a).write_text(b)
    (tmp_path / "c" / name_b).write_text(a)
    for floor in (None, 3):
        meta = prepare([str(tmp_path / "c")], gpt2, tmp_path / f"out{floor}", min_val_tokens=floor, progress=False)
        train, val = meta["splits"]["train"], meta["splits"]["val"]
        assert val["val_floor"] and (val["documents"], val["bytes"]) == (1, len(a)) and train["bytes"] == len(b)
        assert split_tokens(tmp_path / f"out{floor}", "val").tolist() == gpt2.encode(a) + [gpt2.eos_id]


def test_floor_is_in_the_cache_key_and_cli_sample_by(tmp_path, gpt2, monkeypatch, capsys):
    (tmp_path / "jokes.txt").write_text("".join(f"joke {i}\n" for i in range(300)))
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))
    src = [str(tmp_path / "jokes.txt")]
    d1 = ensure_prepared(src, gpt2, sample_by="line", min_val_tokens=33, progress=False)
    d2 = ensure_prepared(src, gpt2, sample_by="line", min_val_tokens=65, progress=False)
    assert d1 != d2 and read_meta(d2)["splits"]["val"]["tokens"] >= 65
    assert ensure_prepared(src, gpt2, sample_by="line", min_val_tokens=33, progress=False) == d1
    assert ensure_prepared(src, gpt2, sample_by="file", progress=False) == ensure_prepared(src, gpt2, progress=False)
    rc = main(["prepare", "--data", src[0], "--sample-by", "line", "--block-size", "32", "--out",
               str(tmp_path / "out"), "--json", "--quiet"])
    meta = json.loads(capsys.readouterr().out)
    assert rc == 0 and meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 300
    assert meta["splits"]["val"]["tokens"] >= 33 and meta["options"]["min_val_tokens"] == 33


def test_split_bytes_per_token():
    from gpt2kit.prepare import split_bytes_per_token

    assert split_bytes_per_token({"tokens": 10, "bytes": 25}) == 2.5
    assert split_bytes_per_token({"tokens": 10, "bytes": 0}) is None  # older tail splits recorded no bytes
    assert split_bytes_per_token({"tokens": 0, "bytes": 0}) is None
    assert split_bytes_per_token({"tokens": 3}) is None


def test_prepare_errors_name_the_flag_of_the_running_command(tmp_path, gpt2):
    from gpt2kit.errors import set_flag_style
    from gpt2kit.loader import PackedLoader

    (tmp_path / "a.txt").write_text("just a few tokens, " * 5)
    with pytest.raises(UserError, match="--val-fraction must be in"):
        prepare([str(tmp_path / "a.txt")], gpt2, tmp_path / "out", val_fraction=1.5, progress=False)
    prepare([str(tmp_path / "a.txt")], gpt2, tmp_path / "out", val_fraction=0.1, progress=False)
    try:
        set_flag_style("config")
        with pytest.raises(UserError, match=r"--data\.val_fraction must be in"):
            prepare([str(tmp_path / "a.txt")], gpt2, tmp_path / "out", val_fraction=1.5, progress=False)
        with pytest.raises(UserError, match=r"lower --model\.block_size.*raise --data\.val_fraction"):
            PackedLoader(tmp_path / "out", "val", 16, 1)
        with pytest.raises(UserError, match=r"lower --model\.block_size"):
            prepare([str(tmp_path / "a.txt")], gpt2, tmp_path / "out2", block_size=64, progress=False)
    finally:
        set_flag_style("cli")
    with pytest.raises(UserError, match="lower --block-size.*raise --val-fraction"):
        PackedLoader(tmp_path / "out", "val", 16, 1)
