"""Run directories (issue 11): a run is what gpt2kit marked as one, `--overwrite` removes only what gpt2kit wrote,
`--resume` never trains into a directory that is not a run, and one training process at a time holds a run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
from helpers import one_error, tree

from gpt2kit.cli import main
from gpt2kit.config import build_config
from gpt2kit.errors import UserError
from gpt2kit.rundir import LOCK, MARKER, RunLock, is_run_dir

TINY = {
    "model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32", "optim.warmup_steps": "1",
    "train.batch_size": "4", "train.max_steps": "2", "train.eval_batches": "2", "train.eval_every": "0",
    "train.ckpt_every": "0", "train.precision": "fp32", "train.report_to": "",
}


def train_args(data, out, *extra, **over) -> list[str]:
    return helpers.train_args(TINY, data, out, *extra, **over)


@pytest.fixture(scope="module")
def tiny_run(prepared_dir, tmp_path_factory) -> Path:
    from gpt2kit.train import train

    run = tmp_path_factory.mktemp("rundir") / "run"
    train(build_config(None, {**TINY, "data.sources": str(prepared_dir)}), run, quiet=True)
    return run


def a_project(tmp_path: Path) -> Path:
    """A user's directory that happens to hold a config.yaml and a tokenizer/ (as in the issue's report)."""
    d = tmp_path / "project"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.yaml").write_text("model: {n_layer: 2}\n")
    (d / "main.py").write_text("print('my work')\n")
    (d / "tokenizer" / "tokenizer.json").write_text("{}")
    return d


@pytest.mark.parametrize("flags, words", [
    (["--overwrite"], ["not a gpt2kit run directory", "nothing was deleted"]),
    (["--resume", "auto"], ["not a gpt2kit run directory", "nothing was changed"]),
    ([], ["not a gpt2kit run directory"]),
])
def test_a_directory_that_is_not_a_run_is_never_touched(prepared_dir, tmp_path, capsys, flags, words):
    d = a_project(tmp_path)
    before = tree(d)
    line = one_error(main(train_args(prepared_dir, d, *flags)), capsys.readouterr().err)
    assert all(w in line for w in words), line
    assert tree(d) == before and not (d / LOCK).exists()


def test_resume_from_elsewhere_into_a_directory_that_is_not_a_run(tiny_run, prepared_dir, tmp_path, capsys):
    d = a_project(tmp_path)
    before = tree(d)
    ckpt = tiny_run / "checkpoints" / "step-00000002"
    line = one_error(main(train_args(prepared_dir, d, "--resume", str(ckpt))), capsys.readouterr().err)
    assert "not a gpt2kit run directory" in line
    assert tree(d) == before


def test_overwrite_removes_only_what_gpt2kit_wrote(tiny_run, prepared_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "notes.md").write_text("my notes on this run")
    (run / "analysis").mkdir()
    (run / "analysis" / "plot.py").write_text("import matplotlib")
    (run / "checkpoints" / "step-00000001").mkdir()  # an older attempt's leftovers in gpt2kit's own folder
    created = json.loads((run / MARKER).read_text())["created"]
    assert main(train_args(prepared_dir, run, "--overwrite", train__max_steps=1)) == 0
    err = capsys.readouterr().err
    assert "kept 2 entries gpt2kit did not write" in err and "analysis, notes.md" in err
    assert (run / "notes.md").read_text() == "my notes on this run"
    assert (run / "analysis" / "plot.py").read_text() == "import matplotlib"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "latest", "step-00000001"]
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 1]
    marker = json.loads((run / MARKER).read_text())
    assert marker["format"] == "gpt2kit-run" and marker["version"] == 1 and marker["created"] >= created


def test_a_run_made_before_the_marker_is_still_a_run(tiny_run, prepared_dir, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    (old / MARKER).unlink()
    assert is_run_dir(old)
    assert main(train_args(prepared_dir, old, "--resume", "auto", train__max_steps=3)) == 0
    assert (old / MARKER).is_file()  # resuming it marks it
    assert json.loads((old / "checkpoints" / "step-00000003" / "state.json").read_text())["step"] == 3
    # what an old run is recognised by: config.yaml next to a complete step directory, nothing less
    (old / MARKER).unlink()
    for d in (old / "checkpoints").glob("step-*"):
        (d / "COMPLETE").unlink()
    assert not is_run_dir(old)
    (old / "checkpoints" / "step-00000003" / "COMPLETE").write_text("step 3\n")
    assert is_run_dir(old)
    (old / "config.yaml").unlink()
    assert not is_run_dir(old)


@pytest.mark.parametrize("exists", [False, True])
def test_a_failed_set_up_leaves_the_filesystem_as_it_was(prepared_dir, tmp_path, capsys, exists):
    out = tmp_path / "new" / "run"
    if exists:
        out.mkdir(parents=True)
    one_error(main(train_args(prepared_dir, out, model__n_head=3)), capsys.readouterr().err)
    assert (out.exists() and not any(out.iterdir())) if exists else not (tmp_path / "new").exists()


def test_resume_auto_on_an_empty_directory_starts_a_run(prepared_dir, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(train_args(prepared_dir, out, "--resume", "auto", train__max_steps=1)) == 0
    assert (out / MARKER).is_file() and (out / "checkpoints" / "step-00000001" / "COMPLETE").is_file()


def test_the_lock_is_exclusive_and_released(tmp_path):
    run = tmp_path / "run"
    first = RunLock(run)
    with pytest.raises(UserError, match=rf"in use by another gpt2kit train \(pid {os.getpid()} on "):
        RunLock(run)  # another open file description: refused even within one process
    first.release()
    RunLock(run).release()


def test_a_second_train_on_the_same_out_refuses_and_changes_nothing(tiny_run, prepared_dir, tmp_path, capsys):
    """A real second process: the first holds the run (stopped mid-run with SIGSTOP so the files hold still); the
    second refuses with one line and writes nothing; after the first is killed -9, the OS has released the lock
    and --resume auto continues the run."""
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = train_args(prepared_dir, run, train__max_steps=100000, train__ckpt_every=1)
    first = subprocess.Popen([sys.executable, "-m", "gpt2kit", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while not (run / "checkpoints" / "latest").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        before = tree(run)
        for flags in (["--resume", "auto"], ["--overwrite"]):
            line = one_error(main(train_args(prepared_dir, run, *flags)), capsys.readouterr().err)
            assert f"in use by another gpt2kit train (pid {first.pid} on" in line, line
            assert tree(run) == before
    finally:
        first.kill()
        first.communicate()
    assert main(train_args(prepared_dir, run, "--resume", "auto", train__max_steps=1, train__ckpt_every=1)) == 0
    assert "resuming from" in capsys.readouterr().err


def test_a_locked_run_refuses_a_two_process_train_on_every_rank(prepared_dir, tmp_path):
    """Only rank 0 takes the lock; its refusal reaches rank 1 (no rank waits at a barrier), one line each."""
    run = tmp_path / "run"
    held = RunLock(run)
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "gpt2kit",
                            *train_args(prepared_dir, run)], env=env, capture_output=True, text=True, timeout=120)
    finally:
        held.release()
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(lines) == 2, r.stderr[-3000:]  # one line per rank
    assert all(f"in use by another gpt2kit train (pid {os.getpid()} on" in line for line in lines), lines
    assert "gpt2kit/" not in r.stderr  # no traceback through gpt2kit (torchrun prints its own ChildFailedError)
    assert sorted(p.name for p in run.iterdir()) == [LOCK]
