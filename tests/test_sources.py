"""Sources: every kind through one interface, stable keys, globs, decoding trouble counted, bad input."""

from __future__ import annotations

import csv
import json

import pytest

from gpt2kit.errors import UserError
from gpt2kit.sources import open_sources, stdlib_root


def texts(*sources, **options):
    return [d.text for d in open_sources(list(map(str, sources)), **options)]


def test_directory_recursive_sorted_with_globs(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.py").write_text("A")
    (tmp_path / "b" / "c.py").write_text("C")
    (tmp_path / "b" / "d.txt").write_text("D")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.py").write_text("hidden")
    docs = list(open_sources([str(tmp_path)]))
    assert [(d.key, d.text) for d in docs] == [("a.py", "A"), ("b/c.py", "C"), ("b/d.txt", "D")]
    assert texts(tmp_path, include=["*.py"]) == ["A", "C"]
    assert texts(tmp_path, include=["b/*"], exclude=["*.txt"]) == ["C"]


def test_tables(tmp_path):
    rows = [{"text": "one", "n": 1}, {"text": "two", "n": 2}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "d.json").write_text(json.dumps({"data": rows}))
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["n", "body"])
        w.writeheader()
        w.writerows({"n": r["n"], "body": r["text"] + ",\n quoted"} for r in rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", "p2"], "other": [1, 2]}), tmp_path / "d.parquet")
    assert texts(tmp_path / "d.jsonl") == ["one", "two"]
    assert texts(tmp_path / "d.json") == ["one", "two"]
    assert texts(tmp_path / "d.csv", text_column="body") == ["one,\n quoted", "two,\n quoted"]
    assert texts(tmp_path / "d.parquet") == ["p1", "p2"]
    assert [d.key for d in open_sources([str(tmp_path / "d.jsonl")])] == ["d.jsonl:0", "d.jsonl:1"]
    with pytest.raises(UserError, match="no column 'text' in .*columns found: n, body"):
        texts(tmp_path / "d.csv")
    with pytest.raises(UserError, match="columns found: text, other"):
        texts(tmp_path / "d.parquet", text_column="body")


def test_saved_dataset_plain_and_streaming(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["x1", "x2", "x3"], "y": [0, 1, 0]}).save_to_disk(str(tmp_path / "ds"))
    assert texts(tmp_path / "ds") == ["x1", "x2", "x3"]
    assert texts(tmp_path / "ds", streaming=True) == ["x1", "x2", "x3"]
    with pytest.raises(UserError, match="columns found: text, y"):
        texts(tmp_path / "ds", text_column="content")


def test_stdlib_is_the_standard_library_without_site_packages():
    docs = list(open_sources(["stdlib"], include=["json/*.py"]))
    assert {d.key for d in docs} >= {"stdlib/json/__init__.py", "stdlib/json/decoder.py"}
    assert all(d.key.endswith(".py") for d in docs)
    assert (stdlib_root() / "json" / "decoder.py").read_text() in [d.text for d in docs]
    assert not any("site-packages" in d.key for d in open_sources(["stdlib"], include=["*/site-packages/*"]))


def test_binary_skipped_and_undecodable_replaced(tmp_path, capsys):
    (tmp_path / "bin.dat").write_bytes(b"\x7fELF\x00\x00\x01")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    corpus = open_sources([str(tmp_path)])
    assert [d.text for d in corpus] == ["caf\ufffd"]
    corpus.report()
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: 1 file(s) had bytes that are not UTF-8, replaced by U+FFFD (e.g. latin.txt)",
                   "warning: skipped 1 binary file(s)"]


def test_limit_and_fingerprint(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(str(i))
    assert texts(tmp_path, limit=2) == ["0", "1"]
    fp = open_sources([str(tmp_path)]).fingerprint()
    assert open_sources([str(tmp_path)]).fingerprint() == fp
    (tmp_path / "0.txt").write_text("changed")
    assert open_sources([str(tmp_path)]).fingerprint() != fp


def test_missing_path_and_offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="data not found: ./nope.txt"):
        open_sources(["./nope.txt"])
    with pytest.raises(UserError, match="offline"):
        list(open_sources(["hf:some-user/some-dataset-that-is-not-here"]))


def test_code_folder_with_a_stray_table_and_a_broken_link(tmp_path, capsys):
    from gpt2kit.cli import main
    from gpt2kit.sources import open_sources

    (tmp_path / "a.py").write_text("print('a')\n")
    (tmp_path / "fixture.csv").write_text("name,value\nx,1\n")
    (tmp_path / "dangling.py").symlink_to(tmp_path / "nowhere.py")
    corpus = open_sources([str(tmp_path)])
    assert [d.key for d in corpus] == ["a.py"]
    corpus.fingerprint()  # no traceback on the broken link
    corpus.report()
    assert "skipped 1 table file(s) without a 'text' column" in capsys.readouterr().err
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert main(["prepare", "--data", str(tmp_path / "bad.parquet"), "--tokenizer", "gpt2",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not a readable parquet file" in err and "Traceback" not in err


# -- sample_by: how a text file splits into documents -------------------------------------------------
def test_sample_by_line_paragraph_and_auto(tmp_path, capsys):
    (tmp_path / "jokes.txt").write_text("first joke\r\n\n  \nsecond joke\nthird\n\n")
    (tmp_path / "recipes.txt").write_text("\n\nsoup\nwater, salt\n\n\n  \ncake\n  flour\n")
    docs = list(open_sources([str(tmp_path / "jokes.txt")], sample_by="line"))
    assert [(d.key, d.text) for d in docs] == [("jokes.txt:0", "first joke"), ("jokes.txt:1", "second joke"),
                                              ("jokes.txt:2", "third")]
    docs = list(open_sources([str(tmp_path / "recipes.txt")], sample_by="paragraph"))
    assert [(d.key, d.text) for d in docs] == [("recipes.txt:0", "soup\nwater, salt"),
                                              ("recipes.txt:1", "cake\n  flour")]
    assert texts(tmp_path / "recipes.txt", sample_by="file") == [(tmp_path / "recipes.txt").read_text()]
    assert [d.key for d in open_sources([str(tmp_path / "recipes.txt")])] == ["recipes.txt"]  # the default
    # auto: paragraphs only where a blank line separates text (blank lines at the ends do not count)
    (tmp_path / "lines.txt").write_text("\n\na\nb\nc\n\n\n")
    corpus = open_sources([str(tmp_path)], sample_by="auto")
    assert [d.key for d in corpus] == ["jokes.txt:0", "jokes.txt:1", "lines.txt:0", "lines.txt:1", "lines.txt:2",
                                       "recipes.txt:0", "recipes.txt:1"]
    corpus.report()
    assert capsys.readouterr().err.splitlines() == [
        "jokes.txt: documents separated by blank lines (sample_by auto)",
        "lines.txt: one document per line (sample_by auto)",
        "recipes.txt: documents separated by blank lines (sample_by auto)",
    ]


def test_sample_by_leaves_tables_alone_and_changes_the_fingerprint(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "a\nb\n\nc"}) + "\n")
    assert texts(tmp_path / "d.jsonl", sample_by="line") == ["a\nb\n\nc"]
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(f"x{i}\ny{i}\n")
    corpus = open_sources([str(tmp_path)], sample_by="auto", include=["*.txt"])
    assert len(list(corpus)) == 10
    corpus.report()  # a few lines at most, however many files
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and err[-1] == "... and 2 more file(s) (sample_by auto): 2 one document per line"
    fps = {open_sources([str(tmp_path)], sample_by=s).fingerprint() for s in ("file", "line", "paragraph", "auto")}
    assert len(fps) == 4
    assert (open_sources([str(tmp_path / "d.jsonl")], sample_by="line").fingerprint()
            == open_sources([str(tmp_path / "d.jsonl")]).fingerprint())
    with pytest.raises(UserError, match="--sample-by must be one of file, line, paragraph, auto"):
        open_sources([str(tmp_path)], sample_by="sentence")


def test_errors_name_the_flag_of_the_running_command(tmp_path):
    from gpt2kit.errors import flag, set_flag_style

    (tmp_path / "d.csv").write_text("title,body\nx,y\n")
    try:
        assert flag("data.val_fraction") == "--val-fraction"
        with pytest.raises(UserError, match="use --text-column"):
            texts(tmp_path / "d.csv")
        set_flag_style("config")
        assert flag("data.val_fraction") == "--data.val_fraction" and flag("model.block_size") == "--model.block_size"
        with pytest.raises(UserError, match=r"use --data\.text_column\)"):
            texts(tmp_path / "d.csv")
        with pytest.raises(ValueError):
            set_flag_style("yaml")
    finally:
        set_flag_style("cli")
