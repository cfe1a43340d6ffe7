"""Load test of `gpt2kit serve` on 127.0.0.1: many concurrent clients against one client at a time.

A randomly initialised model of the preset (GPT-2's vocabulary) is exported to a temporary Hugging Face
directory and served by the real command (`python -m gpt2kit serve --port 0`, one subprocess per
--max-batch value). Then, on the same server:
- sequential: one client sends --sequential requests one after another;
- concurrent: --clients clients each send --requests requests back to back (all at once at the start).
Every request: a distinct random --prompt-len-token prompt (token ids), --max-tokens new tokens, sampling
at --temperature (default 1) with its own seed, not streamed (with --stream: streamed, and the time to the
first token is measured). Each request has a --request-timeout; the run fails if any request errs, times
out or returns fewer tokens than asked without a reason (EOS). Latency = send to last byte. tokens/s =
completion tokens of all requests / wall time of the phase.

    python benchmarks/serve.py --preset small --clients 32 --requests 5 --max-tokens 64 --max-batch 16 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import torch
from _machine import cpu_name, loadavg


def export_model(preset: str, out: str) -> str:
    from gpt2kit.hf import export
    from gpt2kit.model import GPT, GPTConfig, model_size
    from gpt2kit.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset, vocab_size=tok.vocab_size)).eval()
    export(model, out, tokenizer=tok)
    return model_size(model)


def start_server(model_dir: str, max_batch: int, max_queue: int, threads: int | None,
                 log_path: str) -> tuple[subprocess.Popen, str]:
    """The real command; its JSON logs go to a file (an undrained pipe would fill and block it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "gpt2kit", "serve", "--model", model_dir, "--port", "0",
                             "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--device", "cpu"],
                            stderr=log, text=True, env=env)
    log.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        for line in open(log_path):
            row = json.loads(line)
            if "url" in row:
                return proc, row["url"]
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not start; see {log_path}")


async def one_request(client: httpx.AsyncClient, url: str, args, rng: random.Random) -> dict:
    body = {"prompt": [rng.randrange(50256) for _ in range(args.prompt_len)], "max_tokens": args.max_tokens,
            "temperature": args.temperature, "seed": rng.randrange(2**31), "stream": args.stream}
    t0 = time.perf_counter()
    first = None
    if args.stream:
        tokens, reason = 0, None
        async with client.stream("POST", url + "/v1/completions", json={**body, "logprobs": 0,
                                 "stream_options": {"include_usage": True}}) as r:
            status = r.status_code
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if first is None and ev.get("choices"):
                    first = time.perf_counter() - t0
                if ev.get("usage"):
                    tokens = ev["usage"]["completion_tokens"]
                for c in ev.get("choices", []):
                    reason = c["finish_reason"] or reason
    else:
        r = await client.post(url + "/v1/completions", json=body)
        status = r.status_code
        out = r.json() if status == 200 else {}
        tokens = out.get("usage", {}).get("completion_tokens", 0)
        reason = out["choices"][0]["finish_reason"] if out else None
    return {"status": status, "latency": time.perf_counter() - t0, "ttft": first, "tokens": tokens, "finish": reason}


async def run_phase(url: str, clients: int, requests: int, args, seed: int) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=args.request_timeout, limits=limits) as client:
        async def worker(i: int) -> list[dict]:
            rng = random.Random(seed * 1000 + i)
            out = []
            for _ in range(requests):
                try:
                    out.append(await one_request(client, url, args, rng))
                except httpx.HTTPError as e:  # a timeout or a dropped connection: a lost request
                    out.append({"status": type(e).__name__, "latency": None, "ttft": None, "tokens": 0, "finish": None})
            return out

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(i) for i in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200 and (r["tokens"] == args.max_tokens or r["finish"] == "stop")]
    lat = sorted(r["latency"] for r in ok)
    ttft = sorted(r["ttft"] for r in ok if r["ttft"] is not None)

    def pct(xs: list[float], q: float) -> float | None:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None

    return {"clients": clients, "requests": len(results), "ok": len(ok),
            "failed": [r["status"] for r in results if r not in ok], "wall_s": wall,
            "tokens": sum(r["tokens"] for r in ok), "tok_s": sum(r["tokens"] for r in ok) / wall,
            "p50_s": statistics.median(lat) if lat else None, "p99_s": pct(lat, 0.99), "max_s": lat[-1] if lat else None,
            "ttft_p50_s": statistics.median(ttft) if ttft else None, "ttft_p99_s": pct(ttft, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=5, help="requests per client (default 5)")
    ap.add_argument("--sequential", type=int, default=10, help="requests of the one-client baseline (default 10)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-batch", type=int, nargs="+", default=[16, 32], help="server --max-batch values")
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1: sampling)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--stream", action="store_true", help="stream the responses and measure time to first token")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        size = export_model(args.preset, f"{tmp}/model")
        rows = []
        for max_batch in args.max_batch:
            proc, url = start_server(f"{tmp}/model", max_batch, args.clients * 2, args.threads,
                                     f"{tmp}/serve-{max_batch}.log")
            try:
                asyncio.run(run_phase(url, 2, 1, args, seed=0))  # warm-up
                seq = asyncio.run(run_phase(url, 1, args.sequential, args, seed=1))
                conc = asyncio.run(run_phase(url, args.clients, args.requests, args, seed=2))
                health = httpx.get(url + "/health").json()
            finally:
                proc.terminate()
                proc.wait(60)
            rows.append({"max_batch": max_batch, "sequential": seq, "concurrent": conc,
                         "max_batch_seen": health["max_batch_seen"], "loadavg": loadavg()})
    meta = {"preset": args.preset, "params": size, "cpu": cpu_name(), "cores": os.cpu_count(),
            "torch": torch.__version__, "max_tokens": args.max_tokens, "prompt_len": args.prompt_len,
            "stream": args.stream, "temperature": args.temperature}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=1))
        return
    print(f"{args.preset} ({size}), {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}; prompt "
          f"{args.prompt_len} tokens, {args.max_tokens} new tokens per request, temperature {args.temperature}, "
          f"stream={args.stream}")
    print("| --max-batch | clients | requests | ok | p50 s | p99 s | TTFT p50 s | tokens/s | vs one client | largest batch |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    for row in rows:
        seq, conc = row["sequential"], row["concurrent"]
        for phase in (seq, conc):
            print(f"| {row['max_batch']} | {phase['clients']} | {phase['requests']} | {phase['ok']} | {f(phase['p50_s'])} | "
                  f"{f(phase['p99_s'])} | {f(phase['ttft_p50_s'])} | {phase['tok_s']:.1f} | "
                  f"{phase['tok_s'] / seq['tok_s']:.2f}x | {row['max_batch_seen'] if phase is conc else ''} |")
        if conc["failed"]:
            print(f"FAILED requests with --max-batch {row['max_batch']}: {conc['failed']}")
    if any(r["concurrent"]["failed"] or r["sequential"]["failed"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
