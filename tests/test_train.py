import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt2kit.cli import main
from gpt2kit.config import build_config
from gpt2kit.train import train

TINY = {
    "model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32",
    "optim.lr": "3e-3", "optim.warmup_steps": "2",
    "train.batch_size": "4", "train.max_steps": "6", "train.eval_every": "0", "train.eval_batches": "2",
    "train.ckpt_every": "0", "train.log_every": "1", "train.precision": "fp32",
}


def cfg(prepared_dir, **over):
    flat = {**TINY, "data.sources": str(prepared_dir), **{k.replace("__", "."): str(v) for k, v in over.items()}}
    return build_config(None, flat)


def weights(run: Path) -> dict:
    ckpt = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(run / "checkpoints" / ckpt / "model.safetensors")


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_loss_falls_and_run_dir_is_complete(prepared_dir, tmp_path):
    run = tmp_path / "run"
    res = train(cfg(prepared_dir, train__max_steps=40, train__eval_every=20, train__ckpt_every=20, optim__lr=1e-2),
                run, quiet=True)
    curve = losses(run)
    assert curve[40] < curve[1] - 0.5, curve  # starts at ln(512) = 6.24: uniform
    assert res.best_val_loss is not None and res.best_val_loss < 5.8
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_row = next(r for r in rows if "loss" in r)
    assert set(train_row) == {"step", "tokens", "loss", "lr", "grad_norm", "tok_s", "mfu", "time"}
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val_rows] == [20, 40]
    assert val_rows[-1]["val_ppl"] == pytest.approx(math.exp(val_rows[-1]["val_loss"]))
    assert 0 < val_rows[-1]["val_bpb"] < val_rows[-1]["val_loss"] / math.log(2)  # > 1 byte per token
    for name in ("config.yaml", "tokenizer/tokenizer.json", "loss.png", "checkpoints/latest", "checkpoints/best"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").iterdir())
    ckpt = run / "checkpoints" / "step-00000040"
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "config.json", "state.json", "optimizer.pt",
                                                 "MANIFEST.json", "COMPLETE", "tokenizer"}


def test_accumulation_equals_one_big_batch(prepared_dir, tmp_path):
    train(cfg(prepared_dir, train__batch_size=8, train__grad_accum=1, train__max_steps=3), tmp_path / "a", quiet=True)
    train(cfg(prepared_dir, train__batch_size=2, train__grad_accum=4, train__max_steps=3), tmp_path / "b", quiet=True)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    # fp32 sums in another order differ by rounding (~1e-7 a step), which Adam's normalised update can grow to
    # ~1e-6 by step 3 (measured: 4e-8, 2e-7, 1e-6 after steps 1-3); a real accumulation bug is >1e-3
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), abs=1e-6)


def test_same_seed_same_run_other_seed_differs(prepared_dir, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(cfg(prepared_dir, train__seed=seed, model__dropout=0.1, train__max_steps=3), tmp_path / name, quiet=True)
    a, b, c = (weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_in_process_is_bitwise_equal(prepared_dir, tmp_path):
    over = dict(train__max_steps=8, train__ckpt_every=3, model__dropout=0.1, train__keep_last=5)
    train(cfg(prepared_dir, **over), tmp_path / "full", quiet=True)
    # the same run again, then continued from its (older) step-3 checkpoint: the newer ones are set aside
    part = tmp_path / "part"
    train(cfg(prepared_dir, **over), part, quiet=True)
    res = train(cfg(prepared_dir, **over), part, resume=str(part / "checkpoints" / "step-00000003"), quiet=True)
    assert res.step == 8
    a, b = weights(tmp_path / "full"), weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "full") == losses(part)  # per-step losses, exactly
    root = part / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-00000008"
    aside = [d for d in root.iterdir() if d.name.startswith("abandoned-after-00000003")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["step-00000006", "step-00000008"]
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000003", "step-00000006", "step-00000008"]


def test_best_is_the_best_evaluated_checkpoint(prepared_dir, tmp_path):
    run = tmp_path / "run"
    # a LR so high that the loss gets worse after a while: best must stay on an early checkpoint
    train(cfg(prepared_dir, train__max_steps=9, train__eval_every=1, train__ckpt_every=3, optim__lr=0.3,
              optim__warmup_steps=0, optim__grad_clip=0, train__keep_last=1), run, quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    saved = {s: val[s] for s in (3, 6, 9)}
    best = (run / "checkpoints" / "best").read_text().strip()
    assert best == f"step-{min(saved, key=saved.get):08d}"
    assert (run / "checkpoints" / best / "COMPLETE").exists()  # kept despite keep_last=1
    state = json.loads((run / "checkpoints" / best / "state.json").read_text())
    assert state["best_ckpt_val_loss"] == pytest.approx(min(saved.values()))


def test_resume_refuses_a_changed_architecture(prepared_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_flags(prepared_dir, run, train__max_steps=2, train__ckpt_every=1)) == 0
    capsys.readouterr()
    assert main(_flags(prepared_dir, run, train__max_steps=4, model__n_layer=3) + ["--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.n_layer is 3 but the checkpoint being resumed has 2" in err


def test_compiled_model_checkpoints_under_plain_names(tmp_path):
    from accelerate import Accelerator

    from gpt2kit import GPT, GPTConfig
    from gpt2kit.checkpoint import load_model, save_checkpoint
    from gpt2kit.train import full_state_dict

    raw = GPT(GPTConfig.from_preset("tiny", vocab_size=64))
    acc = Accelerator(cpu=True)
    sd = full_state_dict(acc, acc.prepare(torch.compile(raw)))
    assert set(sd) == set(raw.state_dict())
    save_checkpoint(tmp_path / "checkpoints", 1, raw, {"step": 1}, state_dict=sd)
    again = load_model(str(tmp_path))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in raw.state_dict().items())


def _cli(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "gpt2kit", *args], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, **kw)


def _flags(prepared_dir, out, **over):
    flat = {**TINY, **{k.replace("__", "."): str(v) for k, v in over.items()}}
    args = ["train", "--data", str(prepared_dir), "--out", str(out)]
    for k, v in flat.items():
        args += [f"--{k}", v]
    return args


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_interrupted_process_resumes_to_the_same_result(prepared_dir, tmp_path, how):
    over = dict(train__max_steps=150, train__ckpt_every=25, train__log_every=1)
    ref = tmp_path / "ref"
    train(cfg(prepared_dir, **over), ref, quiet=True)

    run = tmp_path / "run"
    proc = _cli(_flags(prepared_dir, run, **over))
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step-00000025" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if how == "kill9":
        assert proc.returncode == -9
    else:
        assert proc.returncode == 143, err
        assert "SIGTERM" in err
        saved = (run / "checkpoints" / "latest").read_text().strip()
        assert saved != "step-00000025"  # it saved at the step it was in
        assert json.loads((run / "checkpoints" / saved / "state.json").read_text())["reason"] == "signal"
    assert losses(run)  # it had made progress
    if how == "kill9":
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"step": 77, "lo')  # a line torn by the kill
    assert main(_flags(prepared_dir, run, **over) + ["--resume", "auto"]) == 0
    a, b = weights(ref), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(ref) == losses(run)


def test_two_processes_match_one(prepared_dir, tmp_path):
    over = dict(train__max_steps=4)
    single = tmp_path / "single"
    train(cfg(prepared_dir, train__batch_size=4, **over), single, quiet=True)
    ddp = tmp_path / "ddp"
    args = _flags(prepared_dir, ddp, train__batch_size=2, **over)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "gpt2kit", *args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x2" in r.stderr  # two processes really ran
    a, b = weights(single), weights(ddp)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    assert losses(single) == pytest.approx(losses(ddp), abs=1e-5)


def test_nonfinite_never_reaches_the_weights(prepared_dir, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(_flags(prepared_dir, run, optim__lr="1e20", optim__warmup_steps=0, optim__grad_clip=0,
                     train__ckpt_every=1, train__max_steps=10, train__max_skipped=3))
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: non-finite")
    for ckpt in (run / "checkpoints").glob("step-*"):
        for k, v in load_file(ckpt / "model.safetensors").items():
            assert torch.isfinite(v).all(), (ckpt.name, k)


def test_finetune_from_hf_dir_and_vocab_checks(prepared_dir, small_tokenizer, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    def hf(vocab, n_pos=64):
        d = tmp_path / f"hf{vocab}_{n_pos}"
        GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=n_pos, n_embd=32, n_layer=2, n_head=2)).save_pretrained(d)
        return d

    ok = hf(small_tokenizer.vocab_size)
    run = tmp_path / "ft"
    assert main(_flags(prepared_dir, run, train__max_steps=2) + ["--init", str(ok)]) == 0
    from gpt2kit.checkpoint import load_model

    assert load_model(str(run)).config.block_size == 32  # cropped to the requested context

    small = hf(300)
    assert main(_flags(prepared_dir, tmp_path / "bad", train__max_steps=2) + ["--init", str(small)]) == 2
    assert "resize_embeddings" in capsys.readouterr().err
    assert main(_flags(prepared_dir, tmp_path / "grown", train__max_steps=2, train__resize_embeddings="true")
                + ["--init", str(small)]) == 0
    assert load_model(str(tmp_path / "grown")).config.vocab_size == small_tokenizer.vocab_size

    short = hf(small_tokenizer.vocab_size, n_pos=16)
    capsys.readouterr()
    assert main(_flags(prepared_dir, tmp_path / "long", train__max_steps=2) + ["--init", str(short)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exceeds the --init model's 16 positions" in err


def test_existing_run_dir_is_protected(prepared_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_flags(prepared_dir, run, train__max_steps=2)) == 0
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(_flags(prepared_dir, run, train__max_steps=2)) == 2
    assert "--resume auto" in capsys.readouterr().err
    # --overwrite with a mistake found later in set-up: the old run is untouched
    assert main(_flags(prepared_dir, run, train__max_steps=2, model__n_head=3) + ["--overwrite"]) == 2
    assert "divisible" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before
    assert main(_flags(tmp_path / "nonexistent", run, train__max_steps=2) + ["--overwrite"]) == 2
    assert (run / "metrics.jsonl").read_text() == before
    assert main(_flags(prepared_dir, run, train__max_steps=2) + ["--overwrite"]) == 0
    # --overwrite never deletes a directory that is not a run
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("precious")
    capsys.readouterr()
    assert main(_flags(prepared_dir, notes, train__max_steps=2) + ["--overwrite"]) == 2
    assert "not a gpt2kit run directory" in capsys.readouterr().err
    assert (notes / "thesis.txt").read_text() == "precious"
    # --out is a file
    assert main(_flags(prepared_dir, notes / "thesis.txt", train__max_steps=2)) == 2
    assert "is a file" in capsys.readouterr().err


def test_init_tokenizer_must_match_the_data(prepared_dir, corpus_dir, tmp_path, capsys):
    from gpt2kit.prepare import prepare
    from gpt2kit.tokenizer import train_tokenizer

    other = tmp_path / "other-data"
    prepare([str(corpus_dir)], train_tokenizer([str(corpus_dir)], vocab_size=300), other, val_fraction=0.15,
            progress=False)
    base = tmp_path / "base"
    assert main(_flags(prepared_dir, base, train__max_steps=1)) == 0
    capsys.readouterr()
    assert main(_flags(other, tmp_path / "ft", train__max_steps=1) + ["--init", str(base)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another tokenizer than the --init model's" in err


def test_unprepared_source_is_prepared_on_the_fly(corpus_dir, small_tokenizer, tmp_path):
    tok = tmp_path / "tok"
    small_tokenizer.save(tok)
    run = tmp_path / "run"
    env_cache = {"data.cache_dir": str(tmp_path / "cache")}
    c = build_config(None, {**TINY, "data.sources": str(corpus_dir), "data.tokenizer": str(tok), **env_cache,
                            "train.max_steps": "2", "data.val_fraction": "0.2"})
    train(c, run, quiet=True)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    train(c, tmp_path / "run2", quiet=True)  # reuses the cache
    assert len(list((tmp_path / "cache").iterdir())) == 1
