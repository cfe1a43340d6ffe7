"""Muon: orthogonalised momentum for the hidden weight matrices, AdamW for everything else.

Muon (Keller Jordan, 2024; github.com/KellerJordan/Muon, as used by modded-nanogpt) replaces each 2-D
weight's momentum by the nearest semi-orthogonal matrix (all singular values ~1), found with five steps
of a quintic Newton-Schulz iteration, and scales it by sqrt(max(1, rows / cols)). It is meant for the
hidden matrices only; embeddings, the output head, LayerNorm gains and biases keep AdamW. Both live in
one `torch.optim.Optimizer`, so `optimizer.pt` saves and loads it like AdamW and resume stays bitwise.

Orientation: gpt2kit stores every weight as `nn.Linear` does, (out_features, in_features) - not
transformers' transposed `Conv1D` - so `rows / cols` is out / in, as in Muon's reference code (c_fc,
(4C, C), is scaled by 2; mlp.c_proj, (C, 4C), by 1). The orthogonalisation itself does not depend on
the orientation (orth(G.T) = orth(G).T).

The iteration runs in fp32 (Muon runs it in bf16 on GPU; on CPU without bf16, fp32 is the fast path).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic a*x + b*x^3 + c*x^5, tuned for fast growth near 0
NS_STEPS = 5


def newton_schulz(G: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix U V^T for G = U S V^T: singular values land in ~[0.7, 1.2].

    G is scaled to Frobenius norm 1 (so every singular value is <= 1), then each step applies
    X <- a X + b (X X^T) X + c (X X^T)^2 X, which maps each singular value s to a s + b s^3 + c s^5.
    Works on the wide orientation so X X^T is the smaller Gram matrix."""
    a, b, c = NS_COEFFS
    X = G.float()
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if tall else X


def muon_update(grad: torch.Tensor, buf: torch.Tensor, momentum: float, nesterov: bool,
                steps: int = NS_STEPS) -> torch.Tensor:
    """Advance the momentum buffer `buf` in place with `grad`; return the orthogonalised, scaled update.

    buf <- momentum * buf + (1 - momentum) * grad; the update orthogonalises buf, or with Nesterov
    momentum * buf + (1 - momentum) * grad, and is scaled by sqrt(max(1, rows / cols))."""
    buf.lerp_(grad, 1 - momentum)
    update = grad.lerp(buf, momentum) if nesterov else buf
    rows, cols = grad.size(-2), grad.size(-1)
    return newton_schulz(update, steps) * max(1.0, rows / cols) ** 0.5


class Muon(torch.optim.Optimizer):
    """Muon for `matrices`, AdamW (decoupled weight decay, bias correction, as torch.optim.AdamW) for
    the parameter groups in `adamw_groups` (dicts with `params` and `weight_decay`).

    Every group carries `lr_scale`, its peak LR over `lr`: the training loop sets each group's LR to
    schedule(step) * lr_scale, so the Muon matrices follow the same schedule from `muon_lr`."""

    def __init__(
        self,
        matrices: Iterable[torch.Tensor],
        adamw_groups: list[dict],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        muon_lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        muon_weight_decay: float = 0.0,
        ns_steps: int = NS_STEPS,
    ):
        matrices = list(matrices)
        if any(p.dim() != 2 for p in matrices):
            raise ValueError("Muon orthogonalises 2-D weight matrices only")
        groups = [dict(params=matrices, use_muon=True, lr=muon_lr, lr_scale=muon_lr / lr, momentum=momentum,
                       nesterov=nesterov, weight_decay=muon_weight_decay, ns_steps=ns_steps)]
        groups += [dict(g, use_muon=False, lr=lr, lr_scale=1.0, betas=betas, eps=eps) for g in adamw_groups]
        super().__init__(groups, dict(lr=lr, weight_decay=0.0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon if group["use_muon"] else self._adamw)(p, group)
        return loss

    def _muon(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        update = muon_update(p.grad, state["momentum_buffer"], group["momentum"], group["nesterov"],
                             group["ns_steps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update.to(p.dtype), alpha=-group["lr"])

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t, grad = state["step"], p.grad
        p.mul_(1 - group["lr"] * group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**t) ** 0.5).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))
