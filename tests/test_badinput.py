"""Bad input as a new user gives it (issue 11): each case exits 2 with exactly one `error:` line on stderr, no
traceback, and leaves every directory it was given as it was (hashed before and after)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error, tree

from gpt2kit.cli import main
from gpt2kit.config import build_config

TINY = {
    "model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32", "optim.warmup_steps": "1",
    "train.batch_size": "4", "train.max_steps": "2", "train.eval_batches": "2", "train.eval_every": "0",
    "train.ckpt_every": "0", "train.precision": "fp32", "train.report_to": "",
}






def train_args(data, out, **over) -> list[str]:
    args = ["train", "--data", str(data), "--out", str(out)]
    for k, v in {**TINY, **{k.replace("__", "."): str(v) for k, v in over.items()}}.items():
        args += [f"--{k}", v]
    return args


@pytest.fixture(scope="module")
def tiny_run(prepared_dir, tmp_path_factory) -> Path:
    from gpt2kit.train import train

    run = tmp_path_factory.mktemp("badinput") / "run"
    train(build_config(None, {**TINY, "data.sources": str(prepared_dir)}), run, quiet=True)
    return run


@pytest.fixture(scope="module")
def hf_garbage(tmp_path_factory, prepared_dir) -> Path:
    """A Hugging Face GPT-2 directory whose model.safetensors is not one."""
    d = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 512, "n_positions": 64,
                                               "n_embd": 32, "n_layer": 2, "n_head": 2}))
    (d / "model.safetensors").write_bytes(b"\x00\x00\x00\x00\x00\x00\x01\x00{\"garbage" + bytes(range(256)) * 8)
    shutil.copy(prepared_dir / "tokenizer.json", d / "tokenizer.json")
    return d


# ---------------------------------------------------------------- sizes the machine cannot hold


@pytest.mark.parametrize("over, words", [
    ({"model__n_embd": 1_000_000, "model__n_head": 1000}, ["TiB", "smaller model"]),
    ({"train__batch_size": 10**9}, ["activations", "train.batch_size"]),
    ({"model__block_size": 10**8}, []),  # memory or data size, whichever the machine meets first
])
def test_sizes_the_machine_cannot_hold(prepared_dir, tmp_path, capsys, over, words):
    out = tmp_path / "run"
    before = tree(prepared_dir)
    line = one_error(main(train_args(prepared_dir, out, **over)), capsys.readouterr().err)
    assert all(w in line for w in words), line
    assert not out.exists() and tree(prepared_dir) == before


def test_generation_the_machine_cannot_hold(tiny_run, capsys):
    before = tree(tiny_run)
    line = one_error(main(["generate", "--model", str(tiny_run), "--prompt", "def", "--max-new-tokens",
                           str(10**12)]), capsys.readouterr().err)
    assert "--max-new-tokens" in line and "TiB" in line
    assert tree(tiny_run) == before


def test_a_config_json_declaring_a_giant_model(tmp_path, capsys):
    d = tmp_path / "giant"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
                                               "n_embd": 1_000_000, "n_layer": 48, "n_head": 25}))
    (d / "model.safetensors").write_bytes(b"junk")
    line = one_error(main(["generate", "--model", str(d), "--prompt", "x"]), capsys.readouterr().err)
    assert "config.json" in line


# ---------------------------------------------------------------- damaged weights


def test_garbage_safetensors_in_a_hugging_face_dir(hf_garbage, prepared_dir, tmp_path, capsys):
    before = tree(hf_garbage)
    for args in (["generate", "--model", str(hf_garbage), "--prompt", "x"],
                 ["eval", "--model", str(hf_garbage), "--data", str(prepared_dir)],
                 ["export", "--model", str(hf_garbage), "--out", str(tmp_path / "export")],
                 train_args(prepared_dir, tmp_path / "ft") + ["--init", str(hf_garbage)]):
        line = one_error(main(args), capsys.readouterr().err)
        assert "model.safetensors" in line, (args[0], line)
    assert tree(hf_garbage) == before and not (tmp_path / "ft").exists() and not (tmp_path / "export").exists()

    sharded = tmp_path / "sharded"
    shutil.copytree(hf_garbage, sharded)
    (sharded / "model.safetensors").unlink()
    (sharded / "model.safetensors.index.json").write_text('{"metadata": {}}')
    assert "index" in one_error(main(["generate", "--model", str(sharded), "--prompt", "x"]), capsys.readouterr().err)


def test_garbage_safetensors_in_a_gpt2kit_checkpoint(tiny_run, prepared_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run / "checkpoints" / (tiny_run / "checkpoints" / "latest").read_text().strip(), ckpt)
    (ckpt / "MANIFEST.json").unlink()  # no checksums to catch it: the loader itself must
    (ckpt / "COMPLETE").unlink()
    (ckpt / "model.safetensors").write_bytes(b"\xff" * 64)
    before = tree(ckpt)
    for args in (["generate", "--model", str(ckpt), "--prompt", "x"],
                 train_args(prepared_dir, tmp_path / "ft") + ["--init", str(ckpt)]):
        assert "model.safetensors" in one_error(main(args), capsys.readouterr().err)
    assert tree(ckpt) == before and not (tmp_path / "ft").exists()


# ---------------------------------------------------------------- damaged prepared data


def _damaged_data(prepared_dir: Path, tmp_path: Path, how: str) -> Path:
    d = tmp_path / f"data-{how}"
    shutil.copytree(prepared_dir, d)
    meta = json.loads((d / "meta.json").read_text())
    if how == "no-meta":
        (d / "meta.json").unlink()
    elif how == "no-key":
        del meta["eos_id"]
    elif how == "bad-split":
        meta["splits"]["train"] = {"files": "train-00000.bin"}
    elif how in ("big-id", "big-id-recorded"):
        shard = np.memmap(d / "train-00000.bin", dtype=meta["dtype"], mode="r+")
        # an id the embedding does not have, in every block, so whichever blocks a batch draws hold one
        shard[::16] = meta["vocab_size"] + 7
        shard.flush()
        del shard
        if how == "big-id":
            meta.pop("max_id", None)  # an older or hand-made directory: scanned at load
    if how != "no-meta":
        (d / "meta.json").write_text(json.dumps(meta))
    return d


@pytest.mark.parametrize("how, words", [
    ("no-meta", ["no meta.json", "gpt2kit prepare"]),
    ("no-key", ["eos_id", "gpt2kit prepare"]),
    ("bad-split", ["'train' split", "gpt2kit prepare"]),
    ("big-id", ["train-00000.bin", "vocab_size"]),
    ("big-id-recorded", ["token id", "vocab_size"]),  # meta.json's max_id is stale: caught per batch
])
def test_damaged_prepared_data(prepared_dir, tiny_run, tmp_path, capsys, how, words):
    d = _damaged_data(prepared_dir, tmp_path, how)
    before = tree(d)
    line = one_error(main(train_args(d, tmp_path / "run", train__eval_batches=0)), capsys.readouterr().err)
    assert all(w in line for w in words), line
    if how != "big-id-recorded":  # found in set-up: no run directory is made
        assert not (tmp_path / "run").exists()
    for extra in ([], ["--context", "16"]):  # packed blocks, and documents with a sliding window
        line = one_error(main(["eval", "--model", str(tiny_run), "--data", str(d), "--split", "train", *extra]),
                         capsys.readouterr().err)
        assert all(w in line for w in words[-1:]), line
    assert tree(d) == before


# ---------------------------------------------------------------- tables with NUL bytes or damaged pages


def test_csv_with_nul_bytes(tmp_path, prepared_dir, capsys):
    named = tmp_path / "utf16.csv"
    named.write_bytes("text\nhello\n".encode("utf-16"))  # what a spreadsheet's "Unicode text" export gives
    line = one_error(main(["prepare", "--data", str(named), "--tokenizer", str(prepared_dir), "--out",
                           str(tmp_path / "a")]), capsys.readouterr().err)
    assert "utf16.csv" in line and "NUL" in line

    late = tmp_path / "late.csv"
    with open(late, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([[f"row {i} " + "x" * 100] for i in range(200)])
        w.writerow(["bad\x00row"])
    line = one_error(main(["prepare", "--data", str(late), "--tokenizer", str(prepared_dir), "--out",
                           str(tmp_path / "b")]), capsys.readouterr().err)
    assert "late.csv:202" in line and "NUL" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    # in a folder, a binary table is skipped and counted, like any binary file
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(named, folder / "utf16.csv")
    (folder / "notes.txt").write_text("some text to train on\n" * 50)
    assert main(["prepare", "--data", str(folder), "--tokenizer", str(prepared_dir), "--out", str(tmp_path / "c"),
                 "--val-fraction", "0"]) == 0
    assert "skipped 1 binary file" in capsys.readouterr().err


def test_parquet_with_corrupt_pages(tmp_path, prepared_dir, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " * 20 for i in range(20_000)]}), path, row_group_size=2000,
                   compression="snappy")
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 4000, 7):  # pages in the middle; the footer stays readable
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    line = one_error(main(["prepare", "--data", str(path), "--tokenizer", str(prepared_dir), "--out",
                           str(tmp_path / "p"), "--workers", "1"]), capsys.readouterr().err)
    assert "damaged.parquet" in line and "damaged" in line
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- generate and plot


def test_empty_prompt_starts_from_eos_and_says_so(tiny_run, capsys):
    assert main(["generate", "--model", str(tiny_run), "--prompt", "", "--max-new-tokens", "4", "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert "empty prompt" in err and "<|endoftext|>" in err and "Traceback" not in err


def test_plot_out(tiny_run, tmp_path, capsys):
    # a missing folder is made, as for every command's --out
    assert main(["plot", str(tiny_run), "--out", str(tmp_path / "new" / "dir" / "loss.svg")]) == 0
    assert (tmp_path / "new" / "dir" / "loss.svg").stat().st_size > 0
    for out in ("curves.txt", "curves"):
        line = one_error(main(["plot", str(tiny_run), "--out", str(tmp_path / out)]), capsys.readouterr().err)
        assert ".png" in line
        assert not (tmp_path / out).exists()
