"""Decode speed of gpt2kit's generation vs `transformers` `generate`, on the same weights.

A randomly initialised model of the preset is exported to a Hugging Face directory (gpt2kit.hf.export),
then loaded by both libraries (gpt2kit.checkpoint.load_model and GPT2LMHeadModel.from_pretrained). Both
decode greedily from the same random prompts with EOS disabled; the new tokens must be identical.
Decode tokens/s = B x (N - 1) / (time to generate N tokens - time to generate 1 token), so the prompt's
prefill is not counted; best of --repeats.

    python benchmarks/generate.py --preset gpt2 --batch-sizes 1 8 --prompt-len 32 --new-tokens 128

With --lookup K: batch 1, prompt-lookup speculative decoding. gpt2kit plain (prompt_lookup=0) and with
prompt lookup (prompt_lookup=K), transformers plain and with `prompt_lookup_num_tokens=K`, on each of
--cases: `random` (--prompt-len random token ids) and `code` (the first --prompt-len GPT-2 tokens of the
stdlib's textwrap.py). All four must give gpt2kit plain's tokens. Random weights decode into loops,
which prompt lookup predicts very well: the numbers are an upper bound, not what a trained model gets.

    python benchmarks/generate.py --preset gpt2 --threads 1 --lookup 10 --cases random code --prompt-len 200

With --int8: also gpt2kit with `--int8` (gpt2kit.quantize: int8 linear layers), its tokens/s and the share
of its greedy tokens equal to fp32's (on random weights; the quality cost on a trained model is the
perplexity delta of `gpt2kit eval --int8`, in docs/BENCHMARKS.md).

    python benchmarks/generate.py --preset gpt2 --batch-sizes 1 8 --int8
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch
from _machine import loadavg


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
    ap.add_argument("--lookup", type=int, default=0, metavar="K",
                    help="batch 1: compare plain and prompt-lookup decoding with up to K draft tokens")
    ap.add_argument("--cases", nargs="+", default=["random", "code"], choices=["random", "code"],
                    help="prompts for --lookup (default: random code)")
    ap.add_argument("--repetition-penalty", type=float, default=1.0,
                    help="for --lookup: > 1 keeps random weights out of loops, so most drafts are rejected "
                    "(measures the cost of drafting when it does not pay)")
    ap.add_argument("--int8", action="store_true", help="also time gpt2kit with int8 linear layers")
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

    def run_ours(prompt: torch.Tensor, n: int, lookup: int = 0, model=ours) -> torch.Tensor:
        return generate_ids(model, prompt, n, temperature=0, prompt_lookup=lookup,
                            repetition_penalty=args.repetition_penalty)

    if args.int8:
        import copy

        from gpt2kit.quantize import quantize_int8

        int8 = quantize_int8(copy.deepcopy(ours))

        def run_int8(prompt: torch.Tensor, n: int) -> torch.Tensor:
            return run_ours(prompt, n, model=int8)

    @torch.inference_mode()
    def run_hf(prompt: torch.Tensor, n: int, lookup: int = 0) -> torch.Tensor:
        extra = {"prompt_lookup_num_tokens": lookup} if lookup else {}
        if args.repetition_penalty != 1.0:
            extra["repetition_penalty"] = args.repetition_penalty
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=True, **extra)
        return out[:, prompt.shape[1] :]

    rows = []
    print(f"load average {loadavg()}; "
          f"preset {args.preset} ({model_size(ours)} parameters), fp32, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    if args.lookup:
        from gpt2kit.tokenizer import load_tokenizer

        runs = {"gpt2kit": (run_ours, 0), f"gpt2kit lookup {args.lookup}": (run_ours, args.lookup),
                "transformers": (run_hf, 0), f"transformers lookup {args.lookup}": (run_hf, args.lookup)}
        for case in args.cases:
            if case == "random":
                prompt = torch.randint(0, V, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
            else:
                import textwrap

                with open(textwrap.__file__, encoding="utf-8") as f:
                    ids = load_tokenizer("gpt2").encode(f.read())[: args.prompt_len]
                prompt = torch.tensor([ids])
            ref = run_ours(prompt, args.new_tokens)
            res = {"case": case, "prompt_len": prompt.shape[1], "load_before": loadavg()}
            for name, (fn, k) in runs.items():
                out = fn(prompt, args.new_tokens, k)  # also warms up
                t_full = best_time(lambda fn=fn, k=k, p=prompt: fn(p, args.new_tokens, k), args.repeats)
                t_one = best_time(lambda fn=fn, k=k, p=prompt: fn(p, 1, k), args.repeats)
                res[name] = (args.new_tokens - 1) / (t_full - t_one)
                res[name + " same_tokens"] = torch.equal(out, ref)
            res["load_after"] = loadavg()
            rows.append(res)
            base = res["transformers"]
            print(f"{case} prompt ({res['prompt_len']} tokens), load {res['load_before']} -> {res['load_after']}:")
            for name in runs:
                print(f"  {name:<24} {res[name]:7.1f} tok/s  {res[name] / base:5.2f}x transformers  "
                      f"identical tokens: {res[name + ' same_tokens']}", flush=True)
            print("  new tokens:", ref[0, :40].tolist(), "...", flush=True)
        if args.json:
            print(json.dumps(rows, indent=2))
        return
    for B in args.batch_sizes:
        prompt = torch.randint(0, V, (B, args.prompt_len), generator=torch.Generator().manual_seed(B))
        a, b = run_ours(prompt, args.new_tokens), run_hf(prompt, args.new_tokens)  # also warms up
        same = torch.equal(a, b)
        match = float((a == b).float().mean())
        res = {"batch": B}
        runs = [("gpt2kit", run_ours), ("transformers", run_hf)] + ([("int8", run_int8)] if args.int8 else [])
        for name, fn in runs:
            t_full = best_time(lambda fn=fn, p=prompt: fn(p, args.new_tokens), args.repeats)
            t_one = best_time(lambda fn=fn, p=prompt: fn(p, 1), args.repeats)
            res[name] = B * (args.new_tokens - 1) / (t_full - t_one)
        res["speedup"] = res["gpt2kit"] / res["transformers"]
        res["same_tokens"] = same
        res["token_match"] = match
        rows.append(res)
        print(f"batch {B}: gpt2kit {res['gpt2kit']:.1f} tok/s, transformers {res['transformers']:.1f} tok/s, "
              f"speedup {res['speedup']:.2f}x, identical tokens: {same} ({match:.1%})", flush=True)
        if args.int8:
            q = run_int8(prompt, args.new_tokens)
            res["int8_speedup"] = res["int8"] / res["gpt2kit"]
            res["int8_token_match"] = float((q == a).float().mean())
            print(f"         gpt2kit --int8 {res['int8']:.1f} tok/s, {res['int8_speedup']:.2f}x gpt2kit fp32, "
                  f"greedy tokens equal to fp32's: {res['int8_token_match']:.1%}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
