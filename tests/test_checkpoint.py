import shutil

import pytest
import torch

from gpt2kit import GPT, GPTConfig
from gpt2kit.checkpoint import (
    find_checkpoint,
    load_checkpoint_state,
    load_model,
    prune_checkpoints,
    save_checkpoint,
)
from gpt2kit.errors import UserError


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", vocab_size=64, rope=True, n_kv_head=1))


def test_roundtrip_weights_state_optimizer(tmp_path):
    m = model()
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randint(0, 64, (1, 8))).sum().backward()
    opt.step()
    d = save_checkpoint(tmp_path / "checkpoints", 3, m, {"step": 3, "rng": [1, 2]}, opt.state_dict())
    assert d.name == "step-00000003" and (d / "COMPLETE").exists()
    assert sorted(p.name for p in d.iterdir()) == [
        "COMPLETE", "MANIFEST.json", "config.json", "model.safetensors", "optimizer.pt", "state.json"]
    again = load_model(tmp_path)  # a run directory resolves to its latest checkpoint
    for (k, a), (_, b) in zip(m.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    state, opt_state = load_checkpoint_state(d)
    assert state == {"step": 3, "rng": [1, 2]}
    torch.testing.assert_close(opt_state["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_directory_without_complete_is_not_a_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, model(), {"step": 1})
    d2 = save_checkpoint(root, 2, model(), {"step": 2})
    (d2 / "COMPLETE").unlink()  # as if the process died while writing step 2
    (root / "latest").write_text("step-00000002\n")
    assert find_checkpoint(tmp_path).name == "step-00000001"
    with pytest.raises(UserError, match="not a complete checkpoint"):
        load_checkpoint_state(d2)


def test_corrupt_weights_are_detected(tmp_path):
    d = save_checkpoint(tmp_path / "checkpoints", 1, model(), {"step": 1})
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        load_model(str(d))


def test_resave_same_step_and_prune(tmp_path):
    root = tmp_path / "checkpoints"
    for s in range(1, 6):
        save_checkpoint(root, s, model(), {"step": s})
    save_checkpoint(root, 5, model(), {"step": 5, "again": True})
    (root / ".tmp-step-00000006-x").mkdir()  # leftover of a killed write
    prune_checkpoints(root, keep_last=2, keep={"step-00000001"})
    assert sorted(p.name for p in root.iterdir()) == [
        "latest", "step-00000001", "step-00000004", "step-00000005"]
    assert load_checkpoint_state(root / "step-00000005")[0]["again"] is True


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, model(), {"step": 1})

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(root, 2, model(), {"step": 2}, optimizer_state={})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001"]
    assert find_checkpoint(tmp_path).name == "step-00000001"
    shutil.rmtree(root)
