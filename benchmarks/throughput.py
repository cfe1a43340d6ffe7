"""Training-step throughput on CPU: gpt2kit's `GPT` against `transformers.GPT2LMHeadModel`, and the limit
set by the model's own matmuls.

bench-mini by default: 6 layers, 6 heads, width 384, context 256, batch 8, vocabulary 8192 (nanoGPT's
small-model settings, issue 12). One optimizer step = forward, cross-entropy in fp32 over every position,
backward, AdamW step, zero_grad; no gradient clipping, random token ids, dropout 0.
- gpt2kit: `gpt2kit.model.GPT` with the AdamW `gpt2kit train` builds (`gpt2kit.train.make_optimizer`);
  also with `train.chunked_loss on` (the loss from `GPT(x, targets=y)`: logits a few thousand rows at a time);
- transformers: `GPT2LMHeadModel` of the same shape (`gpt2kit.hf.config_to_hf`) with `torch.optim.AdamW`
  (foreach, weight decay 0.1 on every tensor);
- matmul limit: only the model's matmuls, on tensors of the model's shapes, timed alone: for every Linear
  (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj per layer, and lm_head) the forward Y = X W^T and both
  gradients dX = dY W and dW = dY^T X; then the same plus attention's batched matmuls (Q K^T and A V
  forward, four backward), full T x T (a kernel that skips the masked half does less).
- nanoGPT's model.py: not measured (it is not a dependency of gpt2kit and this script fetches nothing).

Contenders run in interleaved rounds in one process (round r: each contender takes --steps steps), so a
neighbour's load hits them alike; tokens/s = steps x batch x context / seconds, median and best of the
rounds. fp32 always; bf16 autocast too where the CPU has bf16 hardware (AVX512-BF16 or AMX), as
`train.precision auto` does (the matmul limit then runs on bf16 tensors).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/throughput.py --rounds 5 --steps 5 --out bench.md
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _machine import has_bf16, machine_line


def model_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               bf16: bool, hf: bool, chunked: bool = False) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if chunked:  # train.chunked_loss on: the loss without the whole logits tensor
                loss = model(x, targets=y) / y.numel()
            else:
                logits = model(input_ids=x).logits if hf else model(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def matmul_step(cfg, batch: int, dtype: torch.dtype, attention: bool) -> tuple[Callable[[], None], float]:
    """The model's matmuls of one training step (forward + both gradients) and their FLOPs."""
    n, e, t, h = batch * cfg.block_size, cfg.n_embd, cfg.block_size, cfg.n_head
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    # (in, out) of each Linear, per layer, then lm_head
    shapes = [(e, 3 * e), (e, e), (e, cfg.n_inner or 4 * e), (cfg.n_inner or 4 * e, e)] * cfg.n_layer
    shapes.append((e, cfg.vocab_size))
    linears = [(rand(n, i), rand(o, i), rand(n, o)) for i, o in shapes]  # X, W, dY
    flops = sum(3 * 2 * n * i * o for i, o in shapes)
    hs = e // h
    q, k, v, a = rand(batch * h, t, hs), rand(batch * h, t, hs), rand(batch * h, t, hs), rand(batch * h, t, t)
    if attention:
        flops += cfg.n_layer * 6 * 2 * batch * h * t * t * hs  # 2 forward + 4 backward batched matmuls

    def step() -> None:
        for x, w, dy in linears:
            x @ w.t()  # forward
            dy @ w  # dX
            dy.t() @ x  # dW
        if attention:
            for _ in range(cfg.n_layer):
                q @ k.transpose(1, 2)  # scores (B*nh, T, T)
                a @ v  # output (B*nh, T, hs)
                q @ v.transpose(1, 2)  # dA = dO V^T
                a.transpose(1, 2) @ v  # dV = A^T dO
                a @ k  # dQ = dS K
                a.transpose(1, 2) @ q  # dK = dS^T Q

    return step, flops


def build(args, bf16: bool) -> list[tuple[str, Callable[[], None], float | None]]:
    """(name, one step, FLOPs of the step or None) for each contender at this precision."""
    from transformers import GPT2LMHeadModel

    from gpt2kit.config import OptimArgs
    from gpt2kit.hf import config_to_hf
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.train import make_optimizer

    cfg = GPTConfig(vocab_size=args.vocab, block_size=args.block, n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd)
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size))
    y = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size))
    ours = GPT(cfg).train()
    hf_cfg = config_to_hf(cfg)
    hf_cfg.resid_pdrop = hf_cfg.embd_pdrop = hf_cfg.attn_pdrop = 0.0
    theirs = GPT2LMHeadModel(hf_cfg).train()
    dtype = torch.bfloat16 if bf16 else torch.float32
    linears, lin_flops = matmul_step(cfg, args.batch, dtype, attention=False)
    both, all_flops = matmul_step(cfg, args.batch, dtype, attention=True)
    chunked = GPT(cfg).train()
    return [
        ("gpt2kit GPT + AdamW", model_step(ours, make_optimizer(ours, OptimArgs(lr=1e-4), "cpu"), x, y, bf16, False),
         None),
        ("gpt2kit GPT + AdamW, train.chunked_loss on",
         model_step(chunked, make_optimizer(chunked, OptimArgs(lr=1e-4), "cpu"), x, y, bf16, False, chunked=True),
         None),
        ("transformers GPT2LMHeadModel + AdamW",
         model_step(theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=0.1, foreach=True), x, y,
                    bf16, True), None),
        ("matmul limit: the Linears' matmuls alone (fwd + dX + dW)", linears, lin_flops),
        ("matmul limit: Linears + attention matmuls", both, all_flops),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per contender per round (default 5)")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                    help="default: fp32, plus bf16 where the CPU has bf16 hardware")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--out", help="also append the markdown table to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions or (["fp32", "bf16"] if has_bf16() else ["fp32"])
    if "bf16" in precisions and not has_bf16():
        print("note: this CPU has no bf16 hardware; bf16 runs emulated and is slow", file=sys.stderr)

    machine = machine_line()
    contenders = [(p, *c) for p in precisions for c in build(args, p == "bf16")]
    tokens = args.steps * args.batch * args.block
    rates: dict[int, list[float]] = {i: [] for i in range(len(contenders))}
    for _, _, step, _ in contenders:  # one untimed step each: allocations, lazy init, kernel selection
        step()
    for r in range(args.rounds):
        for i, (_, _, step, _) in enumerate(contenders):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[i].append(tokens / (time.perf_counter() - t0))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{rates[i][-1]:,.0f}" for i in rates),
              file=sys.stderr, flush=True)

    cmd = shlex.join(["python", *sys.argv])
    lines = [
        f"### Training-step throughput ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`{cmd}`",
        "",
        f"Machine: {machine}. Model: {args.n_layer} layers, {args.n_head} heads, width {args.n_embd}, context "
        f"{args.block}, batch {args.batch}, vocabulary {args.vocab}; {args.rounds} interleaved rounds of "
        f"{args.steps} steps. nanoGPT's model.py: not measured (not installed, nothing fetched).",
        "",
        "| precision | step | tok/s (median) | tok/s (best) | share of the Linears' matmul limit | GFLOP/s |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for i, (prec, name, _, flops) in enumerate(contenders):
        med, best = statistics.median(rates[i]), max(rates[i])
        limit = next(statistics.median(rates[j]) for j, c in enumerate(contenders)
                     if c[0] == prec and c[1].startswith("matmul limit: the Linears"))
        gflops = f"{flops * med / (args.batch * args.block) / 1e9:,.0f}" if flops else ""
        lines.append(f"| {prec} | {name} | {med:,.0f} | {best:,.0f} | {100 * med / limit:.0f}% | {gflops} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
