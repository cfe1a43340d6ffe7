"""Classification (issue 10, "Must hold"): a tiny GPT-2 learns a keyword task to >= 95% validation accuracy with
`gpt2kit finetune --task classify`; left-padded batches give each text's logits alone; the export is a
`GPT2ForSequenceClassification` whose logits and `pipeline("text-classification")` labels are gpt2kit's and
which imports back; LoRA/freeze train the head; kill -9 + `--resume auto` is bitwise; bad input is one `error:`
line; balanced class weights; `gpt2kit predict` streams a large file. Tiny models saved by `transformers` and
loaded through the real `--init` path, one CPU thread (fast and steady on a busy machine)."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import kill9_when
from safetensors.torch import load_file

from gpt2kit.checkpoint import find_checkpoint, load_gpt2kit_dir, load_model
from gpt2kit.classify import (
    ClassifyTask,
    GPTClassifier,
    class_weights,
    collate_left,
    encode,
    predict_proba,
)
from gpt2kit.cli import main
from gpt2kit.model import GPTConfig
from gpt2kit.tokenizer import load_tokenizer, train_tokenizer

NOUNS = ["movie", "film", "show", "book", "story", "play", "song", "album", "meal", "game", "trip", "hotel"]
WORDS = {"negative": ["awful", "terrible", "boring", "dreadful", "poor"],
         "positive": ["great", "wonderful", "excellent", "lovely", "superb"],
         "neutral": ["okay", "average", "fine", "ordinary", "so-so"]}
FILLERS = ["", "", "I think", "honestly", "in the end", "yesterday", "and my friends said so too",
           "after a long evening at home with the whole family around the table",
           "from the very start to the very finish without a single pause for breath"]


def sentences(n: int, seed: int, classes=("negative", "positive")) -> list[tuple[str, str]]:
    """(text, label): the label is decided by one keyword, anywhere in a short or long sentence."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        label = classes[i % len(classes)]
        text = f"the {r.choice(NOUNS)} was {r.choice(WORDS[label])} {r.choice(FILLERS)}".strip()
        if r.random() < 0.3:
            text = f"{r.choice(FILLERS[2:])}, {text}"
        out.append((text, label))
    return out


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_a_private_cache(tmp_path_factory):
    """One torch thread (two threads on two busy cores are ~10x slower for a 40K-parameter model), prepared
    data in a temporary cache, never the Hub."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPT2KIT_CACHE", str(tmp_path_factory.mktemp("gpt2kit-cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("classify")


@pytest.fixture(scope="module")
def tok_dir(work) -> Path:
    """A byte-level BPE (vocab 400) trained on the toy sentences, saved as a tokenizer directory."""
    text = work / "all.txt"
    text.write_text("".join(f"{t}\n" for t, _ in sentences(600, 123, ("negative", "positive", "neutral"))))
    tok = train_tokenizer([str(text)], vocab_size=400)
    tok.save(work / "tok")
    return work / "tok"


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def hf(work, tok) -> Path:
    """A tiny GPT-2 LM saved by transformers (no tokenizer next to it: --tokenizer gives it)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=tok.vocab_size)
                    ).save_pretrained(work / "tiny-gpt2")
    return work / "tiny-gpt2"


def ft(init, data, out, tok_dir, *extra) -> list[str]:
    return ["finetune", "--task", "classify", "--init", str(init), "--data", str(data), "--tokenizer", str(tok_dir),
            "--out", str(out), *map(str, extra)]


FAST = ["--train.precision", "fp32", "--optim.lr", "3e-3"]


@pytest.fixture(scope="module")
def toy_csv(work) -> Path:
    return write_csv(work / "toy.csv", sentences(400, 0))


@pytest.fixture(scope="module")
def run(work, hf, tok_dir, toy_csv) -> Path:
    """The classifier most tests use: string labels from a CSV, finetune defaults + a higher LR."""
    out = work / "run"
    assert main(ft(hf, toy_csv, out, tok_dir, *FAST, "--train.epochs", "5")) == 0
    return out


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rows(run) if "loss" in r}


def latest(run: Path) -> Path:
    ckpt = find_checkpoint(run)
    assert ckpt is not None, f"no checkpoint in {run}"
    return ckpt


def one_error_line(err: str, *needles: str) -> str:
    """Exactly one line `error: ...`, the last one on stderr, and no traceback."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[-1], (needle, err)
    return lines[-1]


def predict_json(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *map(str, args), "--json"]) == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# ---------------------------------------------------------------- 1. it learns; labels as names or integers


def test_tiny_model_learns_the_toy_task_to_95_percent(run, work, capsys):
    val = [r for r in rows(run) if "val_loss" in r]
    assert val and all({"val_loss", "val_acc", "val_f1"} <= set(r) for r in val), val
    assert not any("val_ppl" in r or "val_bpb" in r for r in val)  # LM metrics mean nothing here
    best = min(val, key=lambda r: r["val_loss"])
    assert best["val_acc"] >= 0.95 and best["val_f1"] >= 0.95, val
    assert best["val_loss"] < 0.3  # far below ln 2, where an untrained head starts
    assert (run / "confusion.png").stat().st_size > 1000
    meta = json.loads((latest(run) / "config.json").read_text())
    assert meta["classifier"] == {"labels": ["negative", "positive"]}
    # new sentences, scoring mode of predict: the run generalises, and predict reports it
    fresh = write_csv(work / "fresh.csv", sentences(120, 99))
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--data", str(fresh), "--out", str(work / "fresh-pred.csv")]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("scored 120 labelled texts: accuracy"))
    assert float(line.split("accuracy ")[1].split(",")[0]) >= 0.95, err
    pred = read_csv(work / "fresh-pred.csv")
    assert [r["text"] for r in pred] == [t for t, _ in sentences(120, 99)]
    assert sum(r["label"] == y for r, (_, y) in zip(pred, sentences(120, 99))) >= 0.95 * 120


def test_integer_labels_from_jsonl_keep_numeric_order(work, hf, tok_dir, capsys):
    # 3 classes named by integers: 10 sorts after 2 (numerically, not as text)
    ids = {"negative": 0, "positive": 2, "neutral": 10}
    data = sentences(240, 5, ("negative", "positive", "neutral"))
    jsonl = write_jsonl(work / "toy.jsonl", [{"text": t, "label": ids[y]} for t, y in data])
    out = work / "int-run"
    assert main(ft(hf, jsonl, out, tok_dir, *FAST, "--train.epochs", "3")) == 0
    assert json.loads((latest(out) / "config.json").read_text())["classifier"] == {"labels": ["0", "2", "10"]}
    model = load_model(str(out))
    assert isinstance(model, GPTClassifier) and model.labels == ["0", "2", "10"]
    assert model.score.weight.shape == (3, 32)
    val = [r for r in rows(out) if "val_acc" in r]
    assert val and val[-1]["val_acc"] >= 0.8  # far above chance (1/3): the integer labels mean the right classes
    # predict scores integer gold labels against the names
    probe = write_jsonl(work / "probe.jsonl", [{"text": t, "label": ids[y]} for t, y in data[:9]])
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--data", str(probe), "--json"]) == 0
    captured = capsys.readouterr()
    got = [json.loads(line) for line in captured.out.splitlines()]
    assert len(got) == 9 and all(set(g["probs"]) == {"0", "2", "10"} for g in got)
    assert "scored 9 labelled texts" in captured.err


def test_labels_names_or_integers_and_a_stratified_stable_split(tmp_path):
    from gpt2kit.classify import read_examples, stratified_split

    # integers written as text (a CSV) sort numerically too; names alphabetically
    data = [(t, {"negative": "0", "positive": "2", "neutral": "10"}[y])
            for t, y in sentences(30, 8, ("negative", "positive", "neutral"))]
    texts, labels, keys, names = read_examples([str(write_csv(tmp_path / "ints.csv", data))], "text", "label")
    assert names == ["0", "2", "10"] and texts == [t for t, _ in data] and labels == [y for _, y in data]
    named = write_jsonl(tmp_path / "names.jsonl", [{"text": t, "label": y} for t, y in sentences(9, 8)])
    assert read_examples([str(named)], "text", "label")[3] == ["negative", "positive"]
    # skewed classes: each is split on its own, the rare one keeps a validation example, and the split is a
    # function of the rows (not of the run)
    labels = ["a"] * 200 + ["b"] * 3 + ["c"] * 2
    keys = [f"f.csv:{i}" for i in range(len(labels))]
    held = stratified_split(keys, labels, 0.1)
    per_class = {c: sum(h for h, y in zip(held, labels) if y == c) for c in "abc"}
    assert 10 <= per_class["a"] <= 30 and per_class["b"] >= 1 and per_class["c"] == 1, per_class
    assert stratified_split(keys, labels, 0.1) == held
    assert sum(held) < len(held) / 5


def test_truncation_keeps_the_end_or_the_start(tok):
    text = " ".join(f"word{i}" for i in range(40))
    ids = tok.encode(text)
    assert len(ids) > 16
    assert encode(tok, [text], 16)[0].tolist() == ids[-16:]  # the default: keep the end, which the head reads
    assert encode(tok, [text], 16, "left")[0].tolist() == ids[-16:]
    assert encode(tok, [text], 16, "right")[0].tolist() == ids[:16]
    assert encode(tok, ["", "hi"], 16)[0].tolist() == [tok.eos_id]  # an empty text reads as EOS


# ---------------------------------------------------------------- 2. left padding changes nothing


MIXED = ["great", "the film was awful", "", "honestly, the trip was okay after a long evening at home",
         "x " * 80,  # longer than the block: truncated (the same way alone and in a batch)
         "the book was lovely from the very start to the very finish without a single pause for breath",
         "the song was boring"]


def test_left_padded_batch_equals_one_at_a_time(tok):
    torch.manual_seed(0)
    model = GPTClassifier(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32),
                          ["a", "b", "c"]).eval()
    torch.nn.init.normal_(model.score.weight, std=1.0)  # logits far from equal: a wrong position shows
    ids = encode(tok, MIXED, 32)
    lengths = [len(x) for x in ids]
    assert min(lengths) == 1 and max(lengths) == 32  # short and long (cut to the block) in one batch
    pad = tok.pad_id
    X, mask, _ = collate_left(pad, [(x, 0) for x in ids])
    assert (mask == 0).any() and (X[mask == 0] == pad).all()
    with torch.no_grad():
        batch = model(X, attention_mask=mask)
        alone = torch.cat([model(torch.as_tensor(x)[None]) for x in ids])
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
        # what fills the padding is irrelevant
        X2, mask2, _ = collate_left(pad + 7, [(x, 0) for x in ids])
        torch.testing.assert_close(model(X2, attention_mask=mask2), batch, atol=1e-5, rtol=0)
        # the head reads the last real token: the hidden state there is the unpadded text's last one
        h = model.hidden(X, attention_mask=mask)[:, -1]
        for i, x in enumerate(ids):
            torch.testing.assert_close(h[i], model.hidden(torch.as_tensor(x)[None])[0, -1], atol=1e-5, rtol=0)
        assert (alone.std(0) > 1e-2).all()  # the texts' logits differ, so the equalities above mean something


def test_predict_proba_batched_equals_one_at_a_time(run):
    model = load_model(str(run)).eval()
    tok = load_tokenizer(run)
    batched = predict_proba(model, tok, MIXED, batch_size=len(MIXED))
    singles = predict_proba(model, tok, MIXED, batch_size=1)
    pairs = predict_proba(model, tok, MIXED, batch_size=2)
    assert batched.shape == (len(MIXED), 2)
    torch.testing.assert_close(batched, singles, atol=1e-6, rtol=0)
    torch.testing.assert_close(pairs, singles, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched.sum(-1), torch.ones(len(MIXED)), atol=1e-6, rtol=0)
    with torch.no_grad():  # and the logits themselves
        ids = encode(tok, MIXED, model.config.block_size)
        X, mask, _ = collate_left(tok.pad_id, [(x, 0) for x in ids])
        alone = torch.cat([model(torch.as_tensor(x)[None]) for x in ids])
        torch.testing.assert_close(model(X, attention_mask=mask), alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.softmax(alone, -1), singles, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- 3. export, pipeline, import back


PROBES = ["the movie was great", "the film was awful", "honestly, the hotel was terrible in the end",
          "yesterday, the meal was lovely and my friends said so too", "the game was superb I think",
          "the play was dreadful from the very start to the very finish without a single pause for breath"]


def test_export_equals_transformers_and_pipeline_and_imports_back(run, work, tok_dir, toy_csv, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out = work / "hf-classifier"
    assert main(["export", "--model", str(run), "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForSequenceClassification"]
    assert cfg["id2label"] == {"0": "negative", "1": "positive"}
    assert cfg["label2id"] == {"negative": 0, "positive": 1}
    assert cfg["pad_token_id"] is not None

    ours = load_model(str(run)).eval()
    tok = load_tokenizer(run)
    theirs = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        for text in PROBES:
            x = torch.as_tensor(tok.encode(text))[None]
            torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-5, rtol=0, msg=text)

    ours_pred = predict_json(capsys, "--model", run, *[a for t in PROBES for a in ("--text", t)])
    assert [p["text"] for p in ours_pred] == PROBES
    assert {p["label"] for p in ours_pred} == {"negative", "positive"}  # both classes: a real comparison
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok.pad_token is not None and hf_tok.padding_side == "left"
    assert cfg["pad_token_id"] == hf_tok.pad_token_id  # what the model skips is what the tokenizer pads with
    with torch.no_grad():  # so a right-padded batch (positions unshifted) is each text alone, in transformers too
        enc = hf_tok(PROBES, padding=True, padding_side="right", return_tensors="pt")
        assert (enc["attention_mask"] == 0).any()
        alone = torch.cat([ours(torch.as_tensor(tok.encode(t))[None]) for t in PROBES])
        torch.testing.assert_close(theirs(**enc).logits, alone, atol=1e-5, rtol=0)
    clf = pipeline("text-classification", model=str(out), device="cpu")
    one = [clf(t, top_k=None) for t in PROBES]
    assert [max(o, key=lambda d: d["score"])["label"] for o in one] == [p["label"] for p in ours_pred]
    for o, p in zip(one, ours_pred):
        assert {d["label"]: d["score"] for d in o} == pytest.approx(p["probs"], abs=1e-5)
    # left padded with the exported pad token (transformers' GPT-2 does not shift positions by the padding, so
    # its probabilities move a little; the labels, read with wide margins, are the same)
    batched = clf(PROBES, batch_size=2)
    assert [b["label"] for b in batched] == [p["label"] for p in ours_pred]

    # the exported dir is a model source again: predict, and --init for another classify run
    from_hf = predict_json(capsys, "--model", out, *[a for t in PROBES for a in ("--text", t)])
    assert [p["label"] for p in from_hf] == [p["label"] for p in ours_pred]
    for a, b in zip(from_hf, ours_pred):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-5)
    again = work / "from-hf"
    argv = ft(out, toy_csv, again, tok_dir, *FAST, "--train.max_steps", "3")
    argv.remove("--tokenizer")
    argv.remove(str(tok_dir))  # the exported dir brings its own tokenizer
    assert main(argv) == 0
    assert load_tokenizer(again).to_json() == tok.to_json()
    model = load_model(str(again))
    assert isinstance(model, GPTClassifier) and model.labels == ["negative", "positive"]
    assert json.loads((latest(again) / "config.json").read_text())["classifier"]["labels"] == ["negative", "positive"]
    # it started from the exported head (not a fresh one): the first step's loss is the trained model's
    assert losses(again)[1] < 0.3, losses(again)


# ---------------------------------------------------------------- 4. freeze and LoRA: the head trains


@pytest.mark.parametrize("mode", ["freeze", "lora"])
def test_partial_modes_train_the_head_and_keep_the_base(mode, work, hf, tok_dir, toy_csv, capsys):
    from transformers import AutoModelForSequenceClassification

    out = work / f"run-{mode}"
    extra = ["--finetune.train_blocks", "1"] if mode == "freeze" else []
    assert main(ft(hf, toy_csv, out, tok_dir, *FAST, "--train.max_steps", "4", "--finetune.mode", mode, *extra)) == 0
    assert f"finetune.mode {mode}" in capsys.readouterr().err
    base = load_gpt2kit_dir(out / "base")
    assert isinstance(base, GPTClassifier) and base.labels == ["negative", "positive"]
    start = load_model(str(hf)).state_dict()
    base_sd = base.state_dict()
    for name, v in start.items():  # RUN/base is the --init body (and a fresh head)
        if name != "lm_head.weight":
            assert torch.equal(base_sd[name], v), name
    ckpt = latest(out)
    saved = load_file(ckpt / "model.safetensors")
    assert "score.weight" in saved  # the head is trained and saved in every mode
    final = load_gpt2kit_dir(ckpt, merge=False).state_dict()
    assert not torch.equal(final["score.weight"], base_sd["score.weight"]), "the score head did not train"

    def trained(name: str) -> bool:
        if mode == "lora":
            return ".lora_" in name or name == "score.weight"
        return name.startswith(("transformer.h.1.", "transformer.ln_f.", "score."))

    assert set(saved) == {n for n in final if trained(n)}
    for name, v in final.items():
        if not trained(name):
            assert torch.equal(v, base_sd[name.replace(".base_layer.", ".")]), f"{name} is frozen but changed"
    if mode == "freeze":
        assert not torch.equal(final["transformer.h.1.mlp.c_fc.weight"], base_sd["transformer.h.1.mlp.c_fc.weight"])
    else:
        assert any(v.abs().max() > 0 for n, v in final.items() if ".lora_B." in n)  # the adapters learned

    exported = work / f"hf-{mode}"
    assert main(["export", "--model", str(out), "--out", str(exported)]) == 0
    ours = load_model(str(out)).eval()
    assert isinstance(ours, GPTClassifier)
    theirs = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    tok = load_tokenizer(out)
    with torch.no_grad():
        for text in PROBES[:3]:
            x = torch.as_tensor(tok.encode(text))[None]
            torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-5, rtol=0, msg=text)


# ---------------------------------------------------------------- 5. kill -9 + --resume auto is bitwise

# gpt2kit in a child that hangs right after logging the 2nd step past its first checkpoint (the kill lands at a
# known point with un-checkpointed progress on disk, whatever the machine's speed), touching FLAG.
HANGING_CHILD = """
import os, sys, time
import torch
torch.set_num_threads(1)
import gpt2kit.train as T
from gpt2kit.metrics import MetricsLogger
saved, save, log = [], T.save_checkpoint, MetricsLogger.log
def save_and_note(*a, **k):
    path = save(*a, **k)
    saved.append(int(path.name.split("-")[1]))
    return path
def log_and_hang(self, row):
    log(self, row)
    if saved and "loss" in row and row["step"] == saved[0] + 2:
        open(os.environ["FLAG"], "w").close()
        time.sleep(600)
T.save_checkpoint, MetricsLogger.log = save_and_note, log_and_hang
from gpt2kit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_kill9_then_resume_auto_equals_an_uninterrupted_run(mode, work, hf, tok_dir, tmp_path):
    data = write_csv(tmp_path / "small.csv", sentences(60, 7))
    # finetune defaults (dropout 0.1, eval + checkpoint per epoch, keep_last 1), balanced weights, fp32
    args = ["--finetune.mode", mode, "--train.precision", "fp32", "--train.batch_size", "4", "--train.epochs", "3",
            "--train.early_stopping", "0", "--train.log_every", "1", "--data.class_weights", "balanced"]
    run, ref, flag = tmp_path / "run", tmp_path / "ref", tmp_path / "hanging"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "FLAG": str(flag)}
    proc = subprocess.Popen([sys.executable, "-c", HANGING_CHILD, *ft(hf, data, run, tok_dir, *args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert main(ft(hf, data, ref, tok_dir, *args)) == 0  # the uninterrupted run, while the child starts up
    except BaseException:
        proc.kill()  # no child left hanging
        raise
    kill9_when(proc, flag)
    assert proc.returncode == -9
    first = int(latest(run).name.split("-")[1])
    assert max(losses(run)) == first + 2  # progress past the checkpoint, lost with the process
    assert main(ft(hf, data, run, tok_dir, *args, "--resume", "auto")) == 0

    ref_state = json.loads((latest(ref) / "state.json").read_text())
    assert losses(run) == losses(ref) and len(losses(ref)) == ref_state["step"]  # every step, exactly
    val = lambda r: [(x["step"], x["val_loss"], x["val_acc"], x["val_f1"]) for x in rows(r) if "val_loss" in x]  # noqa: E731
    assert val(run) == val(ref) and len(val(ref)) == 3
    a, b = load_file(latest(ref) / "model.safetensors"), load_file(latest(run) / "model.safetensors")
    assert set(a) == set(b) and "score.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((latest(run) / "config.json").read_text())["classifier"]["labels"] == ["negative", "positive"]


# ---------------------------------------------------------------- 6. bad input: one error line, exit 2


@pytest.mark.parametrize("case", ["missing_label_column", "single_class"])
def test_bad_training_data_is_one_error_line_and_leaves_no_run(case, hf, tok_dir, tmp_path, capsys):
    if case == "missing_label_column":
        data = write_csv(tmp_path / "d.csv", [(t, y) for t, y in sentences(20, 1)], header=("text", "sentiment"))
        needles = ["'label'", "text, sentiment", "--data.label_column"]
    else:
        data = write_csv(tmp_path / "d.csv", [(t, "positive") for t, _ in sentences(20, 1)])
        needles = ["'positive'", "two classes", "--data.label_column"]
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(ft(hf, data, out, tok_dir)) == 2
    one_error_line(capsys.readouterr().err, *needles)
    assert not out.exists()  # nothing half-made


@pytest.fixture(scope="module")
def lm_run(work, hf, tok_dir) -> Path:
    """A language model run (train.task lm), to pass where a classifier is expected."""
    text = work / "lm.txt"
    text.write_text("".join(f"{t}\n" for t, _ in sentences(30, 3)))
    out = work / "lm-run"
    assert main(["finetune", "--init", str(hf), "--data", str(text), "--tokenizer", str(tok_dir), "--out", str(out),
                 "--train.max_steps", "1", "--train.precision", "fp32"]) == 0
    return out


@pytest.mark.parametrize("case", ["unseen_label", "lm_run", "lm_hf_dir", "text_and_data", "neither",
                                  "out_dir_missing", "out_is_a_dir"])
def test_bad_predict_input_is_one_error_line(case, run, lm_run, hf, tok_dir, tmp_path, capsys):
    fresh = write_csv(tmp_path / "fresh.csv", sentences(6, 2))
    args = ["predict", "--model", str(run), "--data", str(fresh)]
    needles = []
    if case == "unseen_label":
        data = write_csv(tmp_path / "new.csv", [*sentences(4, 2), ("the show was okay", "neutral")])
        args = ["predict", "--model", str(run), "--data", str(data), "--out", str(tmp_path / "pred.csv")]
        needles = ["'neutral'", "negative, positive"]
    elif case == "lm_run":
        args[2] = str(lm_run)
        needles = ["not a classifier", "--task classify"]
    elif case == "lm_hf_dir":
        args[2:3] = [str(hf), "--tokenizer", str(tok_dir)]
        needles = ["not a classifier"]
    elif case == "text_and_data":
        args += ["--text", "the film was great"]
        needles = ["--text", "--data"]
    elif case == "neither":
        args = args[:3]
        needles = ["--text", "--data"]
    elif case == "out_dir_missing":
        args += ["--out", str(tmp_path / "nowhere" / "pred.csv")]
        needles = ["does not exist"]
    else:
        (tmp_path / "adir").mkdir()
        args += ["--out", str(tmp_path / "adir")]
        needles = ["is a directory"]
    capsys.readouterr()
    assert main(args) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, *needles)
    assert captured.out == ""
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "pred.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("case", ["unseen_label_midway", "no_texts"])
def test_failed_predict_leaves_no_partial_file_and_an_earlier_one_untouched(case, run, tmp_path, capsys,
                                                                             monkeypatch):
    import gpt2kit.commands.predict as predict_cmd

    monkeypatch.setattr(predict_cmd, "CHUNK", 8)  # several chunks are written before the bad row is read
    if case == "unseen_label_midway":
        rows_ = [*sentences(30, 4), ("the show was okay", "neutral"), *sentences(5, 6)]
        needle = "'neutral'"
    else:
        rows_ = []  # a header only
        needle = "no texts"
    data = write_csv(tmp_path / "d.csv", rows_)
    out = tmp_path / "pred.csv"
    out.write_text("an earlier result\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--data", str(data), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, needle)
    assert out.read_text() == "an earlier result\n"  # untouched: not a partial file, not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "pred.csv"]


# ---------------------------------------------------------------- 7. class weights


def test_balanced_class_weights_are_n_over_k_n_c():
    w = class_weights([0, 0, 0, 0, 0, 0, 1, 1, 2], 3)
    torch.testing.assert_close(w, torch.tensor([9 / (3 * 6), 9 / (3 * 2), 9 / (3 * 1)]))
    assert torch.equal(class_weights([0, 1, 1, 1], 2), torch.tensor([2.0, 2 / 3]))
    assert class_weights([0, 0, 1], 3)[2] == 0  # a class absent from the training split weighs nothing
    # the weights reach the loss: a weighted sum of per-example cross-entropies
    torch.manual_seed(0)
    model = GPTClassifier(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16), ["a", "b", "c"])
    batch = collate_left(1, [(torch.randint(2, 64, (n,)).numpy(), y) for n, y in ((3, 0), (7, 1), (5, 2), (2, 2))])
    task = ClassifyTask(["a", "b", "c"], w)
    with torch.no_grad():
        logits = model(batch[0], attention_mask=batch[1])
        each = torch.nn.functional.cross_entropy(logits, batch[2], reduction="none")
        torch.testing.assert_close(task.loss(model, batch, "cpu"), (w[batch[2]] * each).sum())
        torch.testing.assert_close(ClassifyTask(["a", "b", "c"]).loss(model, batch, "cpu"), each.sum())


def test_skewed_data_with_balanced_weights_trains(hf, tok_dir, tmp_path, capsys):
    r = random.Random(11)
    data = [(t, y) for t, y in sentences(400, 11) if y == "negative" or r.random() < 0.2]  # ~5:1
    n_pos = sum(y == "positive" for _, y in data)
    assert 20 < n_pos < len(data) / 4
    csv_path = write_csv(tmp_path / "skewed.csv", data)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(ft(hf, csv_path, out, tok_dir, *FAST, "--train.epochs", "4", "--data.class_weights", "balanced")) == 0
    err = capsys.readouterr().err
    assert "balanced class weights" in err
    assert "class_weights: balanced" in (out / "config.yaml").read_text()
    val = [r for r in rows(out) if "val_f1" in r]
    assert len(val) >= 2 and min(r["val_loss"] for r in val[1:]) < val[0]["val_loss"], val  # it learns
    # the weights reach the training loss: the same first batch from the same start costs another amount
    # unweighted (rare-class examples count n / (k * n_c) > 1 each, common ones less)
    plain = tmp_path / "plain"
    assert main(ft(hf, csv_path, plain, tok_dir, *FAST, "--train.max_steps", "1")) == 0
    assert losses(out)[1] != pytest.approx(losses(plain)[1], abs=1e-4), (losses(out)[1], losses(plain)[1])
    assert max(r["val_f1"] for r in val) > 0.8, val  # macro-F1: the rare class is found, not just the common one


# ---------------------------------------------------------------- 8. predict streams a large file


def test_predict_streams_a_large_file_in_order(run, tmp_path, capsys, monkeypatch):
    import gpt2kit.classify as classify
    import gpt2kit.commands.predict as predict_cmd

    monkeypatch.setattr(predict_cmd, "CHUNK", 256)
    calls = []
    real = classify.predict_proba

    def spy(model, tokenizer, texts, **kw):
        calls.append(len(texts))
        return real(model, tokenizer, texts, **kw)

    monkeypatch.setattr(classify, "predict_proba", spy)
    data = sentences(1100, 21)
    data[5] = ('a text, with "quotes",\nand a newline', "positive")  # CSV quoting survives the round trip
    big = write_csv(tmp_path / "big.csv", data)
    out = tmp_path / "pred.csv"
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--data", str(big), "--out", str(out), "--batch-size", "64"]) == 0
    assert calls == [256, 256, 256, 256, 76]  # read, predicted and written a chunk at a time
    got = read_csv(out)
    assert list(got[0]) == ["text", "label", "score", "prob_negative", "prob_positive"]
    assert [r["text"] for r in got] == [t for t, _ in data]  # one row per input row, in order
    for r in got:
        p = [float(r["prob_negative"]), float(r["prob_positive"])]
        assert sum(p) == pytest.approx(1.0, abs=2e-6)
        assert r["label"] == ("negative", "positive")[p.index(max(p))] and float(r["score"]) == max(p)
    assert sum(r["label"] == y for r, (_, y) in zip(got, data)) >= 0.95 * len(data)
    # the streamed probabilities are the ones computed directly
    model, tok = load_model(str(run)).eval(), load_tokenizer(run)
    direct = real(model, tok, [t for t, _ in data[:40]])
    for r, p in zip(got, direct.tolist()):
        assert [float(r["prob_negative"]), float(r["prob_positive"])] == pytest.approx(p, abs=1e-6)


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_classifier_where_a_language_model_is_needed_is_one_error_line(command, run, toy_csv, capsys):
    args = ["--prompt", "hello"] if command == "generate" else ["--data", str(toy_csv)]
    assert main([command, "--model", str(run), *args]) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, "is a classifier", "gpt2kit predict")
    assert captured.out == ""
