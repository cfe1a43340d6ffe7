"""kill -9 at random moments (issue 11, reliability 1): a run with accumulation 2, shuffled data and a checkpoint
every 2 steps (so a good share of the kills land inside a save: while tensors are written, between the renames,
while `latest` is replaced or old checkpoints are pruned) is killed 4 times and resumed with `--resume auto`
each time (seen in trial runs: kills left `.tmp-step-*` dirs and a half-written `.latest.tmp`); its final weights, optimizer state and every per-step loss equal an uninterrupted run's, bitwise."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from gpt2kit.cli import main

OVER = {
    "model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32", "optim.lr": "3e-3",
    "optim.warmup_steps": "2", "train.batch_size": "2", "train.grad_accum": "2", "train.max_steps": "60",
    "train.eval_every": "0", "train.eval_batches": "2", "train.ckpt_every": "2", "train.keep_last": "2",
    "train.log_every": "1", "train.precision": "fp32", "train.report_to": "",
}


def flags(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--data", str(data), "--out", str(out)]
    for k, v in OVER.items():
        args += [f"--{k}", v]
    return [*args, *extra]


def latest(run: Path) -> str | None:
    try:
        return (run / "checkpoints" / "latest").read_text().strip()
    except OSError:
        return None


def final_state(run: Path) -> tuple[dict, dict]:
    ckpt = run / "checkpoints" / latest(run)
    return load_file(ckpt / "model.safetensors"), torch.load(ckpt / "optimizer.pt", weights_only=True)


def losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if "loss" in row:
            out[row["step"]] = row["loss"]  # a step run again after a kill: the later row
    return out


def test_kill9_at_random_moments_then_resume_equals_an_uninterrupted_run(prepared_dir, tmp_path, capsys):
    ref = tmp_path / "ref"
    assert main(flags(prepared_dir, ref)) == 0
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the same threads as this process: bitwise needs the same sums
    rng = random.Random(11)
    kills = 0
    for attempt in range(4):
        before = latest(run)
        extra = ["--resume", "auto"] if attempt else []
        proc = subprocess.Popen([sys.executable, "-m", "gpt2kit", *flags(prepared_dir, run, *extra)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while latest(run) == before and proc.poll() is None:  # this life has saved at least once
            assert time.time() < deadline, "no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.25))
        if proc.poll() is not None:
            break  # it finished first
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        kills += 1
    assert kills >= 2
    assert main(flags(prepared_dir, run, "--resume", "auto")) == 0
    capsys.readouterr()
    (wa, oa), (wb, ob) = final_state(ref), final_state(run)
    assert latest(ref) == latest(run) == "step-00000060"
    # no complete checkpoint was given up: a kill after a save's last rename but before `latest` moved on
    # resumes from that newer checkpoint instead of setting it aside
    assert not list((run / "checkpoints").glob("abandoned-*"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = oa["optimizer"]["state"], ob["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for i, state in sa.items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[i][name])), (i, name)
    assert losses(ref) == losses(run)
