"""The bad-input matrix (issue 11, section 3.11): one table of (command, arguments, words the error must hold)
across every command. Each case runs `gpt2kit.cli.main` in-process and must exit 2 with exactly one `error:`
line on stderr and no traceback, leave every directory it was given as it was (sha256 of every file, before
and after), and create nothing at its --out. tests/test_badinput.py holds the deeper single cases (sizes that
cannot fit, damaged weights and prepared data, NUL bytes, disk full)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import tree

from gpt2kit.cli import main
from gpt2kit.config import build_config

TINY = {
    "model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32", "optim.warmup_steps": "1",
    "train.batch_size": "4", "train.max_steps": "2", "train.eval_batches": "2", "train.eval_every": "0",
    "train.ckpt_every": "0", "train.precision": "fp32", "train.report_to": "",
}
TINY_ARGS = [a for k, v in TINY.items() for a in (f"--{k}", v)]
FT_ARGS = [a for k, v in TINY.items() if not k.startswith("model.") for a in (f"--{k}", v)]


@dataclass
class Ctx:
    """Everything a case may point at (all hashed before and after every case)."""

    data: Path  # a prepared directory
    corpus: Path  # a folder of .py files
    run: Path  # a finished tiny run
    bad: Path  # a folder of bad files: tokenizers, configs, spaces, ...
    out: Path  # a fresh path per case: nothing may appear there

    def given(self) -> list[Path]:
        return [self.data, self.corpus, self.run, self.bad]




def _tokenizer_variants(bad: Path, tokenizer_json: str) -> None:
    spec = json.loads(tokenizer_json)
    absurd = json.loads(tokenizer_json)
    absurd["model"]["vocab"]["zz"] = 2**32 - 2  # `tokenizers` sized tables by it: minutes, GBs, or exit 134
    (bad / "absurd").mkdir()
    (bad / "absurd" / "tokenizer.json").write_text(json.dumps(absurd))
    regex = json.loads(tokenizer_json)
    regex["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(a|aa)+$"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (bad / "regex.json").write_text(json.dumps(regex))
    no_eos = json.loads(tokenizer_json)
    no_eos["added_tokens"] = []
    no_eos["model"]["vocab"] = {k: v for k, v in spec["model"]["vocab"].items() if not k.startswith("<|")}
    (bad / "no_eos.json").write_text(json.dumps(no_eos))
    (bad / "not_a_tokenizer.json").write_text('{"hello": "world"}')


@pytest.fixture(scope="module")
def ctx_base(prepared_dir, corpus_dir, tmp_path_factory):
    from gpt2kit.train import train

    root = tmp_path_factory.mktemp("matrix")
    run = root / "run"
    train(build_config(None, {**TINY, "data.sources": str(prepared_dir)}), run, quiet=True)
    bad = root / "bad"
    bad.mkdir()
    _tokenizer_variants(bad, (prepared_dir / "tokenizer.json").read_text())
    (bad / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (bad / "list.yaml").write_text("- 1\n- 2\n")
    (bad / "unknown.yaml").write_text("model:\n  n_layers: 4\n")
    (bad / "tabs.yaml").write_text("model:\n\tn_layer: 2\n")
    (bad / "space.yaml").write_text("optim.lr: {low: 1e-4}\n")
    (bad / "space_unknown.yaml").write_text("optim.lrr: {low: 1e-4, high: 1e-3, log: true}\n")
    (bad / "empty").mkdir()
    (bad / "notes.txt").write_text("just some notes\n")
    (bad / "user_dir").mkdir()
    (bad / "user_dir" / "main.py").write_text("print('mine')\n")
    (bad / "empty.txt").write_text("")
    (bad / "labels.csv").write_text("text,label\nhello,a\nworld,b\n")
    return prepared_dir, corpus_dir, run, bad


@pytest.fixture
def ctx(ctx_base, tmp_path) -> Ctx:
    return Ctx(*ctx_base, out=tmp_path / "out")


def train_(c: Ctx, *extra: str) -> list[str]:
    return ["train", "--data", str(c.data), "--out", str(c.out), *TINY_ARGS, *extra]


def finetune_(c: Ctx, *extra: str) -> list[str]:
    return ["finetune", "--init", str(c.run), "--out", str(c.out), *FT_ARGS, *extra]


Case = tuple[str, Callable[[Ctx], list[str]], list[str]]
CASES: list[Case] = [
    # ---- train: the config
    ("train-data-missing", lambda c: ["train", "--data", str(c.bad / "nope"), "--out", str(c.out), *TINY_ARGS],
     ["not found", "nope"]),
    ("train-n_layer-0", lambda c: train_(c, "--model.n_layer", "0"), ["n_layer"]),
    ("train-lr-negative", lambda c: train_(c, "--optim.lr", "-1"), ["optim.lr"]),
    ("train-heads-do-not-divide", lambda c: train_(c, "--model.n_head", "3"), ["n_head", "n_embd"]),
    ("train-precision-fp8", lambda c: train_(c, "--train.precision", "fp8"), ["precision", "fp8"]),
    ("train-unknown-field", lambda c: train_(c, "--model.n_layers", "2"), ["n_layers", "n_layer"]),
    ("train-not-a-number", lambda c: train_(c, "--train.max_steps", "many"), ["max_steps", "many"]),
    ("train-value-missing", lambda c: train_(c, "--optim.lr"), ["optim.lr"]),
    ("train-epochs-and-steps", lambda c: train_(c, "--train.epochs", "2", "--train.max_steps", "5"),
     ["epochs", "max_steps"]),
    ("train-val-fraction", lambda c: ["train", "--data", str(c.corpus), "--out", str(c.out), "--tokenizer",
                                      str(c.data), "--data.val_fraction", "1.5", *TINY_ARGS], ["val_fraction"]),
    ("train-config-binary", lambda c: train_(c, "--config", str(c.bad / "binary.yaml")), ["binary.yaml"]),
    ("train-config-list", lambda c: train_(c, "--config", str(c.bad / "list.yaml")), ["list.yaml"]),
    ("train-config-unknown-key", lambda c: train_(c, "--config", str(c.bad / "unknown.yaml")), ["n_layers"]),
    ("train-config-tabs", lambda c: train_(c, "--config", str(c.bad / "tabs.yaml")), ["tabs.yaml"]),
    ("train-config-missing", lambda c: train_(c, "--config", str(c.bad / "nope.yaml")), ["nope"]),
    ("train-resume-missing", lambda c: train_(c, "--resume", str(c.bad / "nope")), ["nope"]),
    ("train-init-not-a-model", lambda c: train_(c, "--init", str(c.bad / "empty")), ["empty"]),
    ("train-tokenizer-mismatch", lambda c: train_(c, "--tokenizer", "gpt2"), ["different tokenizer"]),
    ("train-tokenizer-absurd-id", lambda c: ["train", "--data", str(c.corpus), "--out", str(c.out), "--tokenizer",
                                             str(c.bad / "absurd"), *TINY_ARGS], ["token id", "4,294,967,294"]),
    ("train-tokenizer-regex", lambda c: ["train", "--data", str(c.corpus), "--out", str(c.out), "--tokenizer",
                                         str(c.bad / "regex.json"), *TINY_ARGS], ["regex"]),
    ("train-out-is-a-file", lambda c: ["train", "--data", str(c.data), "--out", str(c.bad / "notes.txt"),
                                       *TINY_ARGS], ["notes.txt"]),
    ("train-out-is-a-user-dir", lambda c: ["train", "--data", str(c.data), "--out", str(c.bad / "user_dir"),
                                           "--resume", "auto", *TINY_ARGS], ["user_dir"]),
    ("train-resume-not-a-run", lambda c: ["train", "--data", str(c.data), "--out", str(c.bad / "user_dir"),
                                          "--overwrite", *TINY_ARGS], ["user_dir"]),
    ("train-no-documents", lambda c: ["train", "--data", str(c.bad / "empty"), "--tokenizer", str(c.data),
                                      "--out", str(c.out), *TINY_ARGS], ["no documents"]),
    # ---- finetune
    ("finetune-mode", lambda c: finetune_(c, "--data", str(c.corpus), "--finetune.mode", "partial"), ["mode"]),
    ("finetune-classify-no-labels", lambda c: finetune_(c, "--data", str(c.corpus), "--task", "classify"),
     ["label"]),
    ("finetune-label-column", lambda c: finetune_(c, "--data", str(c.bad / "labels.csv"), "--task", "classify",
                                                  "--data.label_column", "category"), ["category"]),
    ("finetune-init-missing", lambda c: ["finetune", "--init", str(c.bad / "nope"), "--data", str(c.corpus),
                                         "--out", str(c.out)], ["nope"]),
    # ---- prepare
    ("prepare-data-missing", lambda c: ["prepare", "--data", str(c.bad / "nope.txt"), "--tokenizer", str(c.data),
                                        "--out", str(c.out)], ["not found"]),
    ("prepare-val-fraction", lambda c: ["prepare", "--data", str(c.corpus), "--tokenizer", str(c.data), "--out",
                                        str(c.out), "--val-fraction", "2"], ["--val-fraction"]),
    ("prepare-shard-tokens", lambda c: ["prepare", "--data", str(c.corpus), "--tokenizer", str(c.data), "--out",
                                        str(c.out), "--shard-tokens", "0"], ["shard_tokens"]),
    ("prepare-tokenizer-absurd-id", lambda c: ["prepare", "--data", str(c.corpus), "--tokenizer",
                                               str(c.bad / "absurd" / "tokenizer.json"), "--out", str(c.out)],
     ["token id", "tokenizer.json"]),
    ("prepare-tokenizer-regex", lambda c: ["prepare", "--data", str(c.corpus), "--tokenizer",
                                           str(c.bad / "regex.json"), "--out", str(c.out)], ["regex"]),
    ("prepare-tokenizer-no-eos", lambda c: ["prepare", "--data", str(c.corpus), "--tokenizer",
                                            str(c.bad / "no_eos.json"), "--out", str(c.out)], ["end-of-text"]),
    ("prepare-tokenizer-not-one", lambda c: ["prepare", "--data", str(c.corpus), "--tokenizer",
                                             str(c.bad / "not_a_tokenizer.json"), "--out", str(c.out)],
     ["not_a_tokenizer.json"]),
    ("prepare-tokenizer-missing", lambda c: ["prepare", "--data", str(c.corpus), "--tokenizer",
                                             str(c.bad / "nope.json"), "--out", str(c.out)], ["nope.json"]),
    ("prepare-out-user-dir", lambda c: ["prepare", "--data", str(c.corpus), "--tokenizer", str(c.data), "--out",
                                        str(c.bad / "user_dir")], ["user_dir", "not a prepared"]),
    ("prepare-empty-corpus", lambda c: ["prepare", "--data", str(c.bad / "empty"), "--tokenizer", str(c.data),
                                        "--out", str(c.out)], ["no documents"]),
    ("prepare-sample-by", lambda c: ["prepare", "--data", str(c.corpus), "--out", str(c.out), "--sample-by",
                                     "sentence"], ["sample-by"]),
    # ---- tokenizer
    ("tokenizer-train-vocab", lambda c: ["tokenizer", "train", "--data", str(c.corpus), "--vocab-size", "10",
                                         "--out", str(c.out)], ["--vocab-size", "259"]),
    ("tokenizer-train-heldout", lambda c: ["tokenizer", "train", "--data", str(c.corpus), "--vocab-size", "300",
                                           "--heldout-fraction", "1.5", "--out", str(c.out)], ["heldout"]),
    ("tokenizer-train-empty", lambda c: ["tokenizer", "train", "--data", str(c.bad / "empty.txt"), "--vocab-size",
                                         "300", "--out", str(c.out)], ["no documents"]),
    ("tokenizer-save-absurd", lambda c: ["tokenizer", "save", str(c.bad / "absurd"), "--out", str(c.out)],
     ["token id"]),
    ("tokenizer-save-missing", lambda c: ["tokenizer", "save", str(c.bad / "nope.json"), "--out", str(c.out)],
     ["nope.json"]),
    ("tokenizer-encode-regex", lambda c: ["tokenizer", "encode", "aaaa", "--tokenizer", str(c.bad / "regex.json")],
     ["regex"]),
    # ---- generate
    ("generate-model-missing", lambda c: ["generate", "--model", str(c.bad / "nope"), "--prompt", "x"], ["nope"]),
    ("generate-model-not-one", lambda c: ["generate", "--model", str(c.bad / "user_dir"), "--prompt", "x"],
     ["user_dir"]),
    ("generate-max-new-tokens", lambda c: ["generate", "--model", str(c.run), "--prompt", "x", "--max-new-tokens",
                                           "-1"], ["--max-new-tokens"]),
    ("generate-temperature", lambda c: ["generate", "--model", str(c.run), "--prompt", "x", "--temperature", "-1"],
     ["--temperature"]),
    ("generate-top-p", lambda c: ["generate", "--model", str(c.run), "--prompt", "x", "--top-p", "2"], ["--top-p"]),
    ("generate-top-k", lambda c: ["generate", "--model", str(c.run), "--prompt", "x", "--top-k", "0"], ["--top-k"]),
    ("generate-prompt-file", lambda c: ["generate", "--model", str(c.run), "--prompt-file", str(c.bad / "nope.txt")],
     ["nope.txt"]),
    ("generate-tokenizer-absurd", lambda c: ["generate", "--model", str(c.run), "--prompt", "x", "--tokenizer",
                                             str(c.bad / "absurd")], ["token id"]),
    # ---- eval
    ("eval-nothing-to-do", lambda c: ["eval", "--model", str(c.run)], ["--data", "--humaneval"]),
    ("eval-data-missing", lambda c: ["eval", "--model", str(c.run), "--data", str(c.bad / "nope")], ["nope"]),
    ("eval-k", lambda c: ["eval", "--model", str(c.run), "--humaneval", "--k", "0,x"], ["--k"]),
    ("eval-split", lambda c: ["eval", "--model", str(c.run), "--data", str(c.data), "--split", "test"], ["test"]),
    # ---- export
    ("export-model-missing", lambda c: ["export", "--model", str(c.bad / "nope"), "--out", str(c.out)], ["nope"]),
    ("export-into-user-dir", lambda c: ["export", "--model", str(c.run), "--out", str(c.bad / "user_dir")],
     ["user_dir", "--overwrite"]),
    ("export-prepared-dir", lambda c: ["export", "--model", str(c.data), "--out", str(c.out)], ["not a GPT-2 checkpoint"]),
    # ---- predict
    ("predict-language-model", lambda c: ["predict", "--model", str(c.run), "--text", "x"], ["classif"]),
    ("predict-model-missing", lambda c: ["predict", "--model", str(c.bad / "nope"), "--text", "x"], ["nope"]),
    # ---- plot
    ("plot-run-missing", lambda c: ["plot", str(c.bad / "nope")], ["nope"]),
    ("plot-not-a-run", lambda c: ["plot", str(c.corpus), "--out", str(c.out) + ".png"], ["metrics"]),
    ("plot-smooth", lambda c: ["plot", str(c.run), "--smooth", "2", "--out", str(c.out) + ".png"], ["--smooth"]),
    # ---- sweep
    ("sweep-space-missing", lambda c: ["sweep", "--space", str(c.bad / "nope.yaml"), "--data", str(c.data),
                                       "--out", str(c.out)], ["nope.yaml"]),
    ("sweep-space-no-kind", lambda c: ["sweep", "--space", str(c.bad / "space.yaml"), "--data", str(c.data),
                                       "--out", str(c.out)], ["optim.lr"]),
    ("sweep-space-unknown", lambda c: ["sweep", "--space", str(c.bad / "space_unknown.yaml"), "--data",
                                       str(c.data), "--out", str(c.out)], ["optim.lrr"]),
    ("sweep-trials", lambda c: ["sweep", "--space", str(c.bad / "space_unknown.yaml"), "--data", str(c.data),
                                "--out", str(c.out), "--trials", "0"], ["--trials"]),
    # ---- serve (argument checks only: nothing listens)
    ("serve-model-missing", lambda c: ["serve", "--model", str(c.bad / "nope")], ["nope"]),
    ("serve-port", lambda c: ["serve", "--model", str(c.run), "--port", "70000"], ["--port"]),
    ("serve-max-batch", lambda c: ["serve", "--model", str(c.run), "--max-batch", "0"], ["--max-batch"]),
    ("serve-timeout", lambda c: ["serve", "--model", str(c.run), "--timeout", "-5"], ["--timeout"]),
    # ---- info, configs, the command line itself
    ("info-missing", lambda c: ["info", str(c.bad / "nope")], ["nope"]),
    ("info-preset", lambda c: ["info", "--preset", "gpt5"], ["gpt5"]),
    ("info-not-a-model", lambda c: ["info", str(c.bad / "user_dir")], ["user_dir"]),
    ("configs-unknown", lambda c: ["configs", "gpt5-ultra"], ["gpt5-ultra"]),
    ("unknown-flag", lambda c: ["generate", "--model", str(c.run), "--prompt", "x", "--temprature", "1"],
     ["--temprature"]),
    ("unknown-command", lambda c: ["trian"], ["trian"]),
]


def test_the_matrix_is_large_and_covers_every_command():
    commands = {args[0] for _, build, _ in CASES
                for args in [build(Ctx(*(Path("/x"),) * 5))]}
    assert len(CASES) >= 40
    assert {"train", "finetune", "prepare", "tokenizer", "generate", "eval", "export", "predict", "plot", "sweep",
            "serve", "info", "configs"} <= commands
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("build, words", [pytest.param(b, w, id=n) for n, b, w in CASES])
def test_bad_input(ctx: Ctx, capsys, monkeypatch, build, words):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("serve started a server on bad input"))
    args = build(ctx)
    before = {p: tree(p) for p in ctx.given()}
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc}: {err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    for p, hashes in before.items():
        assert tree(p) == hashes, f"{p} changed"
    assert not ctx.out.exists() and not Path(str(ctx.out) + ".png").exists()
    shutil.rmtree(ctx.out, ignore_errors=True)
