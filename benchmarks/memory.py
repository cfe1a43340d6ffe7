"""Peak memory of one fine-tuning optimizer step on CPU: full vs LoRA, with and without gradient checkpointing.

Each configuration runs in a fresh process (so its peak RSS is its own): a randomly initialised preset
(gpt2kit.GPT, fp32), the fine-tuning mode applied exactly as `gpt2kit finetune` does (gpt2kit.finetune.
apply_mode), gpt2kit's AdamW over the trainable parameters, then one forward + backward + optimizer step on a
batch of `--batch` x `--block` tokens. Peak RSS = getrusage(RUSAGE_SELF).ru_maxrss of that process (what the
OS had to give it, weights and Python included).

A configuration whose estimated need exceeds the machine's free memory is not started (it would take the
machine down with it): the table gives the estimate instead, marked as such. Estimate = 4 bytes x
(weights + gradients + 2 AdamW moments of the trainable ones) + activations measured from the LoRA run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/memory.py --presets gpt2 gpt2-medium gpt2-xl --block 512
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _machine import cpu_info


def mem_available_gib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def child(preset: str, mode: str, ckpt: bool, block: int, batch: int) -> dict:
    import torch

    from gpt2kit.config import FinetuneArgs, OptimArgs
    from gpt2kit.finetune import apply_mode, describe
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.train import make_optimizer

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset, block_size=max(block, 1024)))
    model = apply_mode(model, FinetuneArgs(mode=mode)).train()
    model.grad_checkpointing = ckpt
    optimizer = make_optimizer(model, OptimArgs(lr=1e-4), "cpu")
    x = torch.randint(0, model.config.vocab_size, (batch, block))
    t0 = time.perf_counter()
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), x.view(-1))
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"preset": preset, "mode": mode, "ckpt": ckpt, "peak_gib": peak, "seconds": seconds,
            "params": total, "trainable": trainable, "describe": describe(model, mode)}


def estimate_gib(params: int, trainable: int, activations_gib: float) -> float:
    return 4 * (params + 3 * trainable) / 2**30 + activations_gib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["gpt2", "gpt2-medium", "gpt2-xl"])
    ap.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "freeze", "lora"])
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--headroom-gib", type=float, default=2.0, help="leave this much memory free")
    ap.add_argument("--child", nargs=3, metavar=("PRESET", "MODE", "CKPT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        preset, mode, ckpt = args.child
        print(json.dumps(child(preset, mode, ckpt == "1", args.block, args.batch)))
        return

    from gpt2kit.config import FinetuneArgs
    from gpt2kit.finetune import apply_mode
    from gpt2kit.model import GPT, GPTConfig

    print(f"# {cpu_info()}; {mem_available_gib():.1f} GiB available; torch threads default; fp32; "
          f"block {args.block}, batch {args.batch}", file=sys.stderr)
    print("| preset | mode | grad ckpt | trainable / total params | peak RSS GiB | step s |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        with __import__("torch").device("meta"):  # parameter counts without allocating anything
            counts = {}
            for mode in args.modes:
                m = apply_mode(GPT(GPTConfig.from_preset(preset)), FinetuneArgs(mode=mode))
                counts[mode] = (sum(p.numel() for p in m.parameters()),
                                sum(p.numel() for p in m.parameters() if p.requires_grad))
        activations: dict[bool, float] = {}
        for mode in sorted(args.modes, key=lambda m: m != "lora"):  # LoRA first: it measures activations
            for ckpt in (False, True):
                params, trainable = counts[mode]
                need = estimate_gib(params, trainable, activations.get(ckpt, 0.0))
                if need > mem_available_gib() - args.headroom_gib:
                    print(f"| {preset} | {mode} | {'yes' if ckpt else 'no'} | {trainable / 1e6:,.1f}M / "
                          f"{params / 1e6:,.1f}M | **~{need:.1f} (estimated: not run, exceeds free memory)** | - |",
                          flush=True)
                    continue
                r = subprocess.run([sys.executable, __file__, "--child", preset, mode, "1" if ckpt else "0",
                                    "--block", str(args.block), "--batch", str(args.batch)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"| {preset} | {mode} | {'yes' if ckpt else 'no'} | failed: "
                          f"{r.stderr.strip().splitlines()[-1][:80]} | | |", flush=True)
                    continue
                res = json.loads(r.stdout.strip().splitlines()[-1])
                if mode == "lora":
                    activations[ckpt] = max(0.0, res["peak_gib"] - estimate_gib(params, trainable, 0.0))
                print(f"| {preset} | {mode} | {'yes' if ckpt else 'no'} | {trainable / 1e6:,.1f}M / "
                      f"{params / 1e6:,.1f}M | {res['peak_gib']:.2f} | {res['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
