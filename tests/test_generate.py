"""Generation: KV cache = no cache, left padding = alone, seeds reproduce, stop strings, CLI."""

from __future__ import annotations

import pytest
import torch

from gpt2kit.cli import main
from gpt2kit.generate import apply_repetition_penalty, generate_ids, generate_text
from gpt2kit.model import GPT, GPTConfig

V = 97


def build(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=V)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def greedy_by_recomputing(model: GPT, prompt: list[int], n: int) -> list[int]:
    """The reference: recompute the whole (cropped) sequence every step, no cache, no padding."""
    seq = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            logits = model(seq[:, -model.config.block_size :])[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq[0, len(prompt) :].tolist()


@pytest.mark.parametrize("kw", [dict(), dict(rope=True, n_kv_head=1, sliding_window=6)], ids=["gpt2", "options"])
def test_greedy_with_cache_equals_without(kw):
    model = build(**kw)
    prompt = torch.randint(0, V, (2, 7))
    cached = generate_ids(model, prompt, 20, temperature=0)
    uncached = generate_ids(model, prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached[0].tolist() == greedy_by_recomputing(model, prompt[0].tolist(), 20)


def test_past_block_size_the_context_is_cropped_like_recomputing():
    model = build(block_size=16)
    prompt = torch.randint(0, V, (10,)).tolist()
    out = generate_ids(model, [prompt], 20, temperature=0)  # 30 > 16: cache, then cropped recompute
    assert out[0].tolist() == greedy_by_recomputing(model, prompt, 20)


@pytest.mark.parametrize("kw", [dict(), dict(rope=True, n_kv_head=1)], ids=["gpt2", "rope"])
def test_left_padded_batch_equals_each_prompt_alone(kw):
    model = build(**kw)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (3, 11, 6, 1)]
    batch = generate_ids(model, prompts, 15, temperature=0)
    for row, prompt in zip(batch, prompts):
        alone = generate_ids(model, [prompt], 15, temperature=0)[0]
        assert row.tolist() == alone.tolist()


def test_repetition_penalty_in_a_padded_batch_equals_alone():
    model = build()
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]]
    batch = generate_ids(model, prompts, 12, temperature=0, repetition_penalty=1.8)
    for row, prompt in zip(batch, prompts):
        alone = generate_ids(model, [prompt], 12, temperature=0, repetition_penalty=1.8)[0]
        assert row.tolist() == alone.tolist()


def test_repetition_penalty_follows_ctrl():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]


def test_same_seed_same_samples_and_a_different_seed_differs():
    model = build()
    prompt = torch.randint(0, V, (4, 5))

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return generate_ids(model, prompt, 12, temperature=1.0, top_k=40, top_p=0.95, generator=g)

    assert torch.equal(sample(3), sample(3))
    assert not torch.equal(sample(3), sample(4))


def test_eos_ends_rows_and_generation_stops_when_all_are_done():
    model = build()
    prompt = [[3, 4, 5]]
    free = generate_ids(model, prompt, 10, temperature=0)[0].tolist()
    k = next(i for i in range(1, 10) if free[i] not in free[:i])  # a token that first appears at step k
    eos = free[k]
    out = generate_ids(model, prompt + [[9, 9, 9, 9]], 10, temperature=0, eos_id=eos)
    assert out[0, : k + 1].tolist() == free[: k + 1]
    assert (out[0, k + 1 :] == eos).all()  # finished rows are filled with EOS
    once = generate_ids(model, prompt, 10, temperature=0, eos_id=eos)
    assert once.shape[1] == k + 1  # all rows done: no more steps


def test_gpt_generate_is_a_thin_wrapper():
    model = build()
    idx = torch.randint(0, V, (2, 5))
    out = model.generate(idx, 8, temperature=0)
    assert torch.equal(out[:, :5], idx)
    assert torch.equal(out[:, 5:], generate_ids(model, idx, 8, temperature=0))
    assert out.requires_grad is False and not out.is_inference()


# ---------------------------------------------------------------- text


@pytest.fixture(scope="module")
def tok():
    from gpt2kit.tokenizer import load_tokenizer

    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def gpt2_vocab_model(tok):
    return build(vocab_size=tok.vocab_size)


def test_text_stop_strings_cut_the_completion_and_stream_matches(tok, gpt2_vocab_model):
    model = gpt2_vocab_model
    free = generate_text(model, tok, "def f(x):", 24, temperature=0)[0]
    assert free.finish_reason == "length" and free.text == tok.decode(free.tokens)
    stop = free.text[5:8]  # a string that occurs in the free completion
    assert stop and stop in free.text
    pieces: list[str] = []
    cut = generate_text(model, tok, "def f(x):", 24, temperature=0, stop=[stop],
                        stream=lambda row, piece: pieces.append(piece))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]
    assert "".join(pieces) == cut.text


def test_text_samples_are_reproducible_and_streaming_covers_every_row(tok, gpt2_vocab_model):
    model = gpt2_vocab_model
    kw = dict(temperature=0.9, top_p=0.9, num_samples=3, seed=7)
    a = generate_text(model, tok, ["Hello", "The quick brown"], 10, **kw)
    streamed: dict[int, str] = {}
    b = generate_text(model, tok, ["Hello", "The quick brown"], 10, batch_size=4,
                      stream=lambda r, p: streamed.__setitem__(r, streamed.get(r, "") + p), **kw)
    assert [(c.prompt_index, c.sample_index) for c in a] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len({c.text for c in a}) > 1  # samples differ from each other
    assert [c.text for c in a] == [c.text for c in b]  # same seed: same samples, whatever the batching
    assert [streamed.get(i, "") for i in range(6)] == [c.text for c in b]
    alone = generate_text(model, tok, "The quick brown", 10, **{**kw, "num_samples": 1})
    assert alone[0].text != a[3].text  # a different prompt index is a different stream
    c = generate_text(model, tok, ["Hello"], 10, **{**kw, "seed": 8})
    assert c[0].text != a[0].text


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, gpt2_vocab_model, tok):
    from gpt2kit.hf import export

    return export(gpt2_vocab_model, tmp_path_factory.mktemp("m") / "hf", tokenizer=tok)


def test_cli_generate_greedy_matches_the_api(hf_dir, tok, gpt2_vocab_model, capsys):
    rc = main(["generate", "--model", str(hf_dir), "--prompt", "Hello", "--max-new-tokens", "12",
               "--temperature", "0"])
    out = capsys.readouterr().out
    ref = generate_text(gpt2_vocab_model, tok, "Hello", 12, temperature=0)[0].text
    assert rc == 0
    assert out == "Hello" + ref + "\n"


def test_cli_generate_prompt_lookup_gives_the_same_text(hf_dir, capsys):
    argv = ["generate", "--model", str(hf_dir), "--prompt", "a b a b a b", "--max-new-tokens", "16",
            "--temperature", "0"]
    outs = []
    for k in ("0", "4"):
        assert main([*argv, "--prompt-lookup", k]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_cli_generate_reads_prompts_from_a_file_and_json(hf_dir, tmp_path, capsys):
    import json

    f = tmp_path / "prompts.txt"
    f.write_text("one\ntwo\n")
    rc = main(["generate", "--model", str(hf_dir), "--prompt-file", str(f), "--max-new-tokens", "4",
               "--num-samples", "2", "--seed", "1", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    assert [(r["prompt"], r["sample"]) for r in rows] == [("one", 0), ("one", 1), ("two", 0), ("two", 1)]


@pytest.mark.parametrize("argv", [
    ["--temperature", "-1"],
    ["--top-p", "1.5"],
    ["--max-new-tokens", "0"],
    ["--prompt-file", "/nonexistent/prompts.txt"],
    ["--prompt-lookup", "-1"],
])
def test_cli_generate_user_errors(hf_dir, argv, capsys):
    rc = main(["generate", "--model", str(hf_dir), "--prompt", "x", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------- prompt lookup


def repetitive_prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    rand = torch.randint(0, V, (12,), generator=g).tolist()
    return [
        [7],  # one token: no prefill, n-grams come from the generated text only
        rand,  # no repeats in the prompt
        [1, 2, 3, 4, 5] * 4,  # a loop
        rand[:6] + [9, 9, 9] + rand[:6] + [9],  # a repeated span, then its start again
        [4, 4, 4, 4, 4, 4],
    ]


@pytest.mark.parametrize("kw", [dict(), dict(rope=True, n_kv_head=1, sliding_window=6)], ids=["gpt2", "options"])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_prompt_lookup_equals_plain_greedy(kw, k):
    model = build(**kw)
    for prompt in repetitive_prompts():
        plain = generate_ids(model, [prompt], 40, temperature=0, prompt_lookup=0)
        fast = generate_ids(model, [prompt], 40, temperature=0, prompt_lookup=k)
        assert fast.tolist() == plain.tolist(), prompt
        if k == 3:
            assert plain[0].tolist() == greedy_by_recomputing(model, prompt, 40)


def test_prompt_lookup_is_the_default_and_drafts_are_accepted(monkeypatch):
    """The default uses prompt lookup for greedy batch 1, and on a looping text it needs far fewer
    forward passes than tokens (drafts accepted), with the same tokens."""
    model = build()
    calls = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(a[0].shape[1]) or real(*a, **k))
    out = generate_ids(model, [[1, 2, 3, 4, 5] * 4], 40, temperature=0)
    n_default = len(calls)
    calls.clear()
    plain = generate_ids(model, [[1, 2, 3, 4, 5] * 4], 40, temperature=0, prompt_lookup=0)
    assert out.tolist() == plain.tolist()
    assert len(calls) == 40  # prefill + 39 single-token steps
    assert n_default < 20 and max(calls[1:]) == 1


def test_prompt_lookup_past_block_size_and_with_repetition_penalty():
    model = build(block_size=24)
    for prompt in repetitive_prompts():
        plain = generate_ids(model, [prompt], 30, temperature=0, prompt_lookup=0)  # crosses block_size
        fast = generate_ids(model, [prompt], 30, temperature=0, prompt_lookup=8)
        assert fast.tolist() == plain.tolist()
    model = build()
    for prompt in repetitive_prompts():
        plain = generate_ids(model, [prompt], 30, temperature=0, repetition_penalty=1.3, prompt_lookup=0)
        fast = generate_ids(model, [prompt], 30, temperature=0, repetition_penalty=1.3, prompt_lookup=8)
        assert fast.tolist() == plain.tolist()


def test_prompt_lookup_stops_at_eos_and_on_step_like_plain():
    model = build()
    prompt = [[1, 2, 3, 4, 5] * 4]
    free = generate_ids(model, prompt, 30, temperature=0, prompt_lookup=0)[0].tolist()
    for eos in dict.fromkeys(free[1:8]):  # tokens first seen at different steps, some inside drafts
        plain = generate_ids(model, prompt, 30, temperature=0, eos_id=eos, prompt_lookup=0)
        fast = generate_ids(model, prompt, 30, temperature=0, eos_id=eos, prompt_lookup=10)
        assert fast.tolist() == plain.tolist() and fast[0, -1] == eos
    steps: list[tuple[int, int]] = []

    def on_step(step, tokens):
        steps.append((step, int(tokens[0])))
        return torch.tensor([step == 12])

    fast = generate_ids(model, prompt, 30, temperature=0, on_step=on_step, prompt_lookup=10)
    assert fast[0].tolist() == free[:13]
    assert steps == list(enumerate(free[:13]))  # every token reported once, in order


def test_prompt_lookup_cache_rollback_leaves_the_cache_as_a_plain_prefill_would(monkeypatch):
    """After drafting, the cache's live part [:pos] equals the keys/values of a fresh prefill
    of the same tokens (rejected positions were forgotten, not kept)."""
    model = build()
    prompt = [1, 2, 3, 4, 5] * 4
    caches, fed = [], []
    real, forward = model.make_cache, model.forward
    monkeypatch.setattr(model, "make_cache", lambda *a: caches.append(real(*a)) or caches[-1])
    monkeypatch.setattr(model, "forward", lambda *a, **k: fed.append(a[0].shape[1]) or forward(*a, **k))
    out = generate_ids(model, [prompt], 25, temperature=0, prompt_lookup=10)[0].tolist()
    cache = caches[-1]
    seq = prompt + out
    assert cache.pos == len(seq) - 1  # everything but the last token
    fresh = real(1, cache.max_len)
    with torch.no_grad():
        model(torch.tensor([seq[:-1]]), cache=fresh)
    torch.testing.assert_close(cache.k[..., : cache.pos, :], fresh.k[..., : fresh.pos, :], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cache.v[..., : cache.pos, :], fresh.v[..., : fresh.pos, :], atol=1e-5, rtol=1e-4)
    assert sum(fed) > cache.pos  # some drafted positions were rejected and rolled back


def test_prompt_lookup_with_stop_strings_through_generate_text(tok, gpt2_vocab_model):
    model = gpt2_vocab_model
    prompt = "def f(x):\n    return x + 1\n\ndef g(x):\n    return x + 1\n\ndef"
    free = generate_text(model, tok, prompt, 30, temperature=0, prompt_lookup=0)[0]
    fast = generate_text(model, tok, prompt, 30, temperature=0, prompt_lookup=10)[0]
    assert fast.tokens == free.tokens and fast.text == free.text
    stop = free.text[4:7]
    assert stop
    pieces: list[str] = []
    a = generate_text(model, tok, prompt, 30, temperature=0, stop=[stop], prompt_lookup=0)[0]
    b = generate_text(model, tok, prompt, 30, temperature=0, stop=[stop], prompt_lookup=10,
                      stream=lambda r, p: pieces.append(p))[0]
    assert (b.text, b.finish_reason) == (a.text, "stop") and "".join(pieces) == b.text


def test_prompt_lookup_negative_is_a_user_error():
    from gpt2kit.errors import UserError

    with pytest.raises(UserError):
        generate_ids(build(), [[1, 2]], 3, temperature=0, prompt_lookup=-1)
