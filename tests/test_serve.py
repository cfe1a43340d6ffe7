"""gpt2kit serve: the real server on a free 127.0.0.1 port, called with a real HTTP client.

Completions equal `gpt2kit generate` for the same seed (also when batched with others), streaming gives
the same text, malformed requests get the right status and a JSON error, full queues 503, slow requests
504, disconnected clients stop their generation, SIGTERM lets in-flight requests finish.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

httpx = pytest.importorskip("httpx")

from gpt2kit.cli import main  # noqa: E402
from gpt2kit.serve import (  # noqa: E402
    CompletionRequest,
    Engine,
    Limits,
    bind_socket,
    create_app,
    make_server,
    prepare_prompts,
    socket_url,
)

CONTEXT = 2048  # long enough that a 2000-token request outlives a disconnect or a short timeout


@pytest.fixture(scope="module")
def tok():
    from gpt2kit.tokenizer import load_tokenizer

    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok) -> Path:
    """A tiny random GPT-2 with GPT-2's vocabulary, exported as a Hugging Face directory. Its token
    embeddings are scaled up so its next-token distributions are peaked like a trained model's (top
    token 5-35%), not uniform: seeds, temperatures and top-k then change the samples."""
    from gpt2kit.hf import export
    from gpt2kit.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=CONTEXT, vocab_size=tok.vocab_size)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(16)
    return export(model, tmp_path_factory.mktemp("serve") / "tiny", tokenizer=tok)


class Server:
    """The real app under uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, model_dir: Path, limits: Limits, name: str = "tiny"):
        from gpt2kit.generate import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(str(model_dir), None, "cpu")
        self.engine = Engine(model, tok, limits)
        self.sock = bind_socket("127.0.0.1", 0)
        self.url = socket_url(self.sock)
        self.server = make_server(create_app(self.engine, name), self.sock, shutdown_timeout=5)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    def post(self, body, **kw) -> httpx.Response:
        kw.setdefault("timeout", 60)
        if isinstance(body, (dict, list)):
            return httpx.post(self.url + "/v1/completions", json=body, **kw)
        return httpx.post(self.url + "/v1/completions", content=body, **kw)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def wait_idle(self, seconds: float = 10) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            h = self.health()
            if h["running"] == 0 and h["queued"] == 0:
                return h
            assert time.monotonic() < deadline, f"generation did not stop: {h}"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(model_dir):
    s = Server(model_dir, Limits(max_tokens=CONTEXT - 1, max_batch=8, max_queue=32))
    yield s
    s.close()


def cli_generate(capsys, model_dir: Path, prompts: list[str], max_tokens: int, **opts) -> list[str]:
    """Completions from `gpt2kit generate --json` (what the server must reproduce)."""
    argv = ["generate", "--model", str(model_dir), "--max-new-tokens", str(max_tokens), "--json"]
    for p in prompts:
        argv += ["--prompt", p]
    for k, v in opts.items():
        for item in v if isinstance(v, list) else [v]:
            argv += [f"--{k.replace('_', '-')}", str(item)]
    capsys.readouterr()
    assert main(argv) == 0
    return [json.loads(line)["completion"] for line in capsys.readouterr().out.splitlines()]


def stream_texts(response: httpx.Response) -> tuple[dict[int, str], dict[int, str], list[dict]]:
    """(text per choice, finish reason per choice, every event) of a server-sent event stream."""
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    events: list[dict] = []
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            events.append({"done": True})
            break
        ev = json.loads(data)
        events.append(ev)
        for c in ev.get("choices", []):
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            if c["finish_reason"]:
                reasons[c["index"]] = c["finish_reason"]
    return texts, reasons, events


# ---------------------------------------------------------------- endpoints


def test_models_health_and_errors_are_json(server):
    models = httpx.get(server.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"] and models["data"][0]["max_model_len"] == CONTEXT
    assert server.health()["status"] == "ok"
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "POST /v1/completions" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_concurrent_completions_equal_gpt2kit_generate(server, model_dir, capsys):
    """Three requests sent at once (so decoded in one batch, left-padded) each equal the CLI's output."""
    cases = [
        (dict(prompt=["Hello", "The quick brown fox"], n=2, max_tokens=40, temperature=0.9, top_p=0.9, seed=7),
         dict(num_samples=2, temperature=0.9, top_p=0.9, seed=7)),
        (dict(prompt="def f(x):", max_tokens=48, temperature=0), dict(temperature=0)),
        (dict(prompt="Once upon a time", max_tokens=32, temperature=1.0, top_k=5, repetition_penalty=1.3, seed=3),
         dict(temperature=1.0, top_k=5, repetition_penalty=1.3, seed=3)),
    ]
    steps_before = server.health()["steps"]
    with ThreadPoolExecutor(len(cases)) as pool:
        responses = list(pool.map(lambda c: server.post(c[0]), cases))
    for (body, opts), r in zip(cases, responses):
        assert r.status_code == 200, r.text
        out = r.json()
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        want = cli_generate(capsys, model_dir, prompts, body["max_tokens"], **opts)
        assert [c["text"] for c in out["choices"]] == want
        assert [c["index"] for c in out["choices"]] == list(range(len(want)))
        assert out["usage"]["completion_tokens"] == body["max_tokens"] * len(want)
    assert len(set(c["text"] for c in responses[0].json()["choices"])) == 4  # samples differ
    assert server.health()["max_batch_seen"] > 1
    assert server.health()["steps"] - steps_before < 40 + 48 + 32  # fewer steps than one by one


def test_stop_strings_and_seeds(server, model_dir, capsys):
    free = server.post(dict(prompt="Hello world", max_tokens=20, seed=5)).json()["choices"][0]["text"]
    stop = free[6:9]
    cut = server.post(dict(prompt="Hello world", max_tokens=20, seed=5, stop=[stop, "\u00a7never"])).json()
    assert cut["choices"][0]["text"] == free[: free.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cli_generate(capsys, model_dir, ["Hello world"], 20, seed=5, temperature=1.0, stop=stop) == [
        cut["choices"][0]["text"]]
    other = server.post(dict(prompt="Hello world", max_tokens=20, seed=6)).json()["choices"][0]["text"]
    assert other != free
    one = server.post(dict(prompt="Hello world", max_tokens=1, seed=5)).json()  # done at prefill
    assert one["usage"]["completion_tokens"] == 1 and one["choices"][0]["finish_reason"] == "length"


def test_streaming_gives_the_same_text(server):
    body = dict(prompt=["Hello", "A much longer prompt than the first one"], n=2, max_tokens=15, seed=11,
                temperature=0.8)
    whole = server.post(body).json()
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        texts, reasons, events = stream_texts(r)
    assert [texts[i] for i in range(4)] == [c["text"] for c in whole["choices"]]
    assert [reasons[i] for i in range(4)] == ["length"] * 4
    assert events[-1] == {"done": True} and events[-2]["usage"] == whole["usage"]
    assert sum(1 for e in events if e.get("choices")) > 8  # pieces arrive one by one


def test_logprobs_of_chosen_tokens(server):
    out = server.post(dict(prompt="The meaning of life is", max_tokens=8, temperature=0, logprobs=3)).json()
    lp = out["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 8
    for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) <= 3 and chosen <= 0
        assert chosen == pytest.approx(max(top.values()))  # greedy picks the most likely token
    assert lp["text_offset"][0] == 0


MALFORMED = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"prompt": "x", "temperature": NaN}', 400, None),
    ({}, 400, "prompt"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [[1, 2], "text"]}, 400, "prompt"),
    ({"prompt": [1, 99999999]}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1.5}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": CONTEXT}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": -0.1}, 400, "temperature"),
    ({"prompt": "x", "temperature": True}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "x", "top_k": 0}, 400, "top_k"),
    ({"prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "n": 33}, 400, "n"),  # more completions than the queue holds
    ({"prompt": "x", "stop": ""}, 400, "stop"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "x", "stop": 3}, 400, "stop"),
    ({"prompt": "x", "seed": "7"}, 400, "seed"),
    ({"prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ({"prompt": "x", "echo": True}, 400, "echo"),
    ({"prompt": "x", "best_of": 3}, 400, "best_of"),
    ({"prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"prompt": "x", "logit_bias": {"50256": -100}}, 400, "logit_bias"),
    ({"prompt": "x", "max_token": 5}, 400, "max_token"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "hello " * (CONTEXT - 10), "max_tokens": 20}, 413, "prompt"),
    (b'{"prompt": "' + b"x" * (5 << 20) + b'"}', 413, None),
]


@pytest.mark.parametrize("body,status,param", MALFORMED, ids=[f"{i}-{m[1]}-{m[2]}" for i, m in enumerate(MALFORMED)])
def test_malformed_requests_get_a_json_error_and_the_server_keeps_serving(server, body, status, param):
    r = server.post(body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["param"] == param
    ok = server.post(dict(prompt="still there?", max_tokens=2))
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_prompt_truncation_policies(tok):
    limits = Limits(max_tokens=100)
    long = CompletionRequest.model_validate({"prompt": "a b c d e f g h", "max_tokens": 60})
    ids = tok.encode("a b c d e f g h")
    assert prepare_prompts(long, tok, 64, tok.vocab_size, Limits(truncate="left")) == [ids[-4:]]
    cut = CompletionRequest.model_validate({"prompt": "a b c d e f g h", "max_tokens": 10, "truncate_prompt_tokens": 3})
    assert prepare_prompts(cut, tok, 64, tok.vocab_size, limits) == [ids[-3:]]
    empty = CompletionRequest.model_validate({"prompt": ""})
    assert prepare_prompts(empty, tok, 64, tok.vocab_size, limits) == [[tok.eos_id]]  # as `gpt2kit generate`


# ---------------------------------------------------------------- batching, cancelling, limits


class DigitsTokenizer:
    """Enough of a tokenizer for the engine: ids print as numbers; no EOS."""

    eos_id = None

    def decode(self, ids) -> str:
        return "".join(f" {i}" for i in ids)


@pytest.mark.parametrize("kw", [dict(), dict(rope=True, n_kv_head=1, sliding_window=6), dict(int8=True)],
                         ids=["gpt2", "options", "int8"])
def test_rows_joining_and_leaving_the_batch_equal_each_row_alone(kw):
    """Drive the engine step by step: rows join a running batch (shorter and longer than what it
    holds), others finish and leave, the cache fills up to the context and is trimmed; every row's
    tokens equal `generate_ids` of that row alone with the same generator. With --int8 too: each row's
    inputs are quantized on their own, so the batch does not change a row."""
    import asyncio

    from gpt2kit.generate import _TextRow, generate_ids, row_generator
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.serve import Job, Row, Sampling

    torch.manual_seed(0)
    int8 = kw.get("int8", False)
    model_kw = {k: v for k, v in kw.items() if k != "int8"}  # the parameter's dict is not ours to change
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=97, **model_kw)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8)
    if int8:
        from gpt2kit.quantize import quantize_int8

        quantize_int8(model)
    tok = DigitsTokenizer()
    engine = Engine(model, tok, Limits(max_tokens=31, max_batch=4))
    job = Job(asyncio.new_event_loop())
    g = torch.Generator().manual_seed(3)
    specs = [  # (step it arrives at, prompt length, max_tokens, sampling)
        (0, 20, 10, Sampling(temperature=0)),
        (0, 5, 8, Sampling(temperature=0.9, top_k=10)),
        (3, 2, 29, Sampling(temperature=1.0, top_p=0.8)),
        (5, 27, 4, Sampling(temperature=0, repetition_penalty=1.5)),  # longer than the batch: shifts it
        (9, 1, 30, Sampling(temperature=0.7)),
    ]
    rows = [Row(job, i, torch.randint(0, 97, (n,), generator=g).tolist(), m, s, row_generator(1, i, 0),
                _TextRow(tok, []), None, 97) for i, (_, n, m, s) in enumerate(specs)]
    with torch.inference_mode():
        for step in range(60):
            engine._iterate([r for (at, *_), r in zip(specs, rows) if at == step])
    assert all(r.finish == "length" for r in rows) and engine.rows == []
    assert engine.stats["max_batch_seen"] == 4
    for i, ((_, _, m, s), r) in enumerate(zip(specs, rows)):
        alone = generate_ids(model, [r.prompt], m, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                             repetition_penalty=s.repetition_penalty, generator=[row_generator(1, i, 0)],
                             prompt_lookup=0)
        assert r.text.ids == alone[0].tolist(), f"row {i}"



def test_eos_ends_a_row_like_gpt2kit_generate():
    import asyncio

    from gpt2kit.generate import _TextRow, generate_ids, row_generator
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.serve import FINISH, Job, Row, Sampling

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=97)).eval()
    prompt = [3, 4, 5]
    free = generate_ids(model, [prompt], 10, temperature=0)[0].tolist()
    k = next(i for i in range(1, 10) if free[i] not in free[:i])  # a token that first appears at step k
    tok = DigitsTokenizer()
    tok.eos_id = free[k]
    engine = Engine(model, tok, Limits(max_tokens=20))
    job = Job(asyncio.new_event_loop())
    row = Row(job, 0, prompt, 10, Sampling(temperature=0), row_generator(0, 0, 0), _TextRow(tok, []), None, 97)
    with torch.inference_mode():
        for step in range(12):
            engine._iterate([row] if step == 0 else [])
    assert row.finish == "eos" and FINISH[row.finish] == "stop" and engine.rows == []
    assert row.text.ids == free[:k] and row.text.text == tok.decode(free[:k]) and row.generated == k + 1


def test_a_short_request_joins_a_running_batch_and_leaves_first(server, model_dir, capsys):
    """Continuous batching: a short request arriving while a long one decodes is answered at once
    (it does not wait for the long one), and still equals `gpt2kit generate`."""
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json=dict(prompt="A long story:", max_tokens=CONTEXT - 100, temperature=0, stream=True)) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        short = server.post(dict(prompt="Hi", max_tokens=6, seed=2, temperature=0.7)).json()
        assert server.health()["running"] == 1  # the long one is still decoding
    assert short["choices"][0]["text"] == cli_generate(capsys, model_dir, ["Hi"], 6, seed=2, temperature=0.7)[0]
    server.wait_idle()


def test_a_disconnected_client_stops_its_generation(server):
    before = server.health()
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json=dict(prompt="Never mind", max_tokens=CONTEXT - 100, stream=True)) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
    after = server.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["tokens"] - before["tokens"] < CONTEXT - 100  # stopped early
    # Not streaming: a client that gives up waiting is cancelled as well.
    with pytest.raises(httpx.ReadTimeout):
        server.post(dict(prompt="Never mind", max_tokens=CONTEXT - 100), timeout=0.3)
    assert server.wait_idle()["cancelled"] == before["cancelled"] + 2


def test_full_queue_503_and_timeout_504(model_dir):
    s = Server(model_dir, Limits(max_tokens=CONTEXT - 1, max_batch=1, max_queue=1, timeout=120))
    try:
        long = dict(prompt="x", max_tokens=CONTEXT - 100, stream=True)
        with httpx.stream("POST", s.url + "/v1/completions", json=long, timeout=60), \
                httpx.stream("POST", s.url + "/v1/completions", json=long, timeout=60):
            busy = s.post(dict(prompt="x"))  # one completion decoding, one queued: no room
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert "--max-queue" in busy.json()["error"]["message"]
            assert (s.health()["running"], s.health()["queued"]) == (1, 1)
        s.wait_idle()  # both clients left: both completions cancelled
        s.engine.limits.timeout = 0.3  # the Limits the app reads for every new request
        slow = s.post(dict(prompt="x", max_tokens=CONTEXT - 100))
        assert slow.status_code == 504 and "--timeout" in slow.json()["error"]["message"]
        with httpx.stream("POST", s.url + "/v1/completions", json=long, timeout=60) as r:
            _, reasons, events = stream_texts(r)  # streaming: an error event, then the end
        assert not reasons and events[-2]["error"]["type"] == "timeout" and events[-1] == {"done": True}
        s.wait_idle()
        s.engine.limits.timeout = 120
        assert s.post(dict(prompt="x", max_tokens=3)).status_code == 200
    finally:
        s.close()


def test_the_official_openai_client_works_against_it(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    [model] = [m.id for m in client.models.list()]
    out = client.completions.create(model=model, prompt="Hello", max_tokens=8, seed=4, temperature=0.5)
    raw = server.post(dict(prompt="Hello", max_tokens=8, seed=4, temperature=0.5)).json()
    assert out.choices[0].text == raw["choices"][0]["text"] and out.usage.completion_tokens == 8
    pieces = [c.choices[0].text for c in client.completions.create(
        model=model, prompt="Hello", max_tokens=8, seed=4, temperature=0.5, stream=True) if c.choices]
    assert "".join(pieces) == raw["choices"][0]["text"]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=model, prompt="Hello", temperature=-1)


# ---------------------------------------------------------------- the playground

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright's own browser downloads are not used


def test_playground_streams_in_headless_chromium(server, tmp_path):
    """Chromium loads /, a prompt is typed, Generate pressed: the text streams in (many DOM updates),
    equals the API's completion for the same seed, and the stats line counts the tokens. Stop cancels."""
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    # 192 tokens: long enough (~0.5 s here) that the stream reaches the page in many reads, even when a
    # loaded machine coalesces packets
    settings = dict(prompt="Once upon a time", max_tokens=192, seed=42, temperature=0.8)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 560})
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
            page.fill("#prompt", "")
            page.locator("#prompt").press_sequentially(settings["prompt"])  # typed key by key
            page.fill("#seed", str(settings["seed"]))
            page.eval_on_selector("#max_tokens", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }",
                                  settings["max_tokens"])
            page.eval_on_selector("#temperature", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }",
                                  settings["temperature"])
            page.evaluate("""() => { window.lengths = []; new MutationObserver(() => window.lengths.push(
                    (document.getElementById('completion') || {textContent: ''}).textContent.length))
                .observe(document.getElementById('output'), {subtree: true, childList: true, characterData: true}); }""")
            page.click("#generate")
            page.wait_for_selector("#output[data-state=done]", timeout=30_000)
            text = page.text_content("#completion")
            stats = page.text_content("#stats")
            lengths = page.evaluate("window.lengths")  # the completion's length at each rendering
            shot = Path(os.environ.get("GPT2KIT_ARTIFACTS", tmp_path)) / "playground.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            # Stop: the page aborts its request, the server cancels the generation.
            cancelled = server.health()["cancelled"]
            page.eval_on_selector("#max_tokens", "e => { e.value = e.max; e.dispatchEvent(new Event('input')); }")
            page.click("#generate")
            page.wait_for_function("document.getElementById('completion').textContent.length > 0")
            page.click("#stop")
            page.wait_for_selector("#output[data-state=done]", timeout=30_000)
            stopped = page.text_content("#stats")
        finally:
            browser.close()
    assert stopped.endswith("stopped")
    assert server.wait_idle()["cancelled"] == cancelled + 1
    want = server.post(settings).json()["choices"][0]["text"]
    assert text == want and text
    partial = {n for n in lengths if 0 < n < len(text)}
    assert len(partial) >= 3, lengths  # the page showed the text growing, piece by piece
    assert stats.startswith(f"{settings['max_tokens']} tokens") and "tok/s" in stats and "length" in stats
    assert shot.stat().st_size > 10_000


# ---------------------------------------------------------------- the command


def test_cli_mistakes_are_one_error_line(model_dir, capsys):
    busy = bind_socket("127.0.0.1", 0)
    port = busy.getsockname()[1]
    try:
        for argv in (["--port", "70000"], ["--max-batch", "0"], ["--timeout", "-1"], ["--port", str(port)]):
            assert main(["serve", "--model", str(model_dir), *argv]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1, err
    finally:
        busy.close()
    assert main(["serve", "--model", "/nonexistent/model", "--port", "0"]) == 2


def test_cli_serve_sigterm_finishes_in_flight_requests(model_dir):
    """The command in its own process: JSON logs on stderr, and SIGTERM lets a running stream finish."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gpt2kit", "serve", "--model", str(model_dir), "--port", "0",
                             "--model-name", "mine"], stderr=subprocess.PIPE, text=True, env=env)
    logs: list[dict] = []
    try:
        for line in proc.stderr:
            logs.append(json.loads(line))
            if "url" in logs[-1]:
                break
        url = logs[-1]["url"]
        assert url.startswith("http://127.0.0.1:") and logs[-1]["model"] == "mine"
        result: dict = {}
        n = 400

        def stream() -> None:
            with httpx.stream("POST", url + "/v1/completions", timeout=60,
                              json=dict(prompt="Hi", max_tokens=n, stream=True, seed=1)) as r:
                lines = r.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                result["started"] = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                texts, reasons, events = stream_texts(httpx.Response(200, content="\n".join([first, *lines])))
                result.update(texts=texts, reasons=reasons, events=events)

        t = threading.Thread(target=stream)
        t.start()
        t.join(60)
        assert proc.wait(30) == -signal.SIGTERM  # the shell reports 143
        assert result["reasons"] == {0: "length"} and result["events"][-1] == {"done": True}
        rest = [json.loads(line) for line in proc.stderr.read().splitlines()]
    finally:
        if proc.poll() is None:
            proc.kill()
    access = [r for r in rest if r["logger"] == "gpt2kit.serve.access"]
    assert access and access[0]["path"] == "/v1/completions" and access[0]["status"] == 200
    assert access[0]["completion_tokens"] == n and access[0]["stream"] is True
    with pytest.raises(httpx.ConnectError):  # gone after shutdown
        httpx.get(url + "/health", timeout=2)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) != 0
