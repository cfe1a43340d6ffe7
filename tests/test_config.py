from pathlib import Path

import pytest
import torch

from gpt2kit.cli import main
from gpt2kit.config import PRESETS_DIR, build_config, load_yaml, parse_overrides, reference_markdown
from gpt2kit.errors import UserError
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.train import get_lr, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_then_overrides_command_line_wins(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 3e-4, schedule: linear}\nmodel: {n_layer: 3}\n")
    cfg = build_config(load_yaml(f), parse_overrides(["--optim.lr", "1e-3", "--model.n_layer=6",
                                                       "--data.include", "*.py,*.txt"]))
    assert cfg.optim.lr == 1e-3 and cfg.optim.schedule == "linear"
    assert cfg.model.n_layer == 6 and cfg.data.include == ["*.py", "*.txt"]
    assert cfg.train.max_steps is None and cfg.train.epochs is None  # defaults kept (1000 steps)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"optim.lrr": "1"}, "unknown config key optim.lrr; did you mean optim.lr?"),
        ({"train.max_steps": "ten"}, "train.max_steps expects an integer, got 'ten'"),
        ({"optim.lr": "-1"}, "optim.lr must be > 0.0"),
        ({"train.precision": "fp8"}, "train.precision must be one of auto, bf16, fp16, fp32"),
        ({"train.compile": "maybe"}, "train.compile expects true or false"),
        ({"nosection.x": "1"}, "unknown config key nosection.x"),
        ({"optim.lr": "nan"}, "optim.lr must be a finite number"),
        ({"train.max_minutes": "inf"}, "train.max_minutes must be a finite number"),
        ({"train.max_steps": "1e400"}, "train.max_steps expects an integer"),
    ],
)
def test_bad_values_are_user_errors(overrides, needle):
    with pytest.raises(UserError) as e:
        build_config(None, overrides)
    assert needle in str(e.value)


def test_cli_bad_config_is_one_error_line(capsys, tmp_path):
    rc = main(["train", "--out", str(tmp_path / "r"), "--data", "x", "--optim.lr", "-3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: optim.lr must be > 0.0")
    assert not (tmp_path / "r").exists()  # nothing written


@pytest.mark.parametrize("path", sorted(PRESETS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_loads_and_builds(path, capsys):
    assert main(["train", "--config", str(path), "--out", "unused", "--print-config"]) == 0
    cfg = build_config(load_yaml(path))
    with torch.device("meta"):
        GPT(GPTConfig.from_preset(cfg.model.preset, **{"vocab_size": 50257, **cfg.model.overrides()}))


def test_train_help_is_reachable(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0 and "--optim.lr" in capsys.readouterr().out


def test_config_reference_is_up_to_date():
    doc = ROOT / "docs" / "CONFIG.md"
    assert doc.read_text() == reference_markdown(), "run: python -m gpt2kit.config > docs/CONFIG.md"


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = build_config(None, {"optim.lr": "1.0", "optim.min_lr": "0.1", "optim.warmup_steps": "10"}).optim
    assert get_lr(1, cfg, 110) == pytest.approx(0.1)
    assert get_lr(10, cfg, 110) == pytest.approx(1.0)
    assert get_lr(60, cfg, 110) == pytest.approx(0.55)  # halfway through the cosine
    assert get_lr(110, cfg, 110) == pytest.approx(0.1)
    lin = build_config(None, {"optim.lr": "1.0", "optim.min_lr": "0", "optim.warmup_steps": "0",
                              "optim.schedule": "linear"}).optim
    assert get_lr(50, lin, 100) == pytest.approx(0.5)


def test_weight_decay_only_on_matrices():
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64))
    opt = make_optimizer(model, build_config().optim, "cpu")
    decay, no_decay = opt.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"][2:])
    ids = {id(p) for p in no_decay["params"]}
    assert id(model.transformer.wte.weight) in ids and id(model.transformer.wpe.weight) in ids
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())  # tied weight counted once


def test_presets_by_name_and_listed(capsys, tmp_path):
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("debug", "cpu-small", "speedrun-cpu", "gpt2-pretrain", "gpt2-finetune"))
    for spelling in ("debug", "debug.yaml", "configs/debug.yaml"):  # from any directory
        assert load_yaml(spelling) == load_yaml(PRESETS_DIR / "debug.yaml")
    assert main(["configs", "debug"]) == 0 and "preset: tiny" in capsys.readouterr().out
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    for bad, needle in ((str(tmp_path / "nope.yaml"), "config file not found"), (str(binary), "not a text file")):
        rc = main(["train", "--config", bad, "--out", str(tmp_path / "r"), "--data", "x"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize("habit, want", [
    ("--learning_rate", "--optim.lr"), ("--per_device_train_batch_size", "--train.batch_size"),
    ("--gradient_accumulation_steps", "--train.grad_accum"), ("--num_train_epochs", "--train.epochs"),
    ("--output_dir", "--out"), ("--optim.learning_rate", "--optim.lr"), ("--max_iters", "--train.max_steps"),
])
def test_trainer_and_litgpt_habits_get_the_gpt2kit_name(habit, want, capsys, tmp_path):
    rc = main(["train", "--data", "x", "--out", str(tmp_path / "r"), habit, "3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"gpt2kit calls it {want}" in err, err


def test_train_help_lists_every_field(capsys):
    from gpt2kit.config import all_keys

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    assert all(f"--{k} " in out for k in all_keys())
