"""Checkpoints under faults (issue 11): damaged newest checkpoints are skipped with a warning, a run with no usable
checkpoint is refused untouched, an interrupted re-save is recovered, pruning keeps what matters, the final save
comes before the final evaluation, and a full disk is one error line with the previous checkpoint intact."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import helpers
import pytest
import torch
from helpers import one_error, tree
from safetensors.torch import load_file

from gpt2kit import GPT, GPTConfig
from gpt2kit.checkpoint import (
    choose_checkpoint,
    load_checkpoint_state,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from gpt2kit.cli import main
from gpt2kit.config import build_config
from gpt2kit.errors import UserError

TINY = {
    "model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32", "optim.lr": "3e-3",
    "optim.warmup_steps": "1", "train.batch_size": "4", "train.max_steps": "6", "train.eval_batches": "2",
    "train.eval_every": "2", "train.ckpt_every": "2", "train.keep_last": "3", "train.log_every": "1",
    "train.precision": "fp32", "train.report_to": "",
}


def train_args(data, out, *extra, **over) -> list[str]:
    return helpers.train_args(TINY, data, out, *extra, **over)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict:
    return load_file(run / "checkpoints" / "step-00000006" / "model.safetensors")


@pytest.fixture(scope="module")
def ref(prepared_dir, tmp_path_factory) -> Path:
    """An uninterrupted 6-step run with checkpoints at steps 2, 4 and 6 (never modified by the tests)."""
    from gpt2kit.train import train

    run = tmp_path_factory.mktemp("ckpts") / "ref"
    train(build_config(None, {**TINY, "data.sources": str(prepared_dir)}), run, quiet=True)
    return run


@pytest.fixture
def run(ref, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(ref, copy)
    return copy


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def rewrite_state(ckpt: Path, drop: str) -> None:
    """state.json without `drop`, its MANIFEST entry updated (as another version might have written it)."""
    state = json.loads((ckpt / "state.json").read_text())
    del state[drop]
    (ckpt / "state.json").write_text(json.dumps(state))
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    manifest["state.json"] = hashlib.sha256((ckpt / "state.json").read_bytes()).hexdigest()
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))


DAMAGE = {  # how the newest checkpoint (step 6) is damaged -> words of the warning
    "byte flipped": (lambda c: flip_byte(c / "model.safetensors"), ["model.safetensors", "sha256"]),
    "file truncated": (lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:100]),
                       ["optimizer.pt", "sha256"]),
    "file deleted": (lambda c: (c / "state.json").unlink(), ["state.json"]),
    "no COMPLETE": (lambda c: (c / "COMPLETE").unlink(), ["no COMPLETE marker"]),
    "state key missing": (lambda c: rewrite_state(c, "loader"), ["state.json", "'loader'"]),
}


@pytest.mark.parametrize("how", DAMAGE)
def test_resume_auto_falls_back_past_a_damaged_newest_checkpoint(ref, run, prepared_dir, capsys, how):
    damage, words = DAMAGE[how]
    damage(run / "checkpoints" / "step-00000006")
    assert main(train_args(prepared_dir, run, "--resume", "auto")) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert all(w in warning for w in words) and "resuming from step-00000004" in warning, warning
    assert "resuming from" in err and "step-00000004 (step 4" in err
    a, b = final_weights(ref), final_weights(run)  # steps 5 and 6 again, exactly as the first time
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.get("loss") for r in rows(run)] == [r.get("loss") for r in rows(ref)]
    if how != "no COMPLETE":  # the damaged checkpoint is kept aside, never deleted
        assert len(list((run / "checkpoints").glob("abandoned-after-00000004-*/step-00000006"))) == 1


def test_a_garbage_latest_pointer_falls_back_to_the_newest_complete_checkpoint(run, prepared_dir, capsys):
    (run / "checkpoints" / "latest").write_bytes(b"\x00\xffgarbage\n")
    before = tree(run / "checkpoints" / "step-00000006")
    assert main(train_args(prepared_dir, run, "--resume", "auto")) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "latest names" in err and "resuming from step-00000006" in err
    assert tree(run / "checkpoints" / "step-00000006") == before


@pytest.mark.parametrize("how", ["no COMPLETE", "byte flipped"])
def test_no_usable_checkpoint_is_refused_and_nothing_changes(run, prepared_dir, capsys, how):
    for ckpt in (run / "checkpoints").glob("step-*"):
        DAMAGE[how][0](ckpt)
    before = tree(run)
    line = one_error(main(train_args(prepared_dir, run, "--resume", "auto")), capsys.readouterr().err)
    assert "no usable checkpoint" in line and "nothing was changed" in line and "--overwrite" in line, line
    assert tree(run) == before


@pytest.mark.parametrize("how", ["state key missing", "byte flipped"])
def test_resuming_a_named_damaged_checkpoint_is_one_error_line(run, prepared_dir, capsys, how):
    ckpt = run / "checkpoints" / "step-00000006"
    DAMAGE[how][0](ckpt)
    before = tree(run)
    line = one_error(main(train_args(prepared_dir, run, "--resume", str(ckpt))), capsys.readouterr().err)
    assert str(ckpt) in line and all(w in line for w in DAMAGE[how][1]), line
    assert tree(run) == before


def test_a_resave_killed_between_its_renames_is_recovered_on_resume(run, prepared_dir, capsys):
    ckpts = run / "checkpoints"
    (ckpts / "step-00000006").rename(ckpts / ".old-step-00000006-4242")  # swapped aside, new copy never moved in
    before = tree(ckpts / ".old-step-00000006-4242")
    assert main(train_args(prepared_dir, run, "--resume", "auto")) == 0
    assert "step-00000006 (step 6" in capsys.readouterr().err  # the step-6 copy, not a fallback to step 4
    assert tree(ckpts / "step-00000006") == before and not list(ckpts.glob(".old-*"))


# ---------------------------------------------------------------- checkpoint files alone (no training)


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", vocab_size=64))


def test_a_resave_interrupted_between_renames_is_recovered_by_the_next_save(tmp_path, monkeypatch):
    import gpt2kit.atomic as atomic

    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, model(), {"step": 1})
    save_checkpoint(root, 2, model(), {"step": 2, "first": True})
    real_replace, calls = atomic.os.replace, []

    def dies_on_the_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill between `final -> .old-final` and `tmp -> final`
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", dies_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, 2, model(), {"step": 2, "first": False})
    monkeypatch.undo()
    assert not (root / "step-00000002").exists() and len(list(root.glob(".old-step-00000002-*"))) == 1
    ckpt, state, _ = choose_checkpoint(tmp_path)  # a reader alone (no lock) does not rename anything
    assert ckpt.name == "step-00000001"
    save_checkpoint(root, 3, model(), {"step": 3})  # the next save, under the run's lock, recovers it
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001", "step-00000002", "step-00000003"]
    verify_checkpoint(root / "step-00000002")
    assert load_checkpoint_state(root / "step-00000002")[0]["first"] is True


def test_pruning_keeps_the_newest_best_and_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for s in range(1, 7):
        save_checkpoint(root, s, model(), {"step": s})
    (root / "best").write_text("step-00000002\n")
    (root / "latest").write_text("step-00000004\n")  # e.g. after resuming from step 4
    prune_checkpoints(root, keep_last=1)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002", "step-00000004", "step-00000006"]


def test_missing_state_key_names_the_file(tmp_path):
    ckpt = save_checkpoint(tmp_path / "checkpoints", 1, model(), {"step": 1, "tokens": 5})
    rewrite_state(ckpt, "tokens")
    with pytest.raises(UserError, match=r"state.json lacks 'tokens'"):
        load_checkpoint_state(ckpt, required=("step", "tokens"))
    assert load_checkpoint_state(ckpt)[0] == {"step": 1}


# ---------------------------------------------------------------- the final save and a full disk


def test_the_final_checkpoint_is_saved_before_the_final_evaluation(ref, prepared_dir, tmp_path, monkeypatch):
    from gpt2kit.tasks import LMTask
    from gpt2kit.train import train

    # In a finished run the final evaluation is in the final checkpoint's state and chose `best`.
    state = json.loads((ref / "checkpoints" / "step-00000006" / "state.json").read_text())
    val = {r["step"]: r["val_loss"] for r in rows(ref) if "val_loss" in r}
    assert state["last_val_loss"] == val[6] and state["best_val_loss"] == min(val.values())
    best = (ref / "checkpoints" / "best").read_text().strip()
    assert best == f"step-{min(val, key=val.get):08d}"
    verify_checkpoint(ref / "checkpoints" / "step-00000006")

    def crash(self, *a, **k):
        raise ZeroDivisionError("a crash in the final evaluation")

    monkeypatch.setattr(LMTask, "evaluate", crash)
    run = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        train(build_config(None, {**TINY, "data.sources": str(prepared_dir), "train.eval_every": "0",
                                  "train.ckpt_every": "0"}), run, quiet=True)
    ckpt = run / "checkpoints" / "step-00000006"
    verify_checkpoint(ckpt)  # nothing was lost
    assert (run / "checkpoints" / "latest").read_text().strip() == ckpt.name
    a, b = final_weights(ref), load_file(ckpt / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((ckpt / "state.json").read_text())["final_eval_pending"] is True
    monkeypatch.undo()  # --resume auto then runs the evaluation that crashed, and records it
    res = train(build_config(None, {**TINY, "data.sources": str(prepared_dir), "train.eval_every": "0",
                                    "train.ckpt_every": "0"}), run, resume="auto", quiet=True)
    assert res.last_val_loss == val[6] and [r["step"] for r in rows(run) if "val_loss" in r] == [6]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["final_eval_pending"] is False and state["last_val_loss"] == val[6]
    assert (run / "checkpoints" / "best").read_text().strip() == ckpt.name
    verify_checkpoint(ckpt)


def test_disk_full_during_a_checkpoint_save_is_one_error_line(prepared_dir, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    run = tmp_path / "run"
    real_save, seen = safetensors.torch.save_file, {}

    def fills_the_disk(tensors, filename, *a, **k):
        if Path(filename).parent.name.startswith(".tmp-step-00000004"):
            seen["step 2"] = tree(run / "checkpoints" / "step-00000002")
            Path(filename).write_bytes(b"\0" * 1000)  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", fills_the_disk)
    line = one_error(main(train_args(prepared_dir, run, train__eval_every=0)), capsys.readouterr().err)
    assert "no space left" in line and "step-00000004" in line and "step-00000002 is intact" in line, line
    assert tree(run / "checkpoints" / "step-00000002") == seen["step 2"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000002"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000002"
