"""`prepare` under faults and load (issue 11): a prepare killed with -9 leaves nothing behind for good, and one
huge single-line document is encoded in bounded memory with exactly the ids of encoding it whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2kit.prepare import cut_text, prepare
from gpt2kit.tokenizer import load_tokenizer

TRICKY = [
    "def f(x):\n    return x  # comment\n\n\n\tTabs\tand  two  spaces   three\r\nCRLF",
    "it's don't we'll they're I'm you've he'd 'quoted' isn't",
    "numbers 123 4567 3.14 -2e10 and unicode caf\u00e9 na\u00efve \u4e2d\u6587 \U0001f600 \u00a0nbsp\u2003em",
    "trailing spaces   \n   leading\n\n\n\n    indented\v\f form feed \x1c sep \x85 nel",
    "punct!!! ?? ... --- ((( ))) [[x]] {y} <|endoftext|> <|pad|> a,b;c:d",
    "x" * 50 + " " + "y" * 3 + "  " + "z",
]


def test_cut_pieces_encode_to_the_ids_of_the_whole(small_tokenizer):
    ref = load_tokenizer("gpt2")
    ref.use_reference_engine()
    for name, tok in {"gpt2 tiktoken": load_tokenizer("gpt2"), "gpt2 tokenizers": ref,
                      "trained": small_tokenizer}.items():
        assert tok.cuttable, name
        for size in (1, 3, 7, 40):
            for text in TRICKY + ["\n".join(TRICKY)]:
                pieces = list(cut_text(text, size))
                assert "".join(pieces) == text
                assert len(pieces) > 1 or len(text) <= size
                ids = [i for p in pieces for i in tok.encode(p)]
                assert ids == tok.encode(text), (name, size, pieces)


@pytest.mark.parametrize("stream", [False, True])
def test_a_huge_document_prepares_to_the_same_shards_in_pieces(small_tokenizer, tmp_path, monkeypatch, stream):
    import gpt2kit.prepare as prep
    import gpt2kit.sources as sources

    text = "\n".join(TRICKY) * 40
    # an invalid byte and multi-byte characters, which small read blocks cut in the middle
    data = text.encode() + b" bad \xff\xfe byte " + text.encode()
    (tmp_path / "one.txt").write_bytes(data)
    (tmp_path / "two.txt").write_text("a second, small document")
    sources_ = [str(tmp_path / "one.txt"), str(tmp_path / "two.txt")]
    whole = prepare(sources_, small_tokenizer, tmp_path / "whole", val_fraction=0, progress=False, workers=1)
    monkeypatch.setattr(prep, "_PIECE_CHARS", 97)  # ~100 pieces, spread over several chunks
    monkeypatch.setattr(prep, "_CHUNK_CHARS", 1000)
    if stream:  # read from disk 61 bytes at a time
        monkeypatch.setattr(sources, "_STREAM_BYTES", 1000)
        monkeypatch.setattr(sources, "_READ_BYTES", 61)
    cut = prepare(sources_, small_tokenizer, tmp_path / "cut", val_fraction=0, progress=False, workers=2,
                  force=True)
    assert (tmp_path / "cut" / "train-00000.bin").read_bytes() == (tmp_path / "whole" / "train-00000.bin").read_bytes()
    assert cut["splits"]["train"]["documents"] == whole["splits"]["train"]["documents"] == 2
    assert cut["splits"]["train"]["bytes"] == whole["splits"]["train"]["bytes"]
    assert cut["skipped"] == whole["skipped"]


def test_a_huge_file_streams_the_text_it_would_read_whole(tmp_path, monkeypatch):
    import gpt2kit.sources as sources

    monkeypatch.setattr(sources, "_STREAM_BYTES", 100)
    monkeypatch.setattr(sources, "_READ_BYTES", 7)
    data = ("caf\u00e9 \u4e2d\u6587 \U0001f600 " * 20).encode() + b"\xff\xc3" + b" tail \xe4\xb8" + b"x" * 50
    (tmp_path / "big.txt").write_bytes(data)
    (tmp_path / "bin.txt").write_bytes(b"\x00" * 200)
    docs = list(sources.open_sources([str(tmp_path)]))
    assert len(docs) == 1 and isinstance(docs[0], sources.FileDocument)
    assert "".join(docs[0].blocks()) == docs[0].text == data.decode("utf-8", errors="replace")


def test_a_tokenizer_that_normalizes_is_not_cut(small_tokenizer):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import normalizers

    from gpt2kit.tokenizer import Tokenizer

    tk = HFTokenizer.from_str(small_tokenizer.to_json())
    tk.normalizer = normalizers.Lowercase()
    assert not Tokenizer(tk).cuttable


_RSS_CHILD = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(rc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, rc.stderr[-2000:])
"""


def _peak_mb(args: list[str]) -> float:
    """Peak RSS (MB) of the largest process of `gpt2kit ARGS` (workers included), measured by a fresh parent."""
    cmd = [sys.executable, "-c", _RSS_CHILD, sys.executable, "-m", "gpt2kit", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    rc, peak, err = out.stdout.split(" ", 2)
    assert rc == "0", err
    return float(peak)


def test_one_huge_line_prepares_in_bounded_memory(tmp_path):
    """A 20 MB single-line file: before, the peak was 502 MB against 173 MB for a tiny file (16x the file on top of
    the interpreter); now it is streamed from disk and encoded in pieces: ~15 MB over, whatever the file's size
    (200 MB: 229 MB peak, docs/BENCHMARKS.md)."""
    line = " ".join(w for w in (Path(__file__).read_text() + " ".join(TRICKY)).split() if w.isascii())
    big = tmp_path / "big.txt"
    with open(big, "w") as f:
        while f.tell() < 20_000_000:
            f.write(line + " ")
    (tmp_path / "small.txt").write_text(line)
    size_mb = big.stat().st_size / 2**20
    common = ["--tokenizer", "gpt2", "--workers", "2", "--quiet"]
    base = _peak_mb(["prepare", "--data", str(tmp_path / "small.txt"), "--out", str(tmp_path / "s"), *common])
    peak = _peak_mb(["prepare", "--data", str(big), "--out", str(tmp_path / "b"), *common])
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["splits"]["train"]["documents"] == 1 and meta["splits"]["val"]["from_train_tail"]
    assert peak - base < 2 * size_mb, (base, peak, size_mb)  # less than its bytes and its text together


# ---------------------------------------------------------------- leftovers of a killed prepare


def _start_prepare(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gpt2kit", "prepare", "--data", str(src), "--tokenizer", "gpt2",
                             "--out", str(out), "--workers", "1", "--quiet"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.DEVNULL)


def test_the_next_prepare_removes_what_a_killed_one_left(tmp_path, corpus_dir):
    src = tmp_path / "src.txt"
    text = " ".join(p.read_text() for p in sorted(corpus_dir.iterdir()))
    src.write_text(text * 40)  # ~16 MB: a few seconds of encoding to kill it in
    parent = tmp_path / "data"
    proc = _start_prepare(src, parent / "a")
    tmp = parent / f".a.tmp-{proc.pid}"
    deadline = time.time() + 60
    while not (tmp / "train-00000.bin").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp / "train-00000.bin").exists() and not (parent / "a").exists()

    # what must stay: a live prepare's directory, and a user's directory that merely looks like one
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = parent / f".b.tmp-{alive.pid}"
        live.mkdir()
        (live / "train-00000.bin").write_bytes(b"")
        users = parent / ".notes.tmp-999999999"
        users.mkdir()
        (users / "main.py").write_text("print('mine')\n")
        # a kill between replace_dir's two renames: the previous result swapped aside, nothing in its place
        prepare([str(corpus_dir)], load_tokenizer("gpt2"), parent / "c", progress=False, workers=1)
        os.replace(parent / "c", parent / ".old-c-999999998")
        assert not (parent / "c").exists()

        prepare([str(corpus_dir / "glob.py")], load_tokenizer("gpt2"), parent / "d", progress=False, workers=1,
                val_fraction=0)
        assert not tmp.exists()
        assert live.exists() and (users / "main.py").exists()
        assert (parent / "c" / "meta.json").is_file() and not (parent / ".old-c-999999998").exists()
        assert sorted(p.name for p in parent.iterdir()) == sorted([".b.tmp-" + str(alive.pid), ".notes.tmp-999999999",
                                                                  "c", "d"])
        assert not any(p.name.startswith(".gpt2kit") for p in (parent / "d").iterdir())  # no marker in the result
    finally:
        alive.kill()
        alive.wait()


def test_disk_full_during_prepare_is_one_error_line_and_keeps_the_old_result(corpus_dir, small_tokenizer, tmp_path,
                                                                             monkeypatch, capsys):
    import errno

    import gpt2kit.prepare as prep
    from gpt2kit.cli import main

    out = tmp_path / "data"
    prepare([str(corpus_dir / "glob.py")], small_tokenizer, out, progress=False, workers=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    small_tokenizer.save(tmp_path / "tok")

    def full(self, ids):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prep._ShardWriter, "write", full)
    assert main(["prepare", "--data", str(corpus_dir), "--tokenizer", str(tmp_path / "tok"), "--out", str(out),
                 "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        next(ln for ln in err.splitlines() if ln.startswith("error:"))]
    assert "no space left" in err and "as it was" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "tok"]  # no temporary directory left
