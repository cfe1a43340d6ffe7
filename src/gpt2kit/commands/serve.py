"""`gpt2kit serve --model SRC [--host 127.0.0.1] [--port 8000]`: an HTTP completion server + playground."""

from __future__ import annotations

import argparse

from gpt2kit.commands import add_int8_flag

ORDER = 55


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP: OpenAI-style completions API and a playground page",
        description="POST /v1/completions (OpenAI's completions API: prompt(s), max_tokens, temperature, "
        "top_p, top_k, n, stop, seed, stream, logprobs), GET /v1/models, GET /health, and a playground page "
        "at /. Requests that arrive together are decoded together. A completion with a seed equals "
        "`gpt2kit generate` with that seed. JSON access logs on stderr; SIGTERM lets in-flight requests "
        "finish.",
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint dir, Hugging Face dir or hub name")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000,
                   help="port (default 8000; 0 = any free port, logged at start)")
    p.add_argument("--model-name", help="the model id clients send and /v1/models shows (default: --model's "
                   "directory name)")
    p.add_argument("--tokenizer", help="tokenizer to use when none is saved with the model")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    add_int8_flag(p)
    g = p.add_argument_group("limits")
    g.add_argument("--max-tokens", type=int, default=512, help="most new tokens per completion (default 512)")
    g.add_argument("--max-batch", type=int, default=16, help="completions decoded together (default 16)")
    g.add_argument("--max-queue", type=int, default=64,
                   help="completions waiting for the batch; beyond it requests get 503 (default 64)")
    g.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a request may take, waiting included; then 504 (default 600)")
    g.add_argument("--truncate", choices=("error", "left"), default="error",
                   help="a prompt with no room for max_tokens in the context: 413 (error, default) or keep "
                   "its last tokens (left)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds in-flight requests may take to finish before they are "
                   "cancelled (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gpt2kit.errors import UserError
    from gpt2kit.serve import Limits, serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535 (0 = any free port), got {args.port}")
    if not 0 <= args.shutdown_timeout < float("inf"):
        raise UserError(f"--shutdown-timeout must be a number of seconds >= 0, got {args.shutdown_timeout}")
    limits = Limits(max_tokens=args.max_tokens, max_batch=args.max_batch, max_queue=args.max_queue,
                    timeout=args.timeout, truncate=args.truncate)
    return serve(args.model, args.host, args.port, limits=limits, name=args.model_name,
                 tokenizer=args.tokenizer, device=args.device, shutdown_timeout=args.shutdown_timeout,
                 int8=args.int8)
