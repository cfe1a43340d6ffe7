"""--int8: Int8Linear against the explicit formula, a quantized GPT against its fp32 self, the commands."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gpt2kit.cli import main
from gpt2kit.generate import generate_ids
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.quantize import Int8Linear, int8_available, quantize_int8

pytestmark = pytest.mark.skipif(int8_available() is not None, reason=str(int8_available()))


def reference_int8(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """What Int8Linear computes, written out for one input row: weight rows rounded to int8 steps of
    max|row| / 127; the input divided by its max |x| and rounded to steps of 2/127 (the kernel's scale for
    the range [-1, 1] in 7 bits; measured: 129 levels, -64..64), int products summed, scaled back, plus the
    fp32 bias."""
    w = linear.weight.detach()
    s = w.abs().amax(1, keepdim=True) / 127
    wq = torch.round(w / s).clamp(-127, 127)
    r = x.abs().max()
    xq = torch.round(x / r / (2 / 127))
    return (xq * (2 / 127) * r) @ (wq * s).T + (0 if linear.bias is None else linear.bias.detach())


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_equals_the_explicit_formula(bias):
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        pytest.skip(f"the formula is fbgemm's (7-bit inputs); this engine is {torch.backends.quantized.engine}")
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=bias)
    x = torch.randn(3, 5, 64)
    y = Int8Linear(lin)(x)
    assert y.shape == (3, 5, 48)
    ref = torch.stack([torch.stack([reference_int8(lin, t) for t in row]) for row in x])
    assert torch.allclose(y, ref, atol=1e-5), (y - ref).abs().max()
    # a row's output does not depend on the other rows it is computed with
    assert torch.equal(Int8Linear(lin)(x[1, 2:3]), y[1, 2:3])
    # and it is an approximation of the fp32 layer, not something else
    exact = lin(x)
    assert (y - exact).abs().max() < 0.05 * exact.abs().max()


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=97), **kw})).eval()


@pytest.mark.parametrize("kw", [dict(), dict(rope=True, n_kv_head=1, tie_embeddings=False)], ids=["gpt2", "options"])
def test_quantized_gpt_is_close_and_its_cache_is_exact(kw):
    model = tiny(**kw)
    x = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        want = model(x)
        wte = model.transformer.wte.weight.clone()
        quantize_int8(model)
        got = model(x)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert torch.equal(model.transformer.wte.weight, wte)  # the embedding a tied head shared stays fp32
    cos = torch.nn.functional.cosine_similarity(got.flatten(0, 1), want.flatten(0, 1), dim=-1)
    assert cos.min() > 0.99, cos.min()
    # decoding with the KV cache = recomputing everything, in int8 as in fp32
    cached = generate_ids(model, x[:, :7], 16, temperature=0)
    uncached = generate_ids(model, x[:, :7], 16, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_dir, small_tokenizer):
    """A model trained a little on real Python (so perplexity means something) and exported with its tokenizer."""
    from gpt2kit.config import build_config
    from gpt2kit.train import train

    out = tmp_path_factory.mktemp("int8") / "run"
    cfg = build_config(None, {
        "data.sources": str(prepared_dir), "model.preset": "mini", "model.n_layer": "2", "model.n_embd": "64",
        "model.n_head": "2", "model.block_size": "64", "train.batch_size": "8", "train.max_steps": "60",
        "optim.lr": "3e-3", "train.eval_every": "0", "train.ckpt_every": "0", "train.report_to": "",
    })
    train(cfg, out, quiet=True)
    return out, prepared_dir


def test_cli_generate_and_eval_with_int8(trained, capsys):
    run, data = trained
    assert main(["eval", "--model", str(run), "--data", str(data), "--json"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert main(["eval", "--model", str(run), "--data", str(data), "--json", "--int8"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    # a small, real cost: not zero (it is quantized) and not a broken model
    assert int8["loss"] != fp32["loss"]
    assert abs(int8["loss"] - fp32["loss"]) < 0.05 * fp32["loss"], (fp32, int8)
    assert main(["generate", "--model", str(run), "--prompt", "def f(x):", "--max-new-tokens", "12",
                 "--temperature", "0", "--int8", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["completion"] and rows[0]["tokens"] == 12


def test_int8_off_the_cpu_is_one_error_line(trained, capsys):
    from helpers import one_error

    from gpt2kit.errors import UserError

    with torch.device("meta"):
        model = tiny()
    with pytest.raises(UserError, match="--int8 runs on the CPU only"):
        quantize_int8(model)
    run, _ = trained
    rc = main(["generate", "--model", str(run), "--prompt", "x", "--int8", "--device", "cuda"])
    assert "--device" in one_error(rc, capsys.readouterr().err)  # said before any model is quantized
