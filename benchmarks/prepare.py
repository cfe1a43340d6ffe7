"""Benchmark: `gpt2kit prepare` vs `datasets.map` + run_clm-style `group_texts`, same tokenizer, same corpus.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/prepare.py [--corpus stdlib] [--workers 2] [--repeat 3]

Each path runs in its own subprocess (so peak memory is its own): MB/s is UTF-8 bytes of the documents over
wall time, reading included; peak memory is the max RSS of the main process and of its largest child.
`--repeat N` also prepares the corpus N times over (N x the data) to show memory does not grow with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time


def peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own, 1), round(child, 1)


def run_gpt2kit(corpus: list[str], workers: int, out: str) -> dict:
    from gpt2kit.prepare import prepare
    from gpt2kit.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    t0 = time.perf_counter()
    meta = prepare(corpus, tok, out, workers=workers, force=True, progress=False)
    seconds = time.perf_counter() - t0
    n_bytes = sum(s["bytes"] for s in meta["splits"].values())
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    return {"seconds": seconds, "mb": n_bytes / 1e6, "tokens": tokens, "engine": meta["engine"]}


def run_datasets(corpus: list[str], workers: int, out: str) -> dict:
    """The CodeParrot / run_clm recipe: Dataset of documents -> map(tokenize) -> map(group_texts)."""
    from itertools import chain

    import datasets
    from transformers import PreTrainedTokenizerFast

    from gpt2kit.sources import open_sources
    from gpt2kit.tokenizer import load_tokenizer

    datasets.disable_progress_bars()
    tok = load_tokenizer("gpt2")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok._tk, eos_token="<|endoftext|>")
    block_size = 1024
    t0 = time.perf_counter()

    def gen():
        for d in open_sources(corpus):
            yield {"content": d.text}

    ds = datasets.Dataset.from_generator(gen, cache_dir=out)
    n_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in ds["content"])

    def tokenize(batch):
        return hf(batch["content"])

    tokenized = ds.map(tokenize, batched=True, num_proc=workers if workers > 1 else None,
                       remove_columns=["content"])

    def group_texts(examples):  # run_clm.py (current version: chain, not the quadratic sum(lists, []))
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = len(concatenated["input_ids"])
        total = (total // block_size) * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True, num_proc=workers if workers > 1 else None)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "mb": n_bytes / 1e6, "tokens": len(grouped) * block_size, "engine": "datasets.map"}


def child(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_DATASETS_CACHE"] = tmp
        fn = run_gpt2kit if args.child == "gpt2kit" else run_datasets
        r = fn(args.corpus, args.workers, os.path.join(tmp, "out"))
    r["peak_mb"], r["peak_child_mb"] = peak_mb()
    r["mb_s"] = r["mb"] / r["seconds"]
    print(json.dumps(r))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", nargs="+", default=["stdlib"])
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--repeat", type=int, default=3, help="also run gpt2kit on the corpus repeated N times")
    p.add_argument("--child", choices=["gpt2kit", "datasets"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    def run(kind: str, corpus: list[str]) -> dict:
        cmd = [sys.executable, __file__, "--child", kind, "--workers", str(args.workers), "--corpus", *corpus]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    results = {
        "gpt2kit": run("gpt2kit", args.corpus),
        "datasets": run("datasets", args.corpus),
    }
    if args.repeat > 1:
        results[f"gpt2kit x{args.repeat}"] = run("gpt2kit", args.corpus * args.repeat)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, workers {args.workers}, "
          f"load average after the run {load}")
    print("| path | data MB | tokens | seconds | MB/s | peak RSS main / largest child (MB) |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} ({r['engine']}) | {r['mb']:.1f} | {r['tokens']:,} | {r['seconds']:.1f} | "
              f"{r['mb_s']:.1f} | {r['peak_mb']:.0f} / {r['peak_child_mb']:.0f} |")
    speedup = results["gpt2kit"]["mb_s"] / results["datasets"]["mb_s"]
    print(f"speedup: {speedup:.1f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
