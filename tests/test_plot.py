"""plot: reads metrics.jsonl of one or several runs and writes a PNG with the curves."""

from __future__ import annotations

import json
import math

import pytest

from gpt2kit.cli import main
from gpt2kit.plot import ema, read_metrics, series


def make_run(path, steps=30, scale=1.0):
    path.mkdir(parents=True)
    rows = []
    for s in range(1, steps + 1):
        rows.append({"step": s, "tokens": s * 1024, "loss": scale * (4 + math.exp(-s / 10)), "lr": 3e-4 * min(1, s / 5),
                     "grad_norm": 1.0, "tok_s": 1e4, "mfu": 0.1, "time": s})
        if s % 10 == 0:
            rows.append({"step": s, "val_loss": scale * (4.2 + math.exp(-s / 10)), "val_ppl": 70.0, "val_bpb": 1.5})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (path / "metrics.jsonl").write_text(text + '{"step": 31, "lo')  # a torn last line, as while training
    return path


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_series_reads_train_and_eval_rows(tmp_path):
    rows = read_metrics(make_run(tmp_path / "a"))
    xs, ys = series(rows, "val_loss")
    assert xs == [10, 20, 30] and ys[0] == pytest.approx(4.2 + math.exp(-1))
    assert len(series(rows, "loss")[0]) == 30
    assert series(rows, "lr", x="tokens")[0][:2] == [1024, 2048]
    assert series(rows, "val_loss", x="tokens")[0] == [10240, 20480, 30720]  # eval rows: tokens of their step


def test_ema_is_bias_corrected():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_cli_plot_one_run_defaults_to_run_loss_png(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    assert is_png(run / "loss.png")
    assert "loss.png" in capsys.readouterr().err


def test_cli_plot_several_runs(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", scale=1.1)
    out = tmp_path / "cmp" / "both.png"
    assert main(["plot", str(a), str(b), "--out", str(out), "--x", "tokens", "--log-y", "--smooth", "0.6"]) == 0
    assert is_png(out) and out.stat().st_size > 10_000


@pytest.mark.parametrize("argv", [["{missing}"], ["{run}", "--smooth", "1.5"], ["{run}", "--label", "a", "--label", "b"]])
def test_cli_plot_user_errors(tmp_path, argv, capsys):
    run = make_run(tmp_path / "run")
    argv = [a.format(run=run, missing=tmp_path / "nope") for a in argv]
    rc = main(["plot", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
