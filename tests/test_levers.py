"""Issue 12's opt-in levers, each against a straightforward reference: QK-norm, ReLU², zero-initialised
output projections, logit soft-capping, Muon, the warmup-stable-decay schedule; and that they round-trip
through checkpoints and resume."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt2kit.checkpoint import load_gpt2kit_dir, save_model_files
from gpt2kit.config import OptimArgs, build_config
from gpt2kit.errors import UserError
from gpt2kit.hf import export
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.optim import NS_COEFFS, Muon, newton_schulz
from gpt2kit.train import get_lr, make_optimizer, train

SWITCHES = dict(qk_norm=True, mlp_act="relu2", zero_init_proj=True, logit_softcap=15.0)


def tiny(**kw) -> GPTConfig:
    return GPTConfig.from_preset("tiny", vocab_size=64, block_size=16, n_embd=32, **kw)


def model(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**kw)).eval()


# ---------------------------------------------------------------- model switches


def test_qk_norm_attention_equals_explicit_formula():
    m = model(qk_norm=True, rope=True)
    attn, B, T, nh, hs = m.transformer.h[0].attn, 2, 7, 2, 16
    x = torch.randn(B, T, 32)
    rope = m.rotary(torch.arange(T)[None])
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(32, 2))
    rms = lambda t: t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)  # noqa: E731
    q, k = rms(q), rms(k)  # normalised per head, then rotated
    cos, sin = rope
    rot = lambda t: t * cos + torch.cat((-t[..., hs // 2:], t[..., : hs // 2]), -1) * sin  # noqa: E731
    q, k = rot(q), rot(k)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, 32)
    want = y @ attn.c_proj.weight.T + attn.c_proj.bias
    torch.testing.assert_close(attn(x, rope, None, True, None, 0), want, atol=1e-5, rtol=0)
    # and it changes the network: a plain model with the same weights differs
    plain = model(rope=True)
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(plain.transformer.h[0].attn(x, rope, None, True, None, 0), want, atol=1e-3)


def test_relu2_mlp_equals_explicit_formula():
    mlp = model(mlp_act="relu2").transformer.h[0].mlp
    x = torch.randn(3, 5, 32)
    h = x @ mlp.c_fc.weight.T + mlp.c_fc.bias
    want = torch.where(h > 0, h * h, torch.zeros_like(h)) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    torch.testing.assert_close(mlp(x), want, atol=1e-6, rtol=0)


def test_zero_init_proj_zeroes_only_the_output_projections():
    z, plain = model(seed=3, zero_init_proj=True), model(seed=3)
    for (name, p), q in zip(z.named_parameters(), plain.parameters()):
        if name.endswith("c_proj.weight"):
            assert not p.any(), name
            assert q.any(), name
        else:  # every other tensor is drawn exactly as in a plain model
            assert torch.equal(p, q), name
    # each block starts as the identity: the logits are the head on ln_f of the embeddings
    idx = torch.randint(0, 64, (2, 9))
    t = z.transformer
    x = t.wte(idx) + t.wpe(torch.arange(9))
    torch.testing.assert_close(z(idx), t.ln_f(x) @ z.lm_head.weight.T, atol=1e-6, rtol=0)


def test_logit_softcap_equals_cap_tanh_of_plain_logits():
    capped, plain = model(logit_softcap=2.0), model()
    plain.load_state_dict(capped.state_dict())
    with torch.no_grad():
        plain.lm_head.weight.mul_(50)  # logits far beyond the cap
        capped.lm_head.weight.mul_(50)
    idx = torch.randint(0, 64, (2, 9))
    raw, out = plain(idx), capped(idx)
    assert raw.abs().max() > 10
    torch.testing.assert_close(out, 2.0 * torch.tanh(raw / 2.0), atol=1e-6, rtol=0)
    assert out.abs().max() <= 2.0  # tanh saturates to exactly 1 in fp32 far out


def test_defaults_are_plain_gpt2_and_switches_are_refused_by_export(tmp_path):
    assert tiny().is_plain_gpt2 and tiny(zero_init_proj=True).is_plain_gpt2  # init only: still GPT-2
    for name, value in SWITCHES.items():
        if name == "zero_init_proj":
            continue
        cfg = tiny(**{name: value})
        assert not cfg.is_plain_gpt2, name
        with pytest.raises(UserError, match="only plain GPT-2 models can be exported") as e:
            export(GPT(cfg), tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / name).exists()
    with pytest.raises(UserError, match="model.mlp_act must be one of gelu, relu2"):
        tiny(mlp_act="swish")
    with pytest.raises(UserError, match="model.logit_softcap must be > 0"):
        tiny(logit_softcap=0.0)


def test_switches_round_trip_through_a_checkpoint_dir(tmp_path):
    m = model(rope=True, tie_embeddings=False, bias=False, **SWITCHES)
    save_model_files(m, tmp_path)
    back = load_gpt2kit_dir(tmp_path)
    assert back.config == m.config
    idx = torch.randint(0, 64, (2, 9))
    assert torch.equal(back(idx), m(idx))


def test_kv_cache_equals_full_forward_with_every_switch():
    m = model(rope=True, **SWITCHES)
    torch.nn.init.normal_(m.transformer.h[0].attn.c_proj.weight, 0, 0.02)  # so attention matters
    idx = torch.randint(0, 64, (2, 10))
    full = m(idx)
    cache = m.make_cache(2, 10)
    steps = [m(idx[:, :6], cache=cache)] + [m(idx[:, t : t + 1], cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- Muon


def orthogonalise_by_svd(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The Newton-Schulz result computed the plain way: the quintic applied to each singular value."""
    a, b, c = NS_COEFFS
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    s = S / G.double().norm()
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return (U * s) @ Vh


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (24, 24)])
def test_newton_schulz_equals_the_quintic_on_singular_values(shape):
    torch.manual_seed(0)
    G = torch.randn(*shape)
    torch.testing.assert_close(newton_schulz(G).double(), orthogonalise_by_svd(G), atol=2e-5, rtol=0)


def test_newton_schulz_singular_values_land_near_one():
    torch.manual_seed(1)
    for shape in ((64, 32), (32, 96), (96, 32)):
        s = torch.linalg.svdvals(newton_schulz(torch.randn(*shape)))
        assert 0.65 < s.min() and s.max() < 1.2, (shape, s.min(), s.max())  # the quintic's band, not exactly 1


def test_muon_update_equals_a_plain_reference():
    torch.manual_seed(2)
    W0 = torch.randn(24, 8)
    grads = [torch.randn(24, 8) for _ in range(3)]
    lr, beta, wd = 0.05, 0.95, 0.1
    for nesterov in (True, False):
        w = torch.nn.Parameter(W0.clone())
        opt = Muon([w], [], lr=1e-3, muon_lr=lr, momentum=beta, nesterov=nesterov, muon_weight_decay=wd)
        ref, buf = W0.double(), torch.zeros(24, 8, dtype=torch.float64)
        for g in grads:
            w.grad = g.clone()
            opt.step()
            g = g.double()
            buf = beta * buf + (1 - beta) * g
            direction = beta * buf + (1 - beta) * g if nesterov else buf
            ref = ref * (1 - lr * wd) - lr * math.sqrt(24 / 8) * orthogonalise_by_svd(direction)
        torch.testing.assert_close(w.detach().double(), ref, atol=1e-5, rtol=0)


def test_muon_adamw_part_equals_torch_adamw():
    torch.manual_seed(3)
    a, b = torch.nn.Parameter(torch.randn(10, 4)), torch.nn.Parameter(torch.randn(7))
    ra, rb = (torch.nn.Parameter(p.detach().clone()) for p in (a, b))
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    ours = Muon([], [{"params": [a], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], **kw)
    ref = torch.optim.AdamW([{"params": [ra], "weight_decay": 0.1}, {"params": [rb], "weight_decay": 0.0}],
                            foreach=False, **kw)
    for _ in range(4):
        for p, q in ((a, ra), (b, rb)):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, ra, atol=1e-7, rtol=0)
    torch.testing.assert_close(b, rb, atol=1e-7, rtol=0)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(tmp_path):
    m = model(tie_embeddings=False)
    opt = make_optimizer(m, OptimArgs(name="muon", lr=1e-3, muon_lr=0.02), "cpu")
    names = {id(p): n for n, p in m.named_parameters()}
    muon, decay, no_decay = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert sorted(muon) == sorted(f"transformer.h.{i}.{w}.weight" for i in range(2)
                                  for w in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert decay == ["lm_head.weight"]
    assert "transformer.wte.weight" in no_decay and "transformer.h.0.ln_1.weight" in no_decay
    assert [g["lr_scale"] for g in opt.param_groups] == [pytest.approx(20.0), 1.0, 1.0]
    assert opt.param_groups[0]["ns_steps"] == 5
    assert make_optimizer(m, OptimArgs(name="muon", muon_ns_steps=3), "cpu").param_groups[0]["ns_steps"] == 3
    # its state saves and loads like AdamW's (optimizer.pt is read with weights_only=True)
    loss = m(torch.randint(0, 64, (2, 8))).square().mean()
    loss.backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    again = make_optimizer(m, OptimArgs(name="muon", lr=1e-3, muon_lr=0.02), "cpu")
    again.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert set(again.state[m.transformer.h[0].mlp.c_fc.weight]) == {"momentum_buffer"}
    assert again.state[m.transformer.wte.weight]["step"] == 1


RUN = {
    "model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32", "model.dropout": "0.1",
    "model.qk_norm": "true", "model.mlp_act": "relu2", "model.zero_init_proj": "true", "model.logit_softcap": "30",
    "optim.name": "muon", "optim.lr": "1e-2", "optim.muon_lr": "0.05", "optim.schedule": "wsd",
    "optim.warmup_steps": "2", "train.batch_size": "4", "train.max_steps": "8", "train.eval_every": "0",
    "train.eval_batches": "2", "train.ckpt_every": "4", "train.keep_last": "5", "train.log_every": "1",
    "train.precision": "fp32", "train.chunked_loss": "on",  # the chunked loss (with the softcap) resumes bitwise too
}


def run_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_muon_with_every_switch_trains_and_resumes_bitwise(prepared_dir, tmp_path):
    cfg = build_config(None, {**RUN, "data.sources": str(prepared_dir)})
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, full, quiet=True)
    curve = run_losses(full)
    assert curve[8] < curve[1] - 0.3, curve
    last = full / "checkpoints" / "step-00000008"
    c = load_gpt2kit_dir(last).config  # the switches round-trip through config.json
    assert (c.qk_norm, c.mlp_act, c.zero_init_proj, c.logit_softcap) == (True, "relu2", True, 30.0)
    groups = torch.load(last / "optimizer.pt", weights_only=True)["optimizer"]["param_groups"]
    assert groups[0]["use_muon"]  # the Muon group follows the schedule from its own peak, muon_lr
    assert groups[0]["lr"] == pytest.approx(get_lr(8, cfg.optim, 8) * 0.05 / 1e-2)
    assert groups[1]["lr"] == pytest.approx(get_lr(8, cfg.optim, 8))
    # continued from its step-4 checkpoint: the same weights and per-step losses, bit for bit
    shutil.copytree(full, part)
    train(cfg, part, resume=str(part / "checkpoints" / "step-00000004"), quiet=True)
    a, b = (load_file(r / "checkpoints" / "step-00000008" / "model.safetensors") for r in (full, part))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert run_losses(full) == run_losses(part)
    # a resumed run keeps its optimizer: switching is one clear error, and nothing is touched
    before = sorted(p.name for p in (part / "checkpoints").iterdir())
    adamw = build_config(None, {**RUN, "data.sources": str(prepared_dir), "optim.name": "adamw"})
    with pytest.raises(UserError, match="optim.name is adamw but the checkpoint being resumed was trained with muon"):
        train(adamw, part, resume="auto", quiet=True)
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == before


# ---------------------------------------------------------------- schedule


def test_wsd_schedule_explicit_values():
    o = OptimArgs(lr=1.0, min_lr=0.1, warmup_steps=2, schedule="wsd", decay_fraction=0.2)
    got = [get_lr(s, o, 10) for s in range(1, 11)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.55, 0.1])
    o = OptimArgs(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="wsd", decay_fraction=0.5)
    assert [get_lr(s, o, 8) for s in range(1, 9)] == pytest.approx([1, 1, 1, 1, 0.75, 0.5, 0.25, 0])
    o = OptimArgs(lr=1.0, warmup_steps=1, schedule="wsd", decay_fraction=0.0)  # no decay: constant
    assert [get_lr(s, o, 4) for s in range(1, 5)] == [1.0] * 4
    o = OptimArgs(lr=1.0, min_lr=0.2, warmup_steps=6, schedule="wsd", decay_fraction=0.9)  # decay after warmup
    assert [get_lr(s, o, 10) for s in (6, 7, 10)] == pytest.approx([1.0, 0.8, 0.2])
