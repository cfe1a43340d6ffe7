"""`gpt2kit eval --model SRC --data SRC | --humaneval`: perplexity and bits per byte, or HumanEval pass@k."""

from __future__ import annotations

import argparse
import json
import sys

from gpt2kit.commands import add_int8_flag

ORDER = 60


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model: perplexity / bits per byte, or HumanEval pass@k",
        description="With --data: token-weighted loss, perplexity and bits per byte over the documents of "
        "a source (file, directory, .jsonl/.csv/.parquet, Hugging Face dataset, `stdlib`), each document "
        "scored whole with a sliding window. With --humaneval: pass@k on OpenAI's HumanEval problems, "
        "each completion run in an operating-system sandbox (bubblewrap or unshare namespaces, rlimits) and "
        "judged by a separate process it cannot reach.",
    )
    p.add_argument("--model", required=True, help="run dir, checkpoint dir, Hugging Face dir or hub name")
    p.add_argument("--tokenizer", help="tokenizer to use when none is saved with the model")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    add_int8_flag(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    d = p.add_argument_group("perplexity (--data)")
    d.add_argument("--data", action="append", help="a data source (repeat for several)")
    d.add_argument("--context", type=int, help="tokens the model reads per window (default: block_size); a "
                   "prepared directory without --context/--stride is read in packed blocks, as training evaluates")
    d.add_argument("--stride", type=int, help="tokens a window moves on (default: context / 2)")
    d.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    d.add_argument("--limit-docs", type=int, help="evaluate only the first N documents")
    d.add_argument("--text-column", help="column holding the text in tables / datasets (default text)")
    d.add_argument("--include", action="append", help="glob of files to read in directories (e.g. '*.py')")
    d.add_argument("--sample-by", choices=("file", "line", "paragraph", "auto"), default="file",
                   help="documents of a text file: whole file (default), line, paragraph or auto")
    d.add_argument("--split", help="split of a prepared directory (default val) or a Hugging Face dataset")
    h = p.add_argument_group("HumanEval (--humaneval)")
    h.add_argument("--humaneval", action="store_true", help="run HumanEval")
    h.add_argument("--num-samples", type=int, default=1, help="completions per problem, n (default 1)")
    h.add_argument("--k", default="1,10,100", help="pass@k values, those <= n are reported (default 1,10,100)")
    h.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: 0 = greedy for n=1, else 0.8)")
    h.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    h.add_argument("--max-new-tokens", type=int, default=384, help="per completion (default 384)")
    h.add_argument("--limit", type=int, help="only the first N problems")
    h.add_argument("--timeout", type=float, default=5.0, help="seconds per program (default 5)")
    h.add_argument("--workers", type=int, default=2, help="programs run in parallel (default 2)")
    h.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    h.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "unshare", "none"),
                   help="where generated code runs: auto (default) = the strongest that works here, bwrap "
                   "(bubblewrap), unshare (util-linux namespaces), or none (rlimits only: never for "
                   "untrusted models); see docs/RELIABILITY.md")
    h.add_argument("--samples-out", help="write every completion and its result to this .jsonl file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gpt2kit.errors import UserError

    if not args.data and not args.humaneval:
        raise UserError("nothing to evaluate; pass --data SRC (perplexity) or --humaneval")
    for flag in ("batch_size", "num_samples", "max_new_tokens", "workers"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("context", "stride", "limit", "limit_docs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    ks = parse_ks(args.k)
    if args.humaneval:  # before the model loads: a machine without a sandbox is one error line, at once
        from gpt2kit.humaneval import check_timeout, resolve_sandbox

        check_timeout(args.timeout)
        args.sandbox = resolve_sandbox(args.sandbox)

    from gpt2kit.generate import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(args.model, args.tokenizer, args.device, int8=args.int8)
    results: dict = {"model": args.model}
    if args.data:
        results["data"] = run_perplexity(args, model, tok)
    if args.humaneval:
        results["humaneval"] = run_humaneval(args, model, tok, ks)
    if args.json:
        out = results if args.data and args.humaneval else results.get("data") or results["humaneval"]
        print(json.dumps(out, indent=2).replace("NaN", "null"))
    else:
        print_table(results)
    return 0


def parse_ks(text: str) -> list[int]:
    from gpt2kit.errors import UserError

    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise UserError(f"--k must be positive integers separated by commas (e.g. 1,10,100), got {text!r}")
    return ks


def run_perplexity(args: argparse.Namespace, model, tok) -> dict:
    from itertools import islice
    from pathlib import Path

    from gpt2kit.evaluate import evaluate_prepared, evaluate_texts
    from gpt2kit.sources import open_sources

    context = args.context or model.config.block_size
    stride = args.stride or max(1, context // 2)
    if len(args.data) == 1 and (Path(args.data[0]).expanduser() / "meta.json").is_file():  # `gpt2kit prepare` output
        split = args.split or "val"
        from gpt2kit.errors import UserError
        from gpt2kit.prepare import read_meta

        made_by = read_meta(args.data[0]).get("tokenizer_sha256")
        if made_by and made_by != tok.sha256:
            raise UserError(f"{args.data[0]} was prepared with another tokenizer than the model's; "
                            "prepare it again with the model's tokenizer (gpt2kit prepare --tokenizer MODEL_DIR)")
        split_tokens = read_meta(args.data[0])["splits"].get(split, {}).get("tokens", 0)
        if args.context is None and args.stride is None and args.limit_docs is None \
                and split_tokens > model.config.block_size:  # a split shorter than one block: windows
            # As training evaluates: consecutive packed blocks, so this equals a run's reported val loss.
            from gpt2kit.evaluate import evaluate_blocks

            res = evaluate_blocks(model, args.data[0], split, batch_size=args.batch_size, progress=True)
            block = model.config.block_size
            return {**res.to_dict(), "context": block, "stride": block, "split": split, "method": "blocks"}
        res = evaluate_prepared(model, args.data[0], split, context=context, stride=stride,
                                batch_size=args.batch_size, limit_docs=args.limit_docs, progress=True)
        return {**res.to_dict(), "context": context, "stride": stride, "split": split, "method": "windows"}
    corpus = open_sources(args.data, text_column=args.text_column, include=args.include, split=args.split,
                          sample_by=args.sample_by)
    texts = (doc.text for doc in corpus)
    if args.limit_docs:
        texts = islice(texts, args.limit_docs)
    res = evaluate_texts(model, tok, texts, context=context, stride=stride, batch_size=args.batch_size,
                         progress=True)
    return {**res.to_dict(), "context": context, "stride": stride, "method": "windows"}


def run_humaneval(args: argparse.Namespace, model, tok, ks: list[int]) -> dict:
    from gpt2kit.humaneval import check_completions, generate_completions, load_problems, summarize

    problems = load_problems(args.limit)
    n = args.num_samples
    temperature = args.temperature if args.temperature is not None else (0.0 if n == 1 else 0.8)

    def progress(i: int, total: int) -> None:
        print(f"humaneval: generated {i}/{total} problems", file=sys.stderr, flush=True)

    completions = generate_completions(model, tok, problems, num_samples=n, max_new_tokens=args.max_new_tokens,
                                       temperature=temperature, top_p=args.top_p, seed=args.seed,
                                       progress=progress)
    print(f"humaneval: running {sum(map(len, completions.values()))} programs in sandbox {args.sandbox}",
          file=sys.stderr, flush=True)
    results = check_completions(problems, completions, timeout=args.timeout, workers=args.workers,
                                sandbox=args.sandbox)
    if args.samples_out:
        with open(args.samples_out, "w", encoding="utf-8") as f:
            for task, rs in results.items():
                for completion, r in zip(completions[task], rs):
                    row = {"task_id": task, "completion": completion, "passed": r.passed, "result": r.result}
                    f.write(json.dumps(row) + "\n")
    return {**summarize(results, ks), "temperature": temperature, "max_new_tokens": args.max_new_tokens,
            "sandbox": args.sandbox.name}


def print_table(results: dict) -> None:
    rows = []
    if "data" in results:
        d = results["data"]
        rows += [("loss (nats/token)", f"{d['loss']:.4f}"), ("perplexity", f"{d['perplexity']:.3f}"),
                 ("bits per byte", "n/a (bytes unknown)" if d["bits_per_byte"] is None else f"{d['bits_per_byte']:.4f}"),
                 ("tokens", str(d["tokens"])),
                 ("bytes", str(d["bytes"])), ("documents", str(d["documents"])),
                 ("context / stride", f"{d['context']} / {d['stride']}"
                  + (" (packed blocks, as training evaluates)" if d.get("method") == "blocks" else " (per document)"))]
    if "humaneval" in results:
        h = results["humaneval"]
        rows += [(k, f"{v:.4f}") for k, v in h.items() if k.startswith("pass@")]
        rows += [("problems", str(h["problems"])), ("samples per problem", str(h["samples_per_problem"])),
                 ("sandbox", h["sandbox"])]
    width = max(len(name) for name, _ in rows)
    print(f"{'metric':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
