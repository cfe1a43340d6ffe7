"""GPT-2 in one file, readable top to bottom.

LayerNorm -> CausalSelfAttention -> MLP -> Block -> GPTConfig -> GPT. Parameter names are the
Hugging Face / OpenAI ones (`transformer.wte`, `transformer.h.0.attn.c_attn`, `lm_head`, ...), so
importing GPT-2 is a key-for-key copy that transposes the four `Conv1D` weights (see `hf.py`).

Options beyond GPT-2, each off by default (with all off this is exactly GPT-2):
- `rope`: rotary position embeddings (RoFormer, Su et al. 2021) instead of the learned `wpe`.
- `n_kv_head`: grouped-query attention (Ainslie et al. 2023), `n_kv_head` K/V heads shared by `n_head` queries.
- `sliding_window`: each token attends to at most the last `sliding_window` tokens (Longformer-style local attention).
- `qk_norm`: queries and keys RMS-normalised per head, without a learned gain, before RoPE and attention
  (as in modded-nanogpt; bounds the attention logits).
- `mlp_act`: `relu2` = ReLU squared, relu(x)**2 (Primer, So et al. 2021), instead of GPT-2's tanh-GELU.
- `zero_init_proj`: the output projections (attn.c_proj, mlp.c_proj) start at zero, so every block starts
  as the identity (only the initialisation changes; the network is still GPT-2's).
- `logit_softcap`: logits = cap * tanh(logits / cap) (Gemma 2), bounded in (-cap, cap).
Switches that change the network (all but `zero_init_proj`) make `is_plain_gpt2` false: such a model
cannot be exported to transformers' GPT2LMHeadModel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gpt2kit.errors import UserError

MLP_ACTIVATIONS = ("gelu", "relu2")

# Published GPT-2 sizes, plus small ones that train on a laptop CPU.
PRESETS: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=128),  # tests, seconds
    "mini": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),  # CPU demo
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=512),  # a few CPU hours, one GPU minutes
}


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # max sequence length (Hugging Face: n_positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # grouped-query attention; None = n_head (plain multi-head)
    n_inner: int | None = None  # MLP width; None = 4 * n_embd
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2: True)
    tie_embeddings: bool = True  # lm_head shares the token embedding (GPT-2: True)
    layer_norm_epsilon: float = 1e-5
    rope: bool = False  # rotary position embeddings instead of learned wpe
    rope_theta: float = 10000.0
    sliding_window: int | None = None  # local attention window in tokens; None = full causal
    qk_norm: bool = False  # RMS-normalise q and k per head (no learned gain) before attention
    mlp_act: str = "gelu"  # "gelu" (GPT-2's tanh approximation) or "relu2" (ReLU squared)
    zero_init_proj: bool = False  # attn.c_proj and mlp.c_proj weights start at zero
    logit_softcap: float | None = None  # logits = cap * tanh(logits / cap); None = off

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"model.{name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise UserError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"e.g. n_embd {self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise UserError(f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head})")
        if self.n_inner is not None and self.n_inner < 1:
            raise UserError(f"model.n_inner must be a positive integer, got {self.n_inner}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.rope and self.head_dim % 2:
            raise UserError(f"model.rope needs an even head size, got n_embd/n_head = {self.head_dim}")
        if not self.rope_theta > 0:
            raise UserError(f"model.rope_theta must be > 0, got {self.rope_theta}")
        if not self.layer_norm_epsilon > 0:
            raise UserError(f"model.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise UserError(f"model.sliding_window must be a positive integer or null, got {self.sliding_window}")
        if self.mlp_act not in MLP_ACTIVATIONS:
            raise UserError(f"model.mlp_act must be one of {', '.join(MLP_ACTIVATIONS)}, got {self.mlp_act!r}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise UserError(f"model.logit_softcap must be > 0 or null, got {self.logit_softcap}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    def non_gpt2_features(self) -> list[str]:
        """The switches in use that transformers' GPT2LMHeadModel cannot express (empty = plain GPT-2)."""
        used = (("rope", self.rope), ("n_kv_head", self.kv_heads != self.n_head),
                ("sliding_window", self.sliding_window is not None), ("qk_norm", self.qk_norm),
                ("mlp_act relu2", self.mlp_act != "gelu"), ("logit_softcap", self.logit_softcap is not None))
        return [name for name, on in used if on]

    @property
    def is_plain_gpt2(self) -> bool:
        """True when the model can be written as a Hugging Face GPT2LMHeadModel."""
        return not self.non_gpt2_features()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown model config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm; GPT-2 uses eps 1e-5 and a bias, which `bias=False` removes."""


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary embeddings, computed from position ids (so left padding works)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids.float()[..., None] * self.inv_freq  # (B, T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hs)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hs/2}) by position-dependent angles (the rotate-half layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(mean(x**2) + eps) over the last dimension: RMSNorm without a learned gain."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


class KVCache:
    """Pre-allocated keys and values for incremental decoding.

    Shapes: (n_layer, B, n_kv_head, max_len, head_dim). `pos` is the number of positions
    already stored; the model advances it after each forward pass.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=None):
        shape = (config.n_layer, batch_size, config.kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nkv, S, hs)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in `index` (e.g. to drop finished sequences)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.qk_norm = config.qk_norm
        # One projection for q, k, v (GPT-2's c_attn); with GQA k and v are narrower.
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, mask, causal, cache, layer):
        B, T, C = x.size()
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.qk_norm:  # RMSNorm over each head's hs features, no gain: |q| = |k| = sqrt(hs)
            q, k = rms_norm(q), rms_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, hs)
        if nkv != nh:  # each group of nh // nkv query heads shares one k/v head
            k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.act = config.mlp_act

    def forward(self, x):
        h = self.c_fc(x)
        # GPT-2's gelu_new is the tanh approximation; relu2 is ReLU squared (Primer).
        h = F.relu(h).square() if self.act == "relu2" else F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, mask=None, causal=True, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope, mask, causal, cache, layer)
        return x + self.mlp(self.ln_2(x))


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross-entropy(softcap(h @ weight.T), targets), `chunk` rows of logits at a time.

    The loss is the last operation, so its gradients are known in the forward pass: each chunk's
    (softmax - one-hot) is turned into its share of dL/dh and dL/dweight at once and the chunk's logits are
    freed (as Liger-Kernel's fused linear cross-entropy). Peak memory: chunk x vocab fp32, not B x T x vocab.
    The matmuls run in `dtype` (the autocast dtype, as lm_head would), the softmax in fp32."""

    @staticmethod
    def forward(ctx, h, weight, targets, softcap, chunk, dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(dtype)
        acc = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 when everything is
        loss = torch.zeros((), dtype=acc, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for s in range(0, h.shape[0], chunk):
            hc, tc = h[s : s + chunk].to(dtype), targets[s : s + chunk]
            z = (hc @ w.t()).to(acc)
            if softcap is not None:
                capped = torch.tanh(z / softcap)
                z = softcap * capped
            valid = tc != -100
            safe = tc.clamp(min=0).unsqueeze(1)
            lse = torch.logsumexp(z, dim=-1)
            loss += ((lse - z.gather(1, safe).squeeze(1)) * valid).sum()
            if need_h or need_w:
                g = z.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
                g.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=g.dtype))
                g.mul_(valid.unsqueeze(1))
                if softcap is not None:
                    g.mul_(1 - capped * capped)
                g = g.to(dtype)
                if need_h:
                    grad_h[s : s + chunk] = g @ w
                if need_w:
                    grad_w += (g.t() @ hc).to(acc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_out.to(grad_h.dtype),
                None if grad_w is None else (grad_w * grad_out).to(ctx.weight_dtype), None, None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         softcap: float | None = None, chunk: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of the logits h @ weight.T (N, vocab) against `targets` (N,; -100 = no loss),
    without materialising the logits: `chunk` rows at a time (default: ~32M logits per chunk)."""
    chunk = chunk or max(1, 2**25 // weight.shape[0])
    device_type = h.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else h.dtype
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(h, weight, targets, softcap, chunk, dtype)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if not config.rope:
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules["drop"] = nn.Dropout(config.dropout)
        modules["h"] = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        modules["ln_f"] = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.transformer = nn.ModuleDict(modules)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta) if config.rope else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.grad_checkpointing = False
        self.init_weights()

    @classmethod
    def from_pretrained(cls, src: str, device=None, dtype=None) -> GPT:
        """Load what `--model` takes: a run or checkpoint directory, a Hugging Face GPT-2 directory,
        or a hub name (when the hub is reachable)."""
        from gpt2kit.checkpoint import load_model

        return load_model(src, device=device, dtype=dtype)

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialisation, all in one place.

        | parameter                              | init                              |
        |----------------------------------------|-----------------------------------|
        | wte, wpe                               | normal(0, 0.02)                   |
        | Linear weights (c_attn, c_fc)          | normal(0, 0.02)                   |
        | attn.c_proj, mlp.c_proj weights        | normal(0, 0.02 / sqrt(2*n_layer)) |
        |   ... with zero_init_proj              | 0                                 |
        | lm_head (untied)                       | normal(0, 0.02)                   |
        | all biases                             | 0                                 |
        | LayerNorm weight / bias                | 1 / 0                             |

        The residual projections are scaled down because every block adds two of them to
        the residual stream (GPT-2 paper, section 2.3).
        """
        std, proj_std = 0.02, 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, proj_std if name.endswith("c_proj") else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.config.tie_embeddings:  # the Linear loop above re-initialised the shared weight
            nn.init.normal_(self.transformer.wte.weight, 0.0, std)
        if self.config.zero_init_proj:  # after the draws above, so the other weights match a plain model's
            for block in self.transformer.h:
                nn.init.zeros_(block.attn.c_proj.weight)
                nn.init.zeros_(block.mlp.c_proj.weight)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids `idx` (B, T); with `targets` (B, T), the summed cross-entropy
        over the targets that are not -100 instead, computed a few rows of logits at a time
        (linear_cross_entropy) so the (B, T, vocab) logits never exist.

        attention_mask: (B, S) with 1 for real tokens and 0 for (left) padding, S = cached + T.
        cache: a KVCache; new keys/values are appended and `cache.pos` advances by T.
        """
        h = self.hidden(idx, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        if targets is not None and type(self.lm_head) is nn.Linear:  # not a LoRA / int8 head: those run whole
            return linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.reshape(-1),
                                        self.config.logit_softcap)
        logits = self.lm_head(h)
        cap = self.config.logit_softcap
        if cap is not None:  # bounded in (-cap, cap); near-identity for |logits| << cap
            logits = cap * torch.tanh(logits / cap)
        if targets is not None:
            return F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), reduction="sum")
        return logits

    def hidden(
        self,
        idx: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The final hidden states (B, T, n_embd), after ln_f: what a head (LM or classifier) reads."""
        B, T = idx.size()
        offset = cache.pos if cache is not None else 0
        if not self.config.rope and offset + T > self.config.block_size:
            raise ValueError(f"sequence length {offset + T} exceeds block_size {self.config.block_size}")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, offset : offset + T]
            else:
                position_ids = torch.arange(offset, offset + T, device=idx.device).unsqueeze(0)  # (1, T)
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.rotary is not None:
            rope = self.rotary(position_ids)
        else:
            x = x + self.transformer.wpe(position_ids)
        x = self.transformer.drop(x)
        mask, causal = self._attention_mask(T, offset, attention_mask, idx.device)
        for i, block in enumerate(self.transformer.h):
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, rope, mask, causal, None, i, use_reentrant=False)
            else:
                x = block(x, rope, mask, causal, cache, i)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def _attention_mask(self, T: int, offset: int, attention_mask, device):
        """(mask, is_causal) for SDPA: None + is_causal when plain causal attention suffices."""
        S = offset + T
        window = self.config.sliding_window
        if attention_mask is None and (window is None or window >= S):
            if offset == 0:
                return None, T > 1
            if T == 1:  # one new query attends to everything cached
                return None, False
        i = torch.arange(offset, S, device=device)[:, None]  # (T, 1) query positions
        j = torch.arange(S, device=device)[None, :]  # (1, S) key positions
        allowed = j <= i
        if window is not None:
            allowed = allowed & (i - j < window)
        allowed = allowed[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :S].bool()  # (B, 1, T, S)
            allowed = allowed | (i == j)  # padding queries see themselves, so no row is all-masked (NaN)
        return allowed, False

    def make_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.transformer.wte.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The prompt `idx` (B, T) followed by up to `max_new_tokens` new tokens.

        temperature 0 is greedy. Uses the KV cache while the sequence fits in `block_size`
        (always with RoPE); past that it crops the context to the last `block_size` tokens.
        Sequences that emit `eos_id` are padded with it until all are done. One implementation
        for everything: `gpt2kit.generate.generate_ids` (also left padding, repetition penalty).
        """
        from gpt2kit.generate import generate_ids

        new = generate_ids(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           eos_id=eos_id, generator=generator)
        return torch.cat([idx, new.to(idx.device)], dim=1)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Pick one token per row of `logits` (B, V): greedy at temperature 0, else top-k / nucleus sampling.

    generator: one for the batch, or one per row (then a row's sample does not depend on the others)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    if isinstance(generator, (list, tuple)):
        # Exponential race (= Gumbel-max): argmax p / E, E ~ Exp(1), is a draw from p; much faster
        # than one multinomial call per row.
        noise = torch.stack([torch.empty_like(p).exponential_(generator=g) for p, g in zip(probs, generator)])
        return (probs / noise).argmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def model_size(model: nn.Module | int) -> str:
    """Parameter count (of a model, or a number) as a human string, e.g. `124.4M` (tied weights counted once)."""
    n = model if isinstance(model, int) else sum(p.numel() for p in model.parameters())  # shared counted once
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}K"


def num_params(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Exact parameter count; with `exclude_embeddings`, without wte/wpe (used for FLOPs estimates)."""
    n = sum(p.numel() for p in model.parameters())
    if exclude_embeddings and isinstance(model, GPT):
        n -= model.transformer.wte.weight.numel()
        if "wpe" in model.transformer:
            n -= model.transformer.wpe.weight.numel()
    return n
