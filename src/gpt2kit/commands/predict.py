"""`gpt2kit predict --model RUN --data FILE | --text TEXT`: label texts with a fine-tuned classifier."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

ORDER = 55
CHUNK = 1024  # texts read, predicted and written at a time: memory does not grow with the file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="label texts with a classifier (from `finetune --task classify`)",
        description="Predict a label and class probabilities for each text: --text (repeatable), or --data "
        "(a .jsonl/.csv/.parquet table with a text column, or a text file with one text per line). When the "
        "table also has the label column, accuracy and macro-F1 are reported (scoring mode).",
    )
    p.add_argument("--model", required=True, help="classifier: run dir, checkpoint dir or exported Hugging Face dir")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--data", help="a table (.jsonl/.csv/.parquet) or a text file with one text per line")
    p.add_argument("--text-column", help="text column of --data (default: the run's data.text_column, else text)")
    p.add_argument("--label-column", help="label column for scoring (default: the run's data.label_column, else "
                   "label; scored only when --data has it)")
    p.add_argument("--out", help="write predictions to this CSV file (default: a table on stdout)")
    p.add_argument("--json", action="store_true", help="print one JSON object per text instead of a table")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.add_argument("--tokenizer", help="tokenizer to use when none is saved with the model")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    p.set_defaults(func=run)


def _rows(path: Path, text_column: str, label_column: str) -> Iterator[tuple[str, object]]:
    """(text, label or None) of every row; a plain text file is one text per non-empty line."""
    from gpt2kit.sources import TABLE_SUFFIXES, iter_rows

    if path.suffix.lower() not in TABLE_SUFFIXES:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n"), None
        return
    first = True
    has_label = False
    for row in iter_rows(str(path), [text_column], column_keys=["data.text_column"]):
        if first:
            has_label, first = label_column in row, False
        yield ("" if row[text_column] is None else str(row[text_column])), (row.get(label_column) if has_label else None)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from gpt2kit.checkpoint import run_config
    from gpt2kit.classify import predict_proba, scores
    from gpt2kit.errors import UserError, require_path
    from gpt2kit.generate import load_model_and_tokenizer

    if bool(args.text) == bool(args.data):
        raise UserError("give the texts to label with --text TEXT (repeatable) or --data FILE, one of the two")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    cfg = run_config(args.model)
    text_column = args.text_column or (cfg.data.text_column if cfg else "text")
    label_column = args.label_column or (cfg.data.label_column if cfg else "label")
    truncation = cfg.data.truncation_side if cfg else "left"
    path = None
    if args.data:
        path = require_path(args.data, "--data")
        if not path.is_file():
            raise UserError(f"--data {path} is not a file; pass a .jsonl/.csv/.parquet table or a text file")
    model, tok = load_model_and_tokenizer(args.model, args.tokenizer, args.device, kind="classifier")
    labels = model.labels
    index = {name: i for i, name in enumerate(labels)}
    rows = ((t, None) for t in args.text) if args.text else _rows(path, text_column, label_column)

    out_path = Path(args.out) if args.out else None
    tmp = None
    if out_path is not None:
        if out_path.is_dir():
            raise UserError(f"--out {out_path} is a directory; pass a file name such as predictions.csv")
        if not out_path.parent.exists():
            raise UserError(f"--out: directory {out_path.parent} does not exist; create it first")
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        sink = open(tmp, "w", newline="", encoding="utf-8")  # renamed into place only when all went well
    else:
        sink = sys.stdout
    writer = csv.writer(sink) if out_path is not None else None
    if writer:
        writer.writerow(["text", "label", "score", *[f"prob_{name}" for name in labels]])
    confusion = [[0] * len(labels) for _ in labels]
    scored = done = 0
    bar = tqdm(desc="predict", unit=" texts", file=sys.stderr, disable=not (path and (out_path or args.json)),
               delay=1.0)
    try:
        chunk: list[tuple[str, object]] = []

        def flush() -> None:
            nonlocal scored, done
            probs = predict_proba(model, tok, [t for t, _ in chunk], batch_size=args.batch_size,
                                  truncation=truncation)
            for (text, gold), p in zip(chunk, probs.tolist()):
                k = max(range(len(p)), key=p.__getitem__)
                if gold is not None and str(gold) != "":
                    if str(gold) not in index:
                        raise UserError(f"label {gold!r} in {path} was not seen in training (the model knows "
                                        f"{', '.join(labels)}); fix the data or pass another --label-column")
                    confusion[index[str(gold)]][k] += 1
                    scored += 1
                if writer:
                    writer.writerow([text, labels[k], f"{p[k]:.6f}", *[f"{x:.6f}" for x in p]])
                elif args.json:
                    sink.write(json.dumps({"text": text, "label": labels[k], "score": p[k],
                                           "probs": dict(zip(labels, p))}, ensure_ascii=False) + "\n")
                else:
                    sink.write(f"{labels[k]}\t{p[k]:.4f}\t{text}\n")
            bar.update(len(chunk))
            done += len(chunk)
            chunk.clear()

        for row in rows:
            chunk.append(row)
            if len(chunk) == CHUNK:
                flush()
        if chunk:
            flush()
        if done == 0 and args.data:  # before the rename: a failed run must not replace an earlier --out file
            raise UserError(f"no texts in {path}; check the file and --text-column")
        if writer:
            sink.close()
            tmp.replace(out_path)
    except BaseException:
        if tmp is not None:
            sink.close()
            tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    if scored:
        import numpy as np

        s = scores(np.array(confusion))
        print(f"scored {scored:,} labelled texts: accuracy {s['val_acc']:.4f}, macro-F1 {s['val_f1']:.4f}",
              file=sys.stderr)
    if out_path is not None:
        print(f"wrote {out_path}", file=sys.stderr)
    return 0
