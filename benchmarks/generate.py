"""Decode speed of gpt2kit's generation vs `transformers` `generate`, on the same weights.

A randomly initialised model of the preset is exported to a Hugging Face directory (gpt2kit.hf.export),
then loaded by both libraries (gpt2kit.checkpoint.load_model and GPT2LMHeadModel.from_pretrained). Both
decode greedily from the same random prompts with EOS disabled; the new tokens must be identical.
Decode tokens/s = B x (N - 1) / (time to generate N tokens - time to generate 1 token), so the prompt's
prefill is not counted; best of --repeats.

    python benchmarks/generate.py --preset gpt2 --batch-sizes 1 8 --prompt-len 32 --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import transformers
    from transformers import GPT2LMHeadModel

    from gpt2kit.checkpoint import load_model
    from gpt2kit.generate import generate_ids
    from gpt2kit.hf import export
    from gpt2kit.model import GPT, GPTConfig, model_size

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        export(GPT(GPTConfig.from_preset(args.preset)), f"{tmp}/hf")
        ours = load_model(f"{tmp}/hf").eval()
        hf = GPT2LMHeadModel.from_pretrained(f"{tmp}/hf").eval()
    V = ours.config.vocab_size
    hf.generation_config.pad_token_id = 0
    hf.generation_config.eos_token_id = None

    def run_ours(prompt: torch.Tensor, n: int) -> torch.Tensor:
        return generate_ids(ours, prompt, n, temperature=0)

    @torch.inference_mode()
    def run_hf(prompt: torch.Tensor, n: int) -> torch.Tensor:
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=True)
        return out[:, prompt.shape[1] :]

    rows = []
    print(f"load average {open('/proc/loadavg').read().split()[0] if platform.system() == 'Linux' else '?'}; "
          f"preset {args.preset} ({model_size(ours)} parameters), fp32, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    for B in args.batch_sizes:
        prompt = torch.randint(0, V, (B, args.prompt_len), generator=torch.Generator().manual_seed(B))
        a, b = run_ours(prompt, args.new_tokens), run_hf(prompt, args.new_tokens)  # also warms up
        same = torch.equal(a, b)
        match = float((a == b).float().mean())
        res = {"batch": B}
        for name, fn in (("gpt2kit", run_ours), ("transformers", run_hf)):
            t_full = best_time(lambda fn=fn, p=prompt: fn(p, args.new_tokens), args.repeats)
            t_one = best_time(lambda fn=fn, p=prompt: fn(p, 1), args.repeats)
            res[name] = B * (args.new_tokens - 1) / (t_full - t_one)
        res["speedup"] = res["gpt2kit"] / res["transformers"]
        res["same_tokens"] = same
        res["token_match"] = match
        rows.append(res)
        print(f"batch {B}: gpt2kit {res['gpt2kit']:.1f} tok/s, transformers {res['transformers']:.1f} tok/s, "
              f"speedup {res['speedup']:.2f}x, identical tokens: {same} ({match:.1%})", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
