import math

import pytest
import torch
import torch.nn.functional as F

from gpt2kit import GPT, GPTConfig, model_size
from gpt2kit.errors import UserError


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**base, **kw})


def build(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny(**kw)).eval()


# ---------------------------------------------------------------- sizes and presets


@pytest.mark.parametrize(
    "preset,params",
    [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_preset_parameter_counts_match_published_sizes(preset, params):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset(preset))
    assert sum(p.numel() for p in model.parameters()) == params


def test_model_size_strings():
    with torch.device("meta"):
        assert model_size(GPT(GPTConfig.from_preset("gpt2"))) == "124.4M"
        assert model_size(GPT(GPTConfig.from_preset("gpt2", vocab_size=32768))) == "111.0M"
        # untied: lm_head counted separately
        assert model_size(GPT(GPTConfig.from_preset("gpt2", tie_embeddings=False))) == "163.0M"


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(n_embd=30, n_head=4), "divisible"),
        (dict(n_kv_head=3), "n_kv_head"),
        (dict(dropout=1.5), "dropout"),
        (dict(n_layer=0), "n_layer"),
        (dict(sliding_window=0), "sliding_window"),
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(rope=True, n_embd=36, n_head=12), "even head size"),
    ],
)
def test_config_validation_messages(kw, needle):
    with pytest.raises(UserError, match=needle):
        tiny(**kw)


def test_unknown_preset_and_field():
    with pytest.raises(UserError, match="unknown model preset"):
        GPTConfig.from_preset("gpt5")
    with pytest.raises(UserError, match="n_layers"):
        GPTConfig.from_dict({"n_layers": 3})


def test_init_follows_gpt2():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=5000, block_size=64, n_layer=8, n_head=4, n_embd=256))
    h = model.transformer.h
    assert abs(h[0].attn.c_attn.weight.std().item() - 0.02) < 1e-3
    assert abs(h[0].mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 3e-4
    assert abs(model.transformer.wte.weight.std().item() - 0.02) < 1e-3
    assert torch.all(h[0].attn.c_attn.bias == 0) and torch.all(h[0].ln_1.weight == 1)
    assert model.lm_head.weight is model.transformer.wte.weight


# ---------------------------------------------------------------- reference implementation


def rotate_pairs(t: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE by its definition: rotate (t_i, t_{i+hs/2}) at position p by angle p * theta^(-2i/hs)."""
    out = t.clone()
    T, hs = t.shape[1], t.shape[-1]
    half = hs // 2
    for p in range(T):
        for i in range(half):
            ang = p * theta ** (-2 * i / hs)
            a, b = t[:, p, :, i], t[:, p, :, i + half]
            out[:, p, :, i] = a * math.cos(ang) - b * math.sin(ang)
            out[:, p, :, i + half] = a * math.sin(ang) + b * math.cos(ang)
    return out


def reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Textbook GPT forward with explicit loops over heads; RoPE by pairwise rotation formulas."""
    cfg = model.config
    B, T = idx.shape
    nh, nkv, hs = cfg.n_head, cfg.kv_heads, cfg.head_dim
    tr = model.transformer
    x = tr.wte.weight[idx]
    if not cfg.rope:
        x = x + tr.wpe.weight[:T]
    for blk in tr.h:
        h = F.layer_norm(x, (cfg.n_embd,), blk.ln_1.weight, blk.ln_1.bias, cfg.layer_norm_epsilon)
        qkv = h @ blk.attn.c_attn.weight.T
        if blk.attn.c_attn.bias is not None:
            qkv = qkv + blk.attn.c_attn.bias
        q = qkv[..., : nh * hs].reshape(B, T, nh, hs)
        k = qkv[..., nh * hs : (nh + nkv) * hs].reshape(B, T, nkv, hs)
        v = qkv[..., (nh + nkv) * hs :].reshape(B, T, nkv, hs)
        if cfg.rope:
            q, k = rotate_pairs(q, cfg.rope_theta), rotate_pairs(k, cfg.rope_theta)
        heads = []
        for head in range(nh):
            g = head // (nh // nkv)
            att = q[:, :, head] @ k[:, :, g].transpose(1, 2) / math.sqrt(hs)  # (B, T, T)
            allowed = torch.ones(T, T, dtype=torch.bool).tril()
            if cfg.sliding_window is not None:
                i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
                allowed &= (i - j) < cfg.sliding_window
            att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
            heads.append(att @ v[:, :, g])
        y = torch.cat(heads, dim=-1) @ blk.attn.c_proj.weight.T
        if blk.attn.c_proj.bias is not None:
            y = y + blk.attn.c_proj.bias
        x = x + y
        h = F.layer_norm(x, (cfg.n_embd,), blk.ln_2.weight, blk.ln_2.bias, cfg.layer_norm_epsilon)
        h = h @ blk.mlp.c_fc.weight.T + (blk.mlp.c_fc.bias if blk.mlp.c_fc.bias is not None else 0)
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))  # gelu_new
        h = h @ blk.mlp.c_proj.weight.T + (blk.mlp.c_proj.bias if blk.mlp.c_proj.bias is not None else 0)
        x = x + h
    x = F.layer_norm(x, (cfg.n_embd,), tr.ln_f.weight, tr.ln_f.bias, cfg.layer_norm_epsilon)
    return x @ model.lm_head.weight.T


OPTIONS = [
    dict(),
    dict(rope=True),
    dict(n_kv_head=2),
    dict(n_kv_head=1),
    dict(sliding_window=4),
    dict(rope=True, n_kv_head=2, sliding_window=5),
    dict(bias=False, tie_embeddings=False),
]


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: ",".join(kw) or "gpt2")
def test_matches_reference_implementation(kw):
    model = build(**kw)
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(model, idx), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- KV cache and padding


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: ",".join(kw) or "gpt2")
def test_kv_cache_equals_full_forward(kw):
    model = build(**kw)
    idx = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        full = model(idx)
        cache = model.make_cache(3, 20)
        parts = [model(idx[:, :7], cache=cache), model(idx[:, 7:11], cache=cache)]  # prefill, then a chunk
        parts += [model(idx[:, t : t + 1], cache=cache) for t in range(11, 20)]  # one token at a time
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(rope=True, n_kv_head=2, sliding_window=4)], ids=["gpt2", "options"])
def test_left_padding_gives_the_unpadded_logits(kw):
    model = build(**kw)
    short = torch.randint(0, 97, (1, 6))
    pad = 4
    idx = torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1)
    mask = torch.cat([torch.zeros(1, pad), torch.ones(1, 6)], dim=1).long()
    with torch.no_grad():
        alone = model(short)
        padded = model(idx, attention_mask=mask)[:, pad:]
        # and incrementally, with the cache and the mask growing
        cache = model.make_cache(1, pad + 8)
        model(idx, attention_mask=mask, cache=cache)
        nxt = torch.tensor([[5]])
        mask2 = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], dim=1)
        step = model(nxt, attention_mask=mask2, cache=cache)
        ref = model(torch.cat([short, nxt], dim=1))[:, -1:]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step, ref, atol=1e-5, rtol=1e-5)


def test_greedy_generate_with_cache_equals_recomputing():
    model = build()
    idx = torch.randint(0, 97, (2, 5))
    out = model.generate(idx, 10, temperature=0)
    seq = idx
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_sequence_longer_than_block_size_is_refused():
    model = build()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


# ---------------------------------------------------------------- training features


def test_gradient_checkpointing_gives_the_same_gradients():
    idx = torch.randint(0, 97, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = build(dropout=0.1).train()  # recomputation must replay the same dropout masks
        model.grad_checkpointing = ckpt
        torch.manual_seed(1)
        logits = model(idx)
        F.cross_entropy(logits.view(-1, 97), idx.view(-1)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_dropout_only_in_training():
    model = build(dropout=0.5)
    idx = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(idx), model(idx))
        model.train()
        assert not torch.equal(model(idx), model(idx))


# ---------------------------------------------------------------- chunked loss (train.chunked_loss)


@pytest.mark.parametrize("softcap", [None, 4.0])
def test_linear_cross_entropy_equals_cross_entropy_of_the_logits(softcap):
    from gpt2kit.model import linear_cross_entropy

    torch.manual_seed(0)
    N, C, V = 53, 16, 41
    h = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, C, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, V, (N,))
    t[::5] = -100
    z = h @ w.T
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    want = F.cross_entropy(z, t, reduction="sum")
    gh, gw = torch.autograd.grad(3 * want, (h, w))
    got = linear_cross_entropy(h, w, t, softcap, chunk=8)  # 53 rows: 7 chunks, the last one short
    h2, w2 = torch.autograd.grad(3 * got, (h, w))
    assert torch.allclose(got, want, rtol=1e-12)
    assert torch.allclose(h2, gh, rtol=1e-10, atol=1e-12) and torch.allclose(w2, gw, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # evaluation: no gradient work, same loss
        assert torch.allclose(linear_cross_entropy(h, w, t, softcap, chunk=8), want, rtol=1e-12)


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False, logit_softcap=10.0)], ids=["tied", "untied-softcap"])
def test_gpt_loss_with_targets_equals_the_loss_of_its_logits(kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, **kw))
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    y[0, :5] = -100
    want = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum")
    want.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = model(x, targets=y)
    got.backward()
    assert torch.allclose(got, want, rtol=1e-6)
    for n, p in model.named_parameters():  # wte's gradient: embedding + (tied) head, both arrive
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6), n


def test_chunked_loss_under_bf16_autocast_is_close():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=300))
    x, y = torch.randint(0, 300, (4, 32)), torch.randint(0, 300, (4, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten(), reduction="sum")
        got = model(x, targets=y)
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) < 1e-2 * abs(want.item())
