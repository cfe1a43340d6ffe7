"""`gpt2kit sweep`: a real search on tiny models finds the good learning rate and prunes the hopeless one,
a killed sweep continues without repeating finished trials, best.yaml trains, bad input is one error line."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from helpers import kill9_when

from gpt2kit.cli import main
from gpt2kit.config import build_config, load_yaml
from gpt2kit.errors import UserError
from gpt2kit.sweep import grid_points, parse_space

STEPS = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: one thread is as fast, and a busy 2-core machine does not thrash.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_base(directory: Path, prepared_dir: Path, **train) -> Path:
    base = {"model": {"preset": "tiny", "block_size": 32, "n_embd": 32},
            "data": {"sources": [str(prepared_dir)]},
            "optim": {"lr": 3e-3, "warmup_steps": 2},
            "train": {"batch_size": 4, "max_steps": STEPS, "eval_every": 4, "eval_batches": 2, "ckpt_every": 8,
                      "log_every": 1, "precision": "fp32", **train}}
    path = directory / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def write_space(directory: Path, text: str) -> Path:
    path = directory / "space.yaml"
    path.write_text(text)
    return path


def load(out: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials()


def sweep_args(base: Path, space: Path, out: Path, *extra) -> list[str]:
    return ["sweep", "--config", str(base), "--space", str(space), "--out", str(out), *map(str, extra)]


# ---------------------------------------------------------------- a real search

# Grid order is the space's order: 1e-6 (hopelessly slow) and 3e-3 finish first, as the pruner's reference;
# lr 3 is hopeless the other way and comes last, after 2 finished trials, so the median pruner may stop it.
LRS = [1e-6, 3e-3, 1e-2, 3.0]


@pytest.fixture(scope="module")
def lr_sweep(prepared_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    space = write_space(d, "optim.lr: {type: choice, values: [1.0e-6, 3.0e-3, 1.0e-2, 3.0]}\n")
    out = d / "lr"
    assert main(sweep_args(write_base(d, prepared_dir), space, out, "--trials", 4, "--sampler", "grid")) == 0
    return out


def test_sweep_finds_the_good_learning_rate(lr_sweep):
    out = lr_sweep
    trials = load(out)
    assert [t.params["optim.lr"] for t in trials] == LRS  # grid point k is trial k
    by_lr = {t.params["optim.lr"]: t for t in trials}
    assert by_lr[1e-6].state.name == by_lr[3e-3].state.name == "COMPLETE"
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert best.params["optim.lr"] in (3e-3, 1e-2)
    assert best.value < by_lr[1e-6].value - 0.3, [(t.params, t.value) for t in trials]  # ln(512) = 6.24 at start
    # the value is the trial's best validation loss, as its metrics.jsonl has it
    rows = [json.loads(line) for line in (out / best.user_attrs["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert best.value == pytest.approx(min(val.values()))
    assert best.user_attrs["best_step"] == min(val, key=val.get)
    assert best.user_attrs["tokens"] == max(r["tokens"] for r in rows if "tokens" in r)


def test_hopeless_trial_is_pruned_and_keeps_its_checkpoint(lr_sweep):
    out = lr_sweep
    hopeless = load(out)[3]
    assert hopeless.params["optim.lr"] == 3.0 and hopeless.state.name == "PRUNED"
    stopped = hopeless.user_attrs["steps"]
    assert stopped < STEPS and hopeless.user_attrs["note"] == f"pruned at step {stopped}"
    run = out / hopeless.user_attrs["run_dir"]
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{stopped:08d}" and (run / "checkpoints" / latest / "COMPLETE").exists()


def test_results_table_csv_and_plot(lr_sweep):
    out = lr_sweep
    rows = list(csv.DictReader((out / "results.csv").open()))
    losses = [float(r["val_loss"]) for r in rows]
    assert len(rows) == 4 and losses == sorted(losses)  # lowest validation loss first
    assert {r["state"] for r in rows} == {"COMPLETE", "PRUNED"}
    assert {float(r["optim.lr"]) for r in rows} == set(LRS)
    assert all(int(r["tokens"]) > 0 and float(r["seconds"]) > 0 and r["best_step"] for r in rows)
    table = (out / "results.md").read_text()
    assert "4 of 4 trials finished" in table and "| optim.lr |" in table and "PRUNED" in table
    assert (out / "importance.png").read_bytes()[:4] == b"\x89PNG"


def test_best_yaml_trains(lr_sweep, tmp_path, capsys):
    out = lr_sweep
    best = min((t for t in load(out) if t.state.name == "COMPLETE"), key=lambda t: t.value)
    cfg = build_config(load_yaml(out / "best.yaml"))
    assert cfg.optim.lr == best.params["optim.lr"] and cfg.train.max_steps == STEPS
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "run"),
                 "--train.max_steps", "2"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000002"


# ---------------------------------------------------------------- kill -9, then continue

# The sweep in a child that hangs at the second evaluation of trial 1, after its first checkpoint (so the
# kill lands mid-trial whatever the machine's speed), touching FLAG.
HANGING_CHILD = """
import os, sys, time
import gpt2kit.train as T
real = T.train
def train(cfg, out, **kw):
    if str(out).endswith("trial-0001"):
        inner, calls = kw["on_eval"], []
        def on_eval(step, metrics):
            calls.append(step)
            if len(calls) == 2:
                open(os.environ["FLAG"], "w").close()
                time.sleep(600)
            return inner(step, metrics)
        kw["on_eval"] = on_eval
    return real(cfg, out, **kw)
T.train = train
from gpt2kit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_sweep_continues_without_repeating_finished_trials(prepared_dir, tmp_path, capsys):
    base = write_base(tmp_path, prepared_dir, ckpt_every=4)
    space = write_space(tmp_path, "optim.lr: [1.0e-3, 3.0e-3, 1.0e-2]\n")
    out, flag = tmp_path / "sweep", tmp_path / "hanging"
    args = sweep_args(base, space, out, "--trials", 3, "--sampler", "grid", "--no-prune")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLAG": str(flag), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HANGING_CHILD, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    kill9_when(proc, flag)
    assert proc.returncode == -signal.SIGKILL
    cut = out / "trials" / "trial-0001"
    assert (cut / "checkpoints" / "step-00000004" / "COMPLETE").exists()  # killed mid-trial, with progress
    states = [t.state.name for t in load(out)]
    assert states == ["COMPLETE", "RUNNING", "WAITING"]
    first_metrics = (out / "trials" / "trial-0000" / "metrics.jsonl").read_bytes()

    assert main(args) == 0
    err = capsys.readouterr().err
    assert "trial 1: cut: the sweep stopped during this trial; its values run again as trial 3" in err
    trials = load(out)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE"),
                                                          (3, "COMPLETE")]
    assert trials[3].params == trials[1].params and trials[3].user_attrs["note"] == "re-run of trial 1"
    done = sorted(t.params["optim.lr"] for t in trials if t.state.name == "COMPLETE")
    assert done == [1e-3, 3e-3, 1e-2]  # every grid point finished exactly once
    assert (out / "trials" / "trial-0000" / "metrics.jsonl").read_bytes() == first_metrics  # not re-run
    table = (out / "results.md").read_text()
    assert "3 of 3 trials finished" in table and "| 1 | FAIL |" in table

    # nothing left to do; a changed space is refused, and nothing in the sweep changes
    assert main(args) == 0
    assert "3 trials finished already" in capsys.readouterr().err and len(load(out)) == 4
    other = write_space(tmp_path, "optim.lr: [1.0e-3, 3.0e-3]\n")
    assert main(sweep_args(base, other, out, "--trials", 3, "--sampler", "grid", "--no-prune")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out} holds a sweep over another space")
    assert len(load(out)) == 4


# ---------------------------------------------------------------- the space


def test_space_forms_and_types(prepared_dir, tmp_path):
    base = build_config(load_yaml(write_base(tmp_path, prepared_dir)))
    space = parse_space(yaml.safe_load("""
optim.lr: {type: loguniform, low: 1e-4, high: 1e-2}   # YAML 1.1 reads 1e-4 as a string
optim.warmup_steps: {type: uniform, low: 0, high: 6}  # an int field: integers
train: {batch_size: [4, 8]}                           # a section nesting fields, a list = choice
model.n_layer: {type: int, low: 1, high: 3}
"""), base)
    assert [(p.key, p.kind, p.low, p.high, p.integer) for p in space] == [
        ("optim.lr", "loguniform", 1e-4, 1e-2, False), ("optim.warmup_steps", "uniform", 0, 6, True),
        ("train.batch_size", "choice", None, None, False), ("model.n_layer", "int", 1, 3, False)]
    assert space[2].values == (4, 8)
    grid = grid_points(space[1:])
    assert len(grid) == 7 * 2 * 3 and grid[0] == {"optim.warmup_steps": 0, "train.batch_size": 4,
                                                  "model.n_layer": 1}
    with pytest.raises(UserError, match="optim.lr is a continuous loguniform"):
        grid_points(space)


BAD = [
    ("optim.lrr: {type: loguniform, low: 1e-4, high: 1e-2}\n", [], "unknown config key optim.lrr; did you mean optim.lr?"),
    ("optim.lr: {type: choice, values: []}\n", [], "optim.lr: choice needs a non-empty list of values"),
    ("optim.lr: {type: uniform, low: 0.1, high: 0.01}\n", [], "optim.lr: low (0.1) is greater than high (0.01)"),
    ("optim.lr: {type: loguniform, low: 0, high: 0.01}\n", [], "optim.lr: loguniform needs low > 0"),
    ("optim.lr: {type: unifrom, low: 0, high: 0.01}\n", [], "unknown type 'unifrom'; did you mean uniform?"),
    ("optim.lr: [1.0e-3\n", [], "is not valid YAML"),
    ("- optim.lr\n- train.batch_size\n", [], "must be a YAML mapping of dotted config fields"),
    ("model.n_layer: {type: int, low: 1, high: 2.5}\n", [], "model.n_layer: int takes integer low/high/step"),
    ("optim.schedule: [cosine, cosin]\n", [], "optim.schedule must be one of cosine, linear, constant, wsd, got 'cosin'"),
    ("optim.lr: {type: uniform, low: 1.0e-4, high: 1.0e-2}\n", ["--sampler", "grid"],
     "--sampler grid needs choices or integer ranges; optim.lr is a continuous uniform"),
    ("optim.lr: [1.0e-3]\n", ["--trials", "0"], "--trials must be at least 1, got 0"),
    ("optim.lr: [1.0e-3]\n", ["--data", "/nonexistent/corpus"], "data not found: /nonexistent/corpus"),
]


@pytest.mark.parametrize("space_text,extra,needle", BAD, ids=[n.split(";")[0][:40] for _, _, n in BAD])
def test_bad_input_is_one_error_line_and_creates_nothing(prepared_dir, tmp_path, capsys, space_text, extra, needle):
    base, space, out = write_base(tmp_path, prepared_dir), write_space(tmp_path, space_text), tmp_path / "out"
    capsys.readouterr()
    assert main(sweep_args(base, space, out, *extra)) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and needle in last, err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not out.exists()


def test_space_that_is_not_text_and_missing_out(prepared_dir, tmp_path, capsys):
    base, space = write_base(tmp_path, prepared_dir), tmp_path / "space.bin"
    space.write_bytes(b"\x00\x01\xff\xfe")
    assert main(sweep_args(base, space, tmp_path / "out")) == 2
    assert capsys.readouterr().err == f"error: {space} is not a text file; --space takes a YAML file\n"
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--config", str(base), "--space", str(space)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required: --out" in err
    assert not (tmp_path / "out").exists()
