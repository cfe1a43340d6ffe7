"""Fits the ecosystem: Accelerate's trackers with grouped tags and hyper-parameters, devices, launchers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from gpt2kit.cli import main
from gpt2kit.config import build_config
from gpt2kit.train import train

TINY = {"model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32", "optim.lr": "3e-3",
        "train.batch_size": "4", "train.max_steps": "4", "train.eval_every": "2", "train.ckpt_every": "0",
        "train.log_every": "1", "train.precision": "fp32", "train.eval_batches": "2"}


def flags(prepared_dir, out, **over) -> list[str]:
    args = ["train", "--data", str(prepared_dir), "--out", str(out)]
    for k, v in {**TINY, **over}.items():
        args += [f"--{k}", str(v)]
    return args


def test_tensorboard_tags_are_grouped_and_hparams_logged_once(prepared_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(build_config(None, {**TINY, "data.sources": str(prepared_dir)}), run, quiet=True)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tok_s", "perf/mfu", "eval/loss", "eval/ppl"} <= tags
    assert not {"loss", "val_loss"} & tags  # no flat tags
    assert [e.step for e in acc.Scalars("eval/loss")] == [2, 4]
    hparams = list((run / "tensorboard").rglob("hparams.yml"))
    assert len(hparams) == 1 and "optim.lr: 0.003" in hparams[0].read_text()
    assert (run / "metrics.jsonl").read_text().count('"val_loss"') == 2  # metrics.jsonl keeps its flat names


def test_no_trackers_and_bad_trackers(prepared_dir, tmp_path, capsys):
    run = tmp_path / "quiet"
    train(build_config(None, {**TINY, "data.sources": str(prepared_dir), "train.report_to": ""}), run, quiet=True)
    assert not (run / "tensorboard").exists() and (run / "metrics.jsonl").exists()
    cases = [("train.report_to", "tensorboard,neptune", "unknown tracker 'neptune'")]
    if importlib.util.find_spec("mlflow") is None:
        cases.append(("train.report_to", "mlflow", "needs the mlflow package"))
    for key, value, needle in cases:
        out = tmp_path / "bad"
        assert main(flags(prepared_dir, out, **{key: value})) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
        assert not out.exists()


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_an_absent_device_is_one_error_line(device, prepared_dir, tmp_path, capsys):
    import torch

    present = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if present:
        pytest.skip(f"{device} is present here")
    assert main(flags(prepared_dir, tmp_path / "r", **{"train.device": device})) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"train.device {device}" in err


def test_launcher_asked_for_more_processes_than_run(prepared_dir, tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process: say so instead of training silently."""
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = flags(prepared_dir, tmp_path / "r", **{"train.max_steps": "1", "train.eval_every": "0"})
    r = subprocess.run([launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "gpt2kit", *args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "asked for 2 processes but 1 is running" in r.stderr


def test_info_summarises_a_run(prepared_dir, tmp_path, capsys):
    import json

    run = tmp_path / "run"
    train(build_config(None, {**TINY, "data.sources": str(prepared_dir), "train.ckpt_every": "2"}), run, quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["steps"] == 4 and info["latest"] == "step-00000004" and info["task"] == "lm"
    assert info["tokens_seen"] == [r for r in rows if "loss" in r][-1]["tokens"]
    assert info["last_eval"] == [r for r in rows if "val_loss" in r][-1]
    assert info["tokenizer"]["vocab_size"] == 512 and info["config"]["n_layer"] == 2
    assert {"checkpoints", "metrics.jsonl", "config.yaml", "tokenizer"} <= set(info["files"])
    assert main(["info", str(run)]) == 0
    text = capsys.readouterr().out
    assert "best val loss" in text and "step-00000004" in text
    assert main(["info", str(tmp_path / "missing")]) == 2
