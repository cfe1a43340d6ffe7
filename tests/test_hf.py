import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from gpt2kit import GPT, GPTConfig
from gpt2kit.cli import main
from gpt2kit.errors import UserError
from gpt2kit.hf import export


def hf_model(tied: bool = True, **kw) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=101, n_positions=48, n_embd=48, n_layer=3, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied, **kw)
    model = GPT2LMHeadModel(cfg).eval()
    if not tied:  # make the untied head really differ from wte
        torch.nn.init.normal_(model.lm_head.weight, std=0.05)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_import_from_transformers_matches_logits(tmp_path, tied):
    ref = hf_model(tied)
    ref.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path))
    assert ours.config.tie_embeddings == tied and ours.config.block_size == 48
    idx = torch.randint(0, 101, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), ref(idx).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False), dict(bias=False)], ids=["tied", "untied", "nobias"])
def test_export_to_transformers_matches_logits(tmp_path, kw):
    torch.manual_seed(1)
    ours = GPT(GPTConfig(vocab_size=101, block_size=48, n_layer=3, n_head=4, n_embd=48, **kw)).eval()
    out = export(ours, tmp_path / "hf")
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, 101, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ref(idx).logits, ours(idx), atol=1e-5, rtol=1e-5)
    # and back again: export -> import is lossless
    again = GPT.from_pretrained(str(out))
    with torch.no_grad():
        torch.testing.assert_close(again(idx), ours(idx), atol=1e-6, rtol=1e-6)


def test_pytorch_bin_and_bare_gpt2model_keys(tmp_path):
    """OpenAI's original checkpoints are GPT2Model (no `transformer.` prefix) in pytorch_model.bin."""
    ref = hf_model()
    bare = GPT2Model(ref.config)
    bare.load_state_dict(ref.transformer.state_dict())
    torch.save(bare.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(ref.config.to_dict()))
    ours = GPT.from_pretrained(str(tmp_path))
    idx = torch.randint(0, 101, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), ref(idx).logits, atol=1e-5, rtol=1e-5)


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(hf_model().config.to_dict()))
    with pytest.raises(UserError, match="safely"):
        GPT.from_pretrained(str(tmp_path))


def test_not_a_gpt2_checkpoint(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["export", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: not a GPT-2 checkpoint")


def test_export_refuses_options_gpt2_cannot_express(tmp_path):
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64, rope=True, n_kv_head=1))
    with pytest.raises(UserError, match="rope, n_kv_head"):
        export(model, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_export_refuses_to_overwrite(tmp_path):
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        export(model, tmp_path / "o")
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


def test_offline_hub_name_suggests_a_local_path(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["info", "--model", "some-org/some-gpt2-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "local" in err and err.count("\n") == 1


def test_missing_path_cli_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gpt2kit", "export", "--model", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: model path not found: {tmp_path / 'nope'}; check the path"]
    assert "Traceback" not in r.stderr


def test_info_cli_prints_sizes(capsys):
    assert main(["info", "--preset", "gpt2", "--vocab-size", "32768"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "gpt2 size: 111.0M parameters"
    assert main(["info", "--preset", "gpt2-xl", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 1_557_611_200


def test_export_onto_a_file_or_over_its_source_is_refused(tmp_path, capsys):
    from gpt2kit.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "run" / "checkpoints", 1, GPT(GPTConfig.from_preset("tiny", vocab_size=64)), {"step": 1})
    (tmp_path / "afile").write_text("x")
    assert main(["export", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "run"), "--overwrite"]) == 2
    assert "contains the model source" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "run"), "--out", str(tmp_path), "--overwrite"]) == 2
    assert (tmp_path / "run" / "checkpoints" / "step-00000001" / "COMPLETE").exists()


def test_unwritable_output_path_is_a_user_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc = main(["tokenizer", "train", "--data", str(Path(__file__)), "--vocab-size", "300",
               "--out", str(tmp_path / "afile" / "tok")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err


def test_export_without_a_tokenizer_still_has_pad_id_and_a_card(tmp_path):
    """No tokenizer: ids as in training, EOS/pad = the last id (GPT-2's layout), a card, no generation_config."""
    from transformers import AutoModelForCausalLM

    out = export(GPT(GPTConfig.from_preset("tiny", vocab_size=64)), tmp_path / "o")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pad_token_id"] == cfg["eos_token_id"] == 63
    assert not (out / "generation_config.json").exists() and not (out / "tokenizer.json").exists()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "none exported" in card
    assert AutoModelForCausalLM.from_pretrained(out).config.pad_token_id == 63
