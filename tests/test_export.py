"""Exports that behave like a model from the Hub (issue 14.2), `tokenizer save` (14.5), model cards and
`--push-to-hub` (issue 13.2-3), declared dependencies (14.6).

Everything runs against the real transformers / huggingface_hub code: the Hub itself is replaced at the HTTP
boundary (huggingface_hub's own client factory, a transport that answers as the Hub does), never our code."""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib
import json
import logging
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import gpt2kit
from gpt2kit import GPT, GPTConfig
from gpt2kit.cli import main
from gpt2kit.config import build_config
from gpt2kit.hf import export
from gpt2kit.modelcard import RunFacts, front_matter, model_card
from gpt2kit.tokenizer import gpt2_tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TRICKY = [
    "Hello world", "  two leading spaces", "trailing spaces   ", "tabs\tand\r\nCRLF\n\n\nnewlines",
    "café naïve Ünïcödé — “quotes” ‘single’", "日本語のテキストと中文", "emoji 👩‍💻🚀 and flags 🇫🇷",
    "combining e\u0301 and zero\u200bwidth", "def f(x):\n    return x ** 2  # code\n", "1234567890 3.14159 -42",
    "don't won't it's we'll they've I'm", "ALL CAPS and MiXeD", "", " ", "a" * 300, "<pad> [PAD] </s>",
]


def one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[-1], (needle, err)
    return lines[-1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm_export(tmp_path_factory) -> tuple[GPT, Path]:
    """A 32-position model with GPT-2's tokenizer (no pad token of its own), exported under umask 022."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    out = tmp_path_factory.mktemp("lm") / "hf"
    old = os.umask(0o022)
    try:
        export(model, out, tokenizer=gpt2_tokenizer())
    finally:
        os.umask(old)
    return model, out


# ---------------------------------------------------------------- 1. an export behaves like a Hub model


def test_export_files_configs_and_modes(lm_export):
    model, out = lm_export
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {
        name: "0o644" for name in ("config.json", "generation_config.json", "model.safetensors", "README.md",
                                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")}
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["model_max_length"] == 32 and tc["pad_token"] == "<|endoftext|>" and tc["padding_side"] == "left"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pad_token_id"] == cfg["eos_token_id"] == cfg["bos_token_id"] == 50256 and cfg["n_positions"] == 32
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["pad_token_id"] == gen["eos_token_id"] == gen["bos_token_id"] == 50256
    assert gen["do_sample"] is True and gen["temperature"] == 0.8 and gen["max_new_tokens"] == 16


def test_file_modes_follow_the_umask(tmp_path):
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64))
    old = os.umask(0o027)
    try:
        out = export(model, tmp_path / "o")
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o640"}


def greedy_ours(model: GPT, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        return model.generate(torch.tensor([ids]), n, temperature=0)[0, len(ids):].tolist()


def test_pipeline_batches_defaults_and_long_prompts(lm_export, caplog):
    import transformers
    from transformers import AutoTokenizer, pipeline

    model, out = lm_export
    tok = gpt2_tokenizer()
    gen = pipeline("text-generation", model=str(out), device="cpu")
    prompts = ["Hello", "The quick brown fox jumps over", "a b c"]
    # batched (left padded with the EOS pad) = one at a time = gpt2kit's greedy decoding
    batched = gen(prompts, batch_size=2, max_new_tokens=5, do_sample=False, return_tensors=True)
    for p, b in zip(prompts, batched):
        ids = tok.encode(p)
        assert b[0]["generated_token_ids"][-5:] == greedy_ours(model, ids, 5), p  # (after the left padding)
    # no length given: generation_config's max_new_tokens (16), not the pipeline's 256 that would overflow
    text = gen("Hello there", do_sample=False)[0]["generated_text"]
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert len(hf_tok(text)["input_ids"]) == len(tok.encode("Hello there")) + 16
    # a prompt longer than the context: handle_long_generation="hole" keeps its end, with the tokenizer's warning
    long = " ".join(f"word{i}" for i in range(60))
    ids = tok.encode(long)
    assert len(ids) > 32
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            r = gen(long, max_new_tokens=4, do_sample=False, handle_long_generation="hole", return_tensors=True)
    finally:
        transformers.logging.disable_propagation()
    assert "longer than the specified maximum sequence length" in caplog.text
    assert r[0]["generated_token_ids"][-4:] == greedy_ours(model, ids[-28:], 4)
    # truncation=True cuts to model_max_length (= n_positions) from the left: the end of the prompt is kept
    enc = hf_tok(long, truncation=True)["input_ids"]
    assert enc == ids[-32:]


def test_autotokenizer_round_trip_on_tricky_text(lm_export, small_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    _, out = lm_export
    export(GPT(GPTConfig.from_preset("tiny", vocab_size=small_tokenizer.vocab_size)), tmp_path / "small",
           tokenizer=small_tokenizer)
    for ours, where in ((gpt2_tokenizer(), out), (small_tokenizer, tmp_path / "small")):
        theirs = AutoTokenizer.from_pretrained(where)
        assert theirs.eos_token_id == ours.eos_id
        assert theirs.pad_token_id == (ours.pad_id if ours.pad_id is not None else ours.eos_id)
        for text in TRICKY:
            ids = ours.encode(text)
            assert theirs(text)["input_ids"] == ids, text
            assert theirs.decode(ids) == text == ours.decode(ids)
        # "<|endoftext|>" in a text: the Hub convention reads the EOS id, gpt2kit plain text (split_special_tokens)
        text = "end<|endoftext|>start"
        assert ours.eos_id in theirs(text)["input_ids"]
        assert theirs(text, split_special_tokens=True)["input_ids"] == ours.encode(text)
        assert load_tokenizer(where).to_json() == ours.to_json()  # and it is a gpt2kit tokenizer source again


def test_classifier_export_truncates_and_batches(tmp_path):
    from transformers import pipeline

    from gpt2kit.classify import GPTClassifier, encode

    torch.manual_seed(0)
    tok = gpt2_tokenizer()
    model = GPTClassifier(GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=16),
                          ["no", "yes"]).eval()
    out = export(model, tmp_path / "clf", tokenizer=tok)
    assert not (out / "generation_config.json").exists()
    card = front_matter(out / "README.md")
    assert card["pipeline_tag"] == "text-classification" and "text-classification" in card["tags"]
    clf = pipeline("text-classification", model=str(out), device="cpu")
    long = " ".join(f"token{i}" for i in range(50))
    got = clf(long, truncation=True, top_k=None)
    with torch.no_grad():
        want = torch.softmax(model(torch.as_tensor(encode(tok, [long], 16)[0])[None]), -1)[0].tolist()
    assert {d["label"]: d["score"] for d in got} == pytest.approx(dict(zip(["no", "yes"], want)), abs=1e-5)
    assert len(clf(["short", long, "a bit longer text"], batch_size=2, truncation=True)) == 3


# ---------------------------------------------------------------- 2. gpt2kit tokenizer save


def test_tokenizer_save_builds_a_local_model_dir(tmp_path, capsys):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, pipeline

    d = tmp_path / "model"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(d)
    assert main(["tokenizer", "save", "gpt2", "--out", str(d), "--model-max-length", "64",
                 "--padding-side", "left"]) == 0
    hf_tok = AutoTokenizer.from_pretrained(d)
    assert hf_tok.model_max_length == 64 and hf_tok.pad_token == "<|endoftext|>" and hf_tok.padding_side == "left"
    ours = gpt2_tokenizer()
    for text in TRICKY:
        assert hf_tok(text)["input_ids"] == ours.encode(text), text
    gen = pipeline("text-generation", model=str(d), device="cpu")
    assert len(gen(["one", "two three"], batch_size=2, max_new_tokens=2, do_sample=False)) == 2
    assert (d / "model.safetensors").exists()  # the folder's other files are kept
    # defaults are GPT-2's own files: 1024, no pad; existing tokenizer files are not replaced silently
    capsys.readouterr()
    assert main(["tokenizer", "save", "gpt2", "--out", str(d)]) == 2
    one_error_line(capsys.readouterr().err, "--overwrite")
    assert main(["tokenizer", "save", "gpt2", "--out", str(d), "--overwrite"]) == 0
    plain = AutoTokenizer.from_pretrained(d)
    assert plain.model_max_length == 1024 and plain.pad_token is None
    # any tokenizer source: a trained tokenizer's folder
    assert main(["tokenizer", "save", str(d), "--out", str(tmp_path / "copy")]) == 0
    assert load_tokenizer(tmp_path / "copy").to_json() == gpt2_tokenizer().to_json()


# ---------------------------------------------------------------- 3. model cards with the run's real numbers


TINY = {"model.preset": "tiny", "model.block_size": "32", "model.n_embd": "32", "optim.lr": "3e-3",
        "train.batch_size": "4", "train.max_steps": "6", "train.eval_every": "2", "train.ckpt_every": "2",
        "train.log_every": "1", "train.precision": "fp32", "train.eval_batches": "2", "train.report_to": "",
        "train.keep_last": "1"}


@pytest.fixture(scope="module")
def lm_run(corpus_dir, small_tokenizer, tmp_path_factory) -> Path:
    """A 6-step run that prepares its sources on the fly (into data.cache_dir) and keeps its best checkpoint."""
    from gpt2kit.train import train

    work = tmp_path_factory.mktemp("lmrun")
    small_tokenizer.save(work / "tok")
    cfg = build_config(None, {**TINY, "data.sources": str(corpus_dir), "data.tokenizer": str(work / "tok"),
                              "data.cache_dir": str(work / "cache"), "data.val_fraction": "0.15"})
    train(cfg, work / "run", quiet=True)
    return work / "run"


def card_of(out: Path) -> tuple[dict, str]:
    text = (out / "README.md").read_text()
    return front_matter(out / "README.md"), text


def test_card_holds_the_runs_real_numbers_and_loads(lm_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from gpt2kit.checkpoint import find_checkpoint, load_model

    out = tmp_path / "export"
    assert main(["export", "--model", str(lm_run), "--out", str(out)]) == 0
    assert "model card" in capsys.readouterr().err
    meta, text = card_of(out)
    rows = [json.loads(line) for line in (lm_run / "metrics.jsonl").read_text().splitlines()]
    best = find_checkpoint(lm_run, "best")
    state = json.loads((best / "state.json").read_text())
    evals = {r["step"]: r for r in rows if "val_loss" in r}
    row = evals[state["step"]]
    assert row["val_loss"] == min(r["val_loss"] for r in evals.values())  # the best checkpoint was exported

    assert meta["license"] == "mit" and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation" and {"gpt2", "gpt2kit", "text-generation"} <= set(meta["tags"])
    assert "datasets" not in meta and "base_model" not in meta  # a local corpus, trained from scratch
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"loss": row["val_loss"], "perplexity": row["val_ppl"], "bits_per_byte": row["val_bpb"]}
    assert f"| validation loss (nats/token) | {row['val_loss']:.4f} |" in text
    assert f"| perplexity | {row['val_ppl']:.3f} |" in text and f"| bits per byte | {row['val_bpb']:.4f} |" in text
    assert f"at step {state['step']:,}:" in text
    assert f"| Tokens seen | {state['tokens']:,} |" in text
    last_train = [r for r in rows if "loss" in r and r["step"] <= state["step"]][-1]
    assert f"| Training loss (step {last_train['step']:,}) | {last_train['loss']:.4f} |" in text
    total = json.loads((find_checkpoint(lm_run, "latest") / "state.json").read_text())["step"]
    steps = f"| Steps | {state['step']:,}" + (f" of {total:,}" if total != state["step"] else "")
    assert steps in text and "the best validation loss" in text
    # the data as prepared: the cached preparation's meta.json
    (prep,) = [d for d in (lm_run.parent / "cache").iterdir() if (d / "meta.json").is_file()]
    splits = json.loads((prep / "meta.json").read_text())["splits"]
    for split in ("train", "val"):
        s = splits[split]
        assert f"| {split} | {s['documents']:,} | {s['tokens']:,} | {s['bytes']:,} |" in text
    # the resolved config, as written, and the loss curve
    assert (lm_run / "config.yaml").read_text().strip() in text
    assert yaml.safe_load(text.split("```yaml\n")[1].split("```")[0]) == yaml.safe_load(
        (lm_run / "config.yaml").read_text())
    assert "![Training and validation loss](loss.png)" in text
    assert (out / "loss.png").read_bytes() == (lm_run / "loss.png").read_bytes()
    assert "Intended use and limitations" in text and "handle_long_generation" in text
    assert "512 ids" in text and "trained with `gpt2kit tokenizer train`" in text
    # and the folder is still a transformers model (README.md and loss.png change nothing)
    ours = load_model(str(lm_run))
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-5, rtol=0)
    # --license, and a checkpoint directory as the source: its own step, the run's files
    ckpt = find_checkpoint(lm_run, "latest")
    assert main(["export", "--model", str(ckpt), "--out", str(tmp_path / "ck"), "--license", "apache-2.0"]) == 0
    meta2, text2 = card_of(tmp_path / "ck")
    cstate = json.loads((ckpt / "state.json").read_text())
    assert meta2["license"] == "apache-2.0" and f"| Tokens seen | {cstate['tokens']:,} |" in text2
    assert {m["type"]: m["value"] for m in meta2["model-index"][0]["results"][0]["metrics"]}["loss"] == \
        evals[cstate["step"]]["val_loss"]


def test_card_of_a_classifier_run_has_accuracy_and_f1(corpus_dir, small_tokenizer, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=small_tokenizer.vocab_size)
                    ).save_pretrained(tmp_path / "base")
    small_tokenizer.save(tmp_path / "base")
    data = tmp_path / "toy.csv"
    data.write_text("text,label\n" + "".join(f"the thing was {'good' if i % 2 else 'bad'} {i},"
                                             f"{'pos' if i % 2 else 'neg'}\n" for i in range(60)))
    run = tmp_path / "run"
    assert main(["finetune", "--task", "classify", "--init", str(tmp_path / "base"), "--data", str(data),
                 "--out", str(run), "--train.max_steps", "4", "--train.eval_every", "2", "--train.precision", "fp32",
                 "--train.report_to", "", "--data.truncation_side", "right"]) == 0
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "hf")]) == 0
    meta, text = card_of(tmp_path / "hf")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    state = json.loads(((run / "checkpoints") / (run / "checkpoints" / "best").read_text().strip()
                        / "state.json").read_text())
    row = [r for r in rows if r.get("step") == state["step"] and "val_loss" in r][-1]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"loss": row["val_loss"], "accuracy": row["val_acc"], "f1": row["val_f1"]}
    assert f"| accuracy | {row['val_acc']:.4f} |" in text and f"| macro F1 | {row['val_f1']:.4f} |" in text
    assert meta["pipeline_tag"] == "text-classification" and "| Labels | `neg`, `pos` |" in text
    assert f"| Examples seen | {state['tokens']:,} |" in text and f"| Steps | {state['step']:,}" in text
    assert "fine-tuned from" in text and "gpt2kit predict --model" in text and "keeping its start" in text
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["truncation_side"] == "right"
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").config.id2label == {0: "neg", 1: "pos"}


def test_card_of_a_plain_hf_dir_keeps_its_license(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    src = tmp_path / "src"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50257)).save_pretrained(src)
    (src / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: openai-community/gpt2\n---\n# theirs\n")
    assert main(["tokenizer", "save", "gpt2", "--out", str(src)]) == 0
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "o")]) == 0
    meta, text = card_of(tmp_path / "o")
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "openai-community/gpt2"
    assert "model-index" not in meta and "## Training" not in text and "converted by gpt2kit" in text
    assert "| Context | 32 tokens |" in text and "GPT-2's byte-level BPE" in text
    AutoModelForCausalLM.from_pretrained(tmp_path / "o")


def test_card_metadata_names_hub_datasets_and_base_model(tmp_path):
    cfg = build_config(None, {"data.sources": "hf:someone/stories:en,hf:roneneldan/TinyStories,local.txt",
                              "model.init": "gpt2"})
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=64))
    card = model_card(model, None, RunFacts(config=cfg, run_dir=tmp_path), out=tmp_path / "x", repo_id="me/tiny")
    meta = yaml.safe_load(card.text.split("---\n")[1])
    assert meta["datasets"] == ["someone/stories", "roneneldan/TinyStories"]
    assert meta["base_model"] == "openai-community/gpt2"
    assert 'pipeline("text-generation", model="me/tiny")' in card.text and "--model me/tiny" in card.text


# ---------------------------------------------------------------- 4. --push-to-hub


class FakeHub:
    """Answers the Hub API calls of create_repo / create_branch / upload_folder as huggingface.co does, and
    records them. The repository starts with an older export's stray file and .gitattributes."""

    def __init__(self, endpoint: str = "https://huggingface.co"):
        self.endpoint = endpoint
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.remote = {".gitattributes": b"*.safetensors filter=lfs\n", "adapter_config.json": b"{}"}
        self.lfs: dict[str, bytes] = {}
        self.commit: list[dict] = []
        self.validated: str | None = None

    def __call__(self, request):
        import httpx2

        body = request.read()
        path = request.url.path
        self.requests.append((request.method, path, dict(request.headers), body))

        def ok(payload, status=200):
            return httpx2.Response(status, json=payload, request=request)

        if path == "/api/validate-yaml":  # the metadata must parse as the Hub's model-index, as on the Hub
            from huggingface_hub.repocard import RepoCard
            from huggingface_hub.repocard_data import model_index_to_eval_results

            self.validated = json.loads(body)["content"]
            data = RepoCard(self.validated).data.to_dict()
            try:
                model_index_to_eval_results(data.get("model-index", []))
            except (KeyError, TypeError, ValueError) as e:
                return ok({"errors": [{"message": f"model-index: {e!r}"}]}, status=400)
            return ok({"errors": [], "warnings": []})
        if path == "/api/repos/create":
            return ok({"url": f"{self.endpoint}/{json.loads(body)['organization']}/{json.loads(body)['name']}"})
        if "/branch/" in path:
            return ok({})
        if "/tree/" in path:
            return ok([{"type": "file", "path": p, "oid": hashlib.sha1(b).hexdigest(), "size": len(b)}
                       for p, b in self.remote.items()])
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return ok({"files": [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors")
                                  else "regular", "shouldIgnore": False} for f in files]})
        if path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            return ok({"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"https://lfs.example/upload/{o['oid']}"}}} for o in objects]})
        if path.startswith("/upload/") and request.method == "PUT":
            self.lfs[path.rsplit("/", 1)[1]] = body
            return httpx2.Response(200, request=request)
        if "/commit/" in path:
            self.commit = [json.loads(line) for line in body.decode().splitlines()]
            repo = path.split("/api/models/", 1)[1].split("/commit/", 1)[0]
            return ok({"commitUrl": f"{self.endpoint}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        return httpx2.Response(404, json={"error": f"not faked: {request.method} {path}"}, request=request)


@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub's HTTP client with its transport replaced (httpx2 in the installed version; its own
    request hook, the one that enforces offline mode, kept), online, logged in with HF_TOKEN."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    httpx2 = pytest.importorskip("httpx2")
    if not hasattr(huggingface_hub, "set_client_factory"):
        pytest.skip("this huggingface_hub talks HTTP through requests; the fake answers httpx2 clients")
    hub = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # LFS over HTTP; Xet uploads from Rust
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_write_token")
    huggingface_hub.set_client_factory(lambda: httpx2.Client(
        transport=httpx2.MockTransport(hub), event_hooks={"request": [_http.hf_request_event_hook]},
        follow_redirects=True))
    yield hub
    huggingface_hub.set_client_factory(_http.default_client_factory)


def test_push_uploads_exactly_the_export_folder(lm_run, tmp_path, fake_hub, capsys):
    out = tmp_path / "export"
    assert main(["export", "--model", str(lm_run), "--out", str(out), "--push-to-hub", "my-org/tiny-gpt2",
                 "--revision", "v1", "--commit-message", "first export"]) == 0, capsys.readouterr().err
    assert "pushed" in capsys.readouterr().err
    calls = [(m, p) for m, p, _, _ in fake_hub.requests]
    create = next(json.loads(b) for m, p, _, b in fake_hub.requests if p == "/api/repos/create")
    assert create["organization"] == "my-org" and create["name"] == "tiny-gpt2"
    assert create.get("visibility", "private" if create.get("private") else "public") == "private"
    assert ("POST", "/api/models/my-org/tiny-gpt2/branch/v1") in calls
    assert ("POST", "/api/models/my-org/tiny-gpt2/commit/v1") in calls
    for _, path, headers, _ in fake_hub.requests:  # what reads or writes the repository carries the token
        if "my-org/tiny-gpt2" in path or path == "/api/repos/create":
            assert headers.get("authorization") == "Bearer hf_fake_write_token", path
    local = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"README.md", "loss.png", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(local)
    header = [c["value"] for c in fake_hub.commit if c["key"] == "header"][0]
    assert header["summary"] == "first export"
    sent: dict[str, bytes] = {}
    for c in fake_hub.commit:
        v = c["value"]
        if c["key"] == "file":
            sent[v["path"]] = base64.b64decode(v["content"])
        elif c["key"] == "lfsFile":
            sent[v["path"]] = fake_hub.lfs[v["oid"]]
            assert v["oid"] == hashlib.sha256(sent[v["path"]]).hexdigest()
    assert sent == local  # every file of the folder, byte for byte, and nothing else
    deleted = {c["value"]["path"] for c in fake_hub.commit if c["key"] in ("deletedFile", "deletedEntry")}
    assert deleted == {"adapter_config.json"}  # a stale file of an earlier upload; .gitattributes stays
    meta, text = card_of(out)
    assert fake_hub.validated == text  # the card's metadata was checked before the upload
    assert 'model="my-org/tiny-gpt2"' in text and meta["model-index"][0]["name"] == "my-org/tiny-gpt2"


def test_push_public_to_main(lm_run, tmp_path, fake_hub, capsys):
    assert main(["export", "--model", str(lm_run), "--out", str(tmp_path / "o"), "--push-to-hub", "me/m",
                 "--public"]) == 0, capsys.readouterr().err
    create = next(json.loads(b) for m, p, _, b in fake_hub.requests if p == "/api/repos/create")
    assert create.get("visibility", "private" if create.get("private") else "public") == "public"
    assert not any("/branch/" in p for _, p, _, _ in fake_hub.requests)
    assert ("POST", "/api/models/me/m/commit/main") in [(m, p) for m, p, _, _ in fake_hub.requests]


def test_push_offline_is_one_error_line_and_the_export_stays(lm_run, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "export"
    assert main(["export", "--model", str(lm_run), "--out", str(out), "--push-to-hub", "my-org/tiny"]) == 2
    one_error_line(capsys.readouterr().err, "my-org/tiny", "offline", "complete", "hf upload --private")
    assert {"README.md", "loss.png", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    AutoModelForCausalLM.from_pretrained(out)


def test_push_without_network_is_one_error_line(lm_run, tmp_path):
    """A real process, online mode, the Hub at a closed local port: the push fails, the export is kept."""
    out = tmp_path / "export"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_fake", HF_HUB_DISABLE_TELEMETRY="1")
    r = subprocess.run([sys.executable, "-m", "gpt2kit", "export", "--model", str(lm_run), "--out", str(out),
                        "--push-to-hub", "my-org/tiny"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    one_error_line(r.stderr, "cannot push to my-org/tiny", "cannot reach the Hugging Face Hub", str(out))
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()


def test_bad_repo_id_fails_before_anything_is_written(lm_run, tmp_path, capsys):
    for bad in ("a/b/c", "bad name/x", "org/na..me"):
        assert main(["export", "--model", str(lm_run), "--out", str(tmp_path / "o"), "--push-to-hub", bad]) == 2
        one_error_line(capsys.readouterr().err, "--push-to-hub")
        assert not (tmp_path / "o").exists()
    assert main(["export", "--model", str(lm_run), "--out", str(tmp_path / "o"), "--revision", "v1"]) == 2
    one_error_line(capsys.readouterr().err, "--push-to-hub")


# ---------------------------------------------------------------- 5. every import is declared


def test_every_module_of_the_package_imports():
    failed = {}
    for info in pkgutil.walk_packages(gpt2kit.__path__, "gpt2kit."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as e:  # report them all at once
            failed[info.name] = f"{type(e).__name__}: {e}"
    assert not failed


def _imports(path: Path) -> list[tuple[str, bool, bool]]:
    """(top-level name, imported at module level, guarded by `except ImportError` with a fallback) of every
    absolute import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    module_level = {id(n) for n in tree.body}
    for node in tree.body:  # if / try blocks at module level run at import, `if TYPE_CHECKING:` does not
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try)):
            module_level |= {id(n) for n in ast.walk(node)}
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            caught = {n.id for h in node.handlers for n in ast.walk(h.type or ast.Name("BaseException"))
                      if isinstance(n, ast.Name)}
            if caught & {"ImportError", "ModuleNotFoundError"}:
                guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], id(node) in module_level, id(node) in guarded) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], id(node) in module_level, id(node) in guarded))
    return out


def test_every_third_party_import_is_a_declared_dependency():
    import importlib.metadata as md

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def dist(req: str) -> str:
        return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]).lower()

    core = {dist(r) for r in project["dependencies"]}
    extras = {dist(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    provides = md.packages_distributions()
    missing, extra_at_import = [], []
    for path in sorted((ROOT / "src" / "gpt2kit").rglob("*.py")):
        for name, at_import, guarded in _imports(path):
            if name in sys.stdlib_module_names or name == "gpt2kit" or guarded:
                continue  # (a guarded import has a fallback: the package is optional)
            dists = {dist(d) for d in provides.get(name, [])}
            where = f"{name} ({path.relative_to(ROOT)})"
            if not dists & (core | extras):
                missing.append(where)
            elif at_import and not dists & core:
                extra_at_import.append(where)  # an optional dependency imported at module import time
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(set(missing))}"
    assert not extra_at_import, f"optional dependencies imported at module level: {sorted(set(extra_at_import))}"
