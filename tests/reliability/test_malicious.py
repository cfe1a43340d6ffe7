"""Malicious files (issue 11, section 3.5): a pickle whose `__reduce__` would create a marker file, planted as
`pytorch_model.bin`, as a checkpoint's `optimizer.pt` (its checksum updated, so only the loader stands in the
way) or as a tokenizer file, never runs - through every command that loads it. The RNG states and loader
position are JSON (state.json): no pickle path exists for them."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from gpt2kit.cli import main
from gpt2kit.config import build_config

TINY = {
    "model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32", "optim.warmup_steps": "1",
    "train.batch_size": "4", "train.max_steps": "4", "train.eval_batches": "2", "train.eval_every": "0",
    "train.ckpt_every": "2", "train.precision": "fp32", "train.report_to": "",
}


class Payload:
    """Unpickling it opens (creates) `marker`: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def run(prepared_dir, tmp_path_factory) -> Path:
    from gpt2kit.train import train

    out = tmp_path_factory.mktemp("malicious") / "run"
    train(build_config(None, {**TINY, "data.sources": str(prepared_dir)}), out, quiet=True)
    return out


def _exit(args: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.fixture
def hf_dir_with_pickle(run, tmp_path) -> tuple[Path, Path]:
    """A Hugging Face GPT-2 directory (exported from the run) whose weights are a pickle payload."""
    d = tmp_path / "hf"
    assert main(["export", "--model", str(run), "--out", str(d)]) == 0
    (d / "model.safetensors").unlink()
    marker = tmp_path / "PWNED-bin"
    torch.save({"transformer.wte.weight": Payload(marker)}, d / "pytorch_model.bin")
    return d, marker


def test_a_pickle_as_pytorch_model_bin_never_runs(hf_dir_with_pickle, prepared_dir, tmp_path, capsys):
    d, marker = hf_dir_with_pickle
    for args in (["generate", "--model", str(d), "--prompt", "x", "--max-new-tokens", "2"],
                 ["eval", "--model", str(d), "--data", str(prepared_dir)],
                 ["export", "--model", str(d), "--out", str(tmp_path / "again")],
                 ["predict", "--model", str(d), "--text", "x"],
                 ["train", "--init", str(d), "--data", str(prepared_dir), "--out", str(tmp_path / "ft"),
                  *[a for k, v in TINY.items() if not k.startswith("model.") for a in (f"--{k}", v)]]):
        rc, err = _exit(args, capsys)
        assert rc == 2 and "Traceback" not in err, (args[0], err[-2000:])
        assert not marker.exists(), args[0]
    assert not (tmp_path / "again").exists() and not (tmp_path / "ft").exists()


def test_a_pickle_as_optimizer_state_never_runs(run, prepared_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "PWNED-opt"
    for ckpt in sorted((copy / "checkpoints").glob("step-*")):  # every checkpoint: no clean one to fall back to
        torch.save({"optimizer": Payload(marker)}, ckpt / "optimizer.pt")
        manifest = json.loads((ckpt / "MANIFEST.json").read_text())
        manifest["optimizer.pt"] = hashlib.sha256((ckpt / "optimizer.pt").read_bytes()).hexdigest()
        (ckpt / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    flags = ["train", "--data", str(prepared_dir), "--out", str(copy),
             *[a for k, v in {**TINY, "train.max_steps": "6"}.items() for a in (f"--{k}", v)]]
    for resume in ("auto", str(copy / "checkpoints" / "step-00000004")):
        rc, err = _exit([*flags, "--resume", resume], capsys)
        assert rc == 2 and "Traceback" not in err, err[-2000:]
        assert "optimizer.pt" in err
        assert not marker.exists()


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
def test_a_pickle_in_a_tokenizer_dir_never_runs(prepared_dir, tmp_path, capsys, name):
    d = tmp_path / "tok"
    shutil.copytree(prepared_dir, d, ignore=shutil.ignore_patterns("*.bin", "meta.json"))
    marker = tmp_path / "PWNED-tok"
    (d / name).write_bytes(pickle.dumps(Payload(marker)))
    (d / "tokenizer.pkl").write_bytes(pickle.dumps(Payload(marker)))  # a slow tokenizer's pickle, beside it
    for args in (["tokenizer", "info", "--tokenizer", str(d)], ["tokenizer", "encode", "x", "--tokenizer", str(d)],
                 ["prepare", "--data", str(prepared_dir / "tokenizer.json"), "--tokenizer", str(d), "--out",
                  str(tmp_path / "p")]):
        rc, err = _exit(args, capsys)
        assert "Traceback" not in err and rc in (0, 2), err[-2000:]
        if name == "tokenizer.json":
            assert rc == 2
        assert not marker.exists()
