"""Text generation: one decode loop for the CLI, the Python API and `GPT.generate`.

Two layers:
- `generate_ids(model, prompts, ...)`: token ids in, token ids out. Left-pads a batch of prompts of
  different lengths (positions come from the attention mask, so every row sees the positions it would
  see alone), prefills a pre-allocated KV cache once, then decodes one token per step. Repetition
  penalty, temperature, top-k, top-p, EOS, and an `on_step` callback that can stop rows early.
- `generate_text(model, tokenizer, prompts, ...)`: strings in, `Completion`s out; adds `num_samples`,
  `seed`, stop strings and streaming of text pieces as they are decoded.

Greedy decoding of one sequence uses prompt-lookup speculative decoding (Saxena 2023; transformers'
`prompt_lookup_num_tokens`) by default: the tokens that followed the last earlier occurrence of the
sequence's final 3-, 2- or 1-gram are proposed as a draft, one forward pass over [last token + draft]
checks them all, and the longest prefix equal to the model's own argmax is kept, plus the model's next
token. Rejected positions are dropped by moving `cache.pos` back. The output is plain greedy decoding's,
token for token (up to float rounding between a 1-token and a k-token forward pass deciding a near-tie).

The loop is lean on purpose (it is benchmarked against `transformers.generate`): no per-step
allocation of masks when there is no padding, tokens written into a pre-allocated buffer, no
device sync unless EOS or a callback needs one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gpt2kit.errors import UserError
from gpt2kit.model import GPT, sample_next

# on_step(step, tokens): tokens (B,) just chosen (CPU tensor); may return a bool (B,) tensor of rows to stop.
StepCallback = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float) -> None:
    """Raise a UserError for sampling settings that make no sense."""
    if not temperature >= 0 or temperature == float("inf"):  # also NaN
        raise UserError(f"--temperature must be a number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be a positive integer, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    if not 0 < repetition_penalty < float("inf"):
        raise UserError(f"--repetition-penalty must be > 0 (1 = off), got {repetition_penalty}")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids (B, T), attention mask (B, T) or None when all prompts have the same length)."""
    lengths = [len(p) for p in prompts]
    if min(lengths) < 1:
        raise UserError("every prompt needs at least one token; give a non-empty prompt")
    T = max(lengths)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, T - len(p) :] = 1
    return ids, (None if min(lengths) == T else mask)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (Keskar et al. 2019), as in transformers: divide positive logits of
    tokens already seen by `penalty`, multiply negative ones. seen: bool (B, V)."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def generate_ids(
    model: GPT,
    prompts: torch.Tensor | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    on_step: StepCallback | None = None,
    use_cache: bool = True,
    prompt_lookup: int | None = None,
) -> torch.Tensor:
    """New tokens (B, n), n <= max_new_tokens, for a batch of prompts.

    prompts: a (B, T) tensor (with `attention_mask` (B, T), 1 = token, 0 = left padding) or a list
    of token-id lists of any lengths (left-padded here). temperature 0 is greedy. Rows that emit
    `eos_id` or that `on_step` stops are filled with `eos_id` (else 0) until every row is done;
    generation ends early when all rows are done. generator: one for the batch or one per row.

    Uses the KV cache while the sequence fits in `block_size` (always with RoPE); past that, each step
    recomputes the last `block_size` tokens (the same tokens as without a cache, only slower).

    prompt_lookup: the most draft tokens per step of prompt-lookup speculative decoding; None (default)
    = `DEFAULT_PROMPT_LOOKUP` when it applies, 0 = off. It applies to greedy decoding (temperature 0)
    of one sequence without padding, with the KV cache; elsewhere it is ignored. Same tokens, fewer
    forward passes when the text repeats itself (code, quotes, extraction, loops).
    """
    if prompt_lookup is not None and prompt_lookup < 0:
        raise UserError(f"--prompt-lookup must be >= 0 (0 = off), got {prompt_lookup}")
    with torch.inference_mode():
        out = _generate_ids(model, prompts, max_new_tokens, attention_mask, temperature, top_k, top_p,
                            repetition_penalty, eos_id, generator, on_step, use_cache,
                            DEFAULT_PROMPT_LOOKUP if prompt_lookup is None else prompt_lookup)
    return out.clone()  # a normal tensor, usable with autograd (inference tensors are not)


def _generate_ids(model, prompts, max_new_tokens, attention_mask, temperature, top_k, top_p,
                  repetition_penalty, eos_id, generator, on_step, use_cache, prompt_lookup) -> torch.Tensor:
    device = model.transformer.wte.weight.device
    if isinstance(prompts, torch.Tensor):
        idx, mask = prompts, attention_mask
        if mask is not None and bool(mask.all()):
            mask = None  # no padding: the plain causal path is faster
    else:
        idx, mask = left_pad(prompts)
    idx = idx.to(device)
    B, T = idx.shape
    if max_new_tokens <= 0:
        return idx.new_zeros((B, 0))
    fill = eos_id if eos_id is not None else 0
    cfg = model.config
    total = T + max_new_tokens
    limit = total if cfg.rope else min(total, cfg.block_size)  # positions the cache can hold
    _check_memory(model, B, T, max_new_tokens, limit if use_cache and T < limit else 0, mask is not None, device)

    # Pre-allocated buffers: the whole sequence (for recompute past block_size) and its mask.
    seq = idx.new_full((B, total), fill)
    seq[:, :T] = idx
    full_mask = None
    if mask is not None:
        full_mask = torch.ones((B, total), dtype=torch.long, device=device)
        full_mask[:, :T] = mask.to(device)
        # Track positions ourselves: cheaper than the model's cumsum over the whole mask every step.
        next_pos = full_mask[:, :T].sum(-1, keepdim=True) - 1  # (B, 1) position of the last prompt token
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros((B, cfg.vocab_size), dtype=torch.bool, device=device)
        # Padding is not "seen": point pad positions at the row's last token, which is real.
        real = idx if mask is None else torch.where(mask.to(device).bool(), idx, idx[:, -1:])
        seen.scatter_(1, real, True)
    done = torch.zeros(B, dtype=torch.bool, device=device) if (eos_id is not None or on_step) else None

    was_training = model.training
    model.eval()
    try:
        cache = model.make_cache(B, limit) if (use_cache and T < limit) else None
        if prompt_lookup > 0 and temperature <= 0 and B == 1 and mask is None and cache is not None:
            n = _greedy_prompt_lookup(model, seq, T, max_new_tokens, cache, prompt_lookup, seen,
                                      repetition_penalty, eos_id, on_step)
            return seq[:, T : T + n]
        if cache is not None:  # prefill
            logits = model(idx, attention_mask=None if mask is None else full_mask[:, :T], cache=cache)[:, -1]
        n = 0
        for step in range(max_new_tokens):
            L = T + step  # tokens in seq so far
            if step > 0:
                if cache is not None and cache.pos < cache.max_len:
                    x = seq[:, L - 1 : L]
                    if full_mask is None:
                        logits = model(x, cache=cache)[:, -1]
                    else:
                        next_pos += 1
                        logits = model(x, attention_mask=full_mask[:, :L], position_ids=next_pos, cache=cache)[:, -1]
                else:
                    logits = _recompute(model, seq, full_mask, L)
            elif cache is None:
                logits = _recompute(model, seq, full_mask, L)
            if seen is not None:
                logits = apply_repetition_penalty(logits, seen, repetition_penalty)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if done is not None:
                nxt = nxt.masked_fill(done, fill)
            seq[:, L] = nxt
            n = step + 1
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            if done is not None:
                if eos_id is not None:
                    done |= nxt == eos_id
                if on_step is not None:
                    stop = on_step(step, nxt.cpu())
                    if stop is not None:
                        done |= stop.to(device)
                if bool(done.all()):
                    break
    finally:
        model.train(was_training)
    return seq[:, T : T + n]


def _check_memory(model: GPT, B: int, T: int, max_new_tokens: int, cache_len: int, padded: bool, device) -> None:
    """The buffers of a generation are allocated up front: one the device cannot hold is one error line, not an
    allocator traceback (the sequence buffer grows with max_new_tokens; with RoPE the KV cache does too)."""
    cfg = model.config
    total = T + max_new_tokens
    need = B * total * 8 * (2 if padded else 1)  # int64 tokens (+ the attention mask)
    need += 2 * cfg.n_layer * B * cfg.kv_heads * cache_len * cfg.head_dim * model.transformer.wte.weight.element_size()
    if need < 1 << 28:
        return  # small: not worth asking the system
    from gpt2kit.memory import check_fits, human

    short = check_fits(need, device)
    if short is not None:
        context = "" if cfg.rope else f"; the model reads at most {cfg.block_size} tokens at a time"
        raise UserError(f"--max-new-tokens {max_new_tokens:,}: {B} sequence(s) of up to {total:,} tokens need "
                        f"{human(need)} of memory but {human(short[0])} is {short[1]}; lower --max-new-tokens{context}")


DEFAULT_PROMPT_LOOKUP = 10
MAX_NGRAM = 3


def _greedy_prompt_lookup(model: GPT, seq: torch.Tensor, T: int, max_new_tokens: int, cache, k: int,
                          seen: torch.Tensor | None, penalty: float, eos_id: int | None,
                          on_step: StepCallback | None) -> int:
    """Greedy decoding of one row (seq (1, T + max_new_tokens), prompt in seq[:, :T]) with
    prompt-lookup drafts of at most k tokens; returns the number of new tokens written to seq.

    Invariant at the top of the loop: `toks` holds the L tokens so far, the cache holds the first
    L - 1 (cache.pos == L - 1), and the next forward pass feeds the last token plus the draft.
    """
    toks: list[int] = seq[0, :T].tolist()
    # (n-gram) -> index of the token that followed its latest occurrence whose successor is known.
    follow: dict[tuple[int, ...], int] = {}

    def index(upto: int, start: int) -> None:  # record n-grams ending before positions start..upto-1
        for j in range(max(1, start), upto):
            for m in range(1, min(MAX_NGRAM, j) + 1):
                follow[tuple(toks[j - m : j])] = j

    index(T, 1)
    if T > 1:  # prefill all but the last prompt token
        model(seq[:, : T - 1], cache=cache)
    cap = k  # current draft length: shrinks after rejections, grows back after full acceptances
    n = 0
    step = 0
    while n < max_new_tokens:
        L = T + n
        room = min(max_new_tokens - n - 1, cache.max_len - cache.pos - 1)  # tokens after the bonus one
        draft: list[int] = []
        if room > 0:
            for m in range(min(MAX_NGRAM, L - 1), 0, -1):
                p = follow.get(tuple(toks[L - m :]))
                if p is not None:
                    # Copy what followed, continuing the copy into the draft itself when it runs
                    # into the present (a repeating pattern keeps repeating).
                    for i in range(min(cap, room)):
                        src = p + i
                        draft.append(toks[src] if src < L else draft[src - L])
                    break
        if cache.pos >= cache.max_len:  # past block_size without RoPE: recompute, one token per step
            logits = _recompute(model, seq, None, L)
        else:
            d = len(draft)
            if d:
                seq[0, L : L + d] = torch.as_tensor(draft, dtype=seq.dtype)
            logits = model(seq[:, L - 1 : L + d], cache=cache)[0]  # (1 + d, V)
        if seen is not None:
            rows = seen.expand(logits.size(0), -1).clone()  # row i has also seen draft[:i]
            for i, t in enumerate(draft):
                rows[i + 1 :, t] = True
            logits = apply_repetition_penalty(logits, rows, penalty)
        pred = logits.argmax(dim=-1).tolist()
        a = 0
        while a < len(draft) and draft[a] == pred[a]:
            a += 1
        if draft:
            cache.pos -= len(draft) - a  # forget the rejected positions (overwritten later)
            cap = min(k, cap * 2) if a == len(draft) else max(1, a + 1)
        new = pred[: a + 1]
        stop = False
        for t in new:
            seq[0, L] = t
            toks.append(t)
            L += 1
            n += 1
            if seen is not None:
                seen[0, t] = True
            if eos_id is not None and t == eos_id:
                stop = True
            if on_step is not None:
                stopped = on_step(step, torch.tensor([t]))
                if stopped is not None and bool(stopped.any()):
                    stop = True
            step += 1
            if stop:
                break
        if stop:
            break
        index(L, L - len(new))
    return n


def _recompute(model: GPT, seq: torch.Tensor, full_mask: torch.Tensor | None, L: int) -> torch.Tensor:
    """Last-position logits from the last block_size tokens, without a cache."""
    start = 0 if model.config.rope else max(0, L - model.config.block_size)
    m = None if full_mask is None else full_mask[:, start:L]
    return model(seq[:, start:L], attention_mask=m)[:, -1]


# ---------------------------------------------------------------- text


@dataclass
class Completion:
    prompt_index: int
    sample_index: int
    text: str  # the new text only, without the prompt, cut before a stop string
    tokens: list[int]  # the new token ids (up to, not including, EOS)
    finish_reason: str  # "eos", "stop" or "length"


class _TextRow:
    """Incremental detokenization of one row: finds stop strings, releases text safe to stream."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1  # chars that might start a stop string
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish: str | None = None

    def push(self, token: int) -> str:
        """Add a token; return the text that is now final (may be empty)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        self.text = text
        if self.stop:
            # Search only the tail that could contain a stop string that is new in this step.
            start = max(0, self.emitted - self.hold)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = text[: min(hits)]
                self.finish = "stop"
                return self.flush()
        safe = len(text) - self.hold
        if safe <= self.emitted:
            return ""
        piece, self.emitted = text[self.emitted : safe], safe
        return piece

    def flush(self) -> str:
        piece, self.emitted = self.text[self.emitted :], len(self.text)
        return piece


def generate_text(
    model: GPT,
    tokenizer,
    prompts: str | Sequence[str],
    max_new_tokens: int = 128,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_samples: int = 1,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stream: Callable[[int, str], None] | None = None,
    batch_size: int = 16,
    prompt_lookup: int | None = None,
) -> list[Completion]:
    """Complete each prompt `num_samples` times; returns Completions in (prompt, sample) order.

    tokenizer: has encode(str) -> list[int], decode(list[int]) -> str and eos_id (gpt2kit.tokenizer).
    stop: strings that end a completion (not included in its text).
    stream(row, piece): called with each piece of final text as it is decoded; `row` counts
    completions in the order returned.
    seed: the same seed and settings give the same samples, whatever the batch size and the other
    prompts (each completion has its own random generator, seeded from (seed, prompt, sample)).
    prompt_lookup: see `generate_ids` (greedy, one completion per batch: same text, often faster).
    """
    check_sampling(temperature, top_k, top_p, repetition_penalty)
    if any(not s for s in stop):
        raise UserError("--stop strings must not be empty (an empty string would stop at once)")
    if num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {num_samples}")
    if isinstance(prompts, str):
        prompts = [prompts]
    eos_id = getattr(tokenizer, "eos_id", None)
    encoded = [tokenizer.encode(p) for p in prompts]
    for text, ids in zip(prompts, encoded):
        if not ids:
            if eos_id is None:
                raise UserError(f"prompt {text!r} has no tokens and the tokenizer has no EOS to start from")
            ids.append(eos_id)  # an empty prompt: start from end-of-text, like GPT-2's unconditional samples
        if max(ids) >= model.config.vocab_size:
            raise UserError(f"the tokenizer gives id {max(ids)} but the model has only {model.config.vocab_size} "
                            "tokens; use the tokenizer the model was trained with")
    jobs = [(p, s) for p in range(len(encoded)) for s in range(num_samples)]
    device = model.transformer.wte.weight.device
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    results: list[Completion] = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        rows = [_TextRow(tokenizer, stop) for _ in chunk]

        def on_step(step: int, tokens: torch.Tensor, rows=rows, base=start) -> torch.Tensor:
            stopped = torch.zeros(len(rows), dtype=torch.bool)
            for i, (row, tok) in enumerate(zip(rows, tokens.tolist())):
                if row.finish is not None:
                    stopped[i] = True
                    continue
                if tok == eos_id:
                    row.finish = "eos"
                    piece = row.flush()
                else:
                    piece = row.push(tok)
                if stream is not None and piece:
                    stream(base + i, piece)
                stopped[i] = row.finish is not None
            return stopped

        need_callback = bool(stop) or stream is not None
        out = generate_ids(
            model, [encoded[p] for p, _ in chunk], max_new_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, repetition_penalty=repetition_penalty, eos_id=eos_id,
            generator=[row_generator(seed, p, s, device) for p, s in chunk],
            on_step=on_step if need_callback else None, prompt_lookup=prompt_lookup,
        ).tolist()
        for i, ((p, s), row) in enumerate(zip(chunk, rows)):
            if not need_callback:  # decode once at the end
                toks = out[i]
                if eos_id is not None and eos_id in toks:
                    toks, row.finish = toks[: toks.index(eos_id)], "eos"
                row.ids, row.text = toks, tokenizer.decode(toks)
            elif row.finish is None:
                row.text = tokenizer.decode(row.ids)
                piece = row.flush()
                if stream is not None and piece:
                    stream(start + i, piece)
            results.append(Completion(p, s, row.text, row.ids, row.finish or "length"))
    return results


def row_generator(seed: int, prompt_index: int, sample_index: int, device=None) -> torch.Generator:
    """The random generator of one completion: depends on nothing but these three numbers."""
    mixed = hash((seed, prompt_index, sample_index)) & (2**63 - 1)  # int tuples hash deterministically
    return torch.Generator(device=device).manual_seed(mixed)


# ---------------------------------------------------------------- loading


def load_model_and_tokenizer(src: str, tokenizer: str | None = None, device: str | None = None,
                              kind: str = "lm", int8: bool = False):
    """(model, tokenizer) for any `--model` source: the tokenizer saved with the model, else
    `tokenizer` (a `--tokenizer` value), else GPT-2's own when the vocabulary sizes fit.
    `kind`: "lm" (generate, eval, serve) or "classifier" (predict); the other kind is one error line.
    `int8`: linear layers in int8 for CPU decoding (gpt2kit.quantize), after the checks above."""
    from gpt2kit.checkpoint import load_model, tokenizer_source
    from gpt2kit.tokenizer import load_tokenizer

    model = load_model(src, device=resolve_device(device))
    is_classifier = getattr(model, "labels", None) is not None
    if kind == "lm" and is_classifier:
        raise UserError(f"{src} is a classifier (labels {', '.join(model.labels)}), not a language model; "
                        "use `gpt2kit predict` with it")
    if kind == "classifier" and not is_classifier:
        raise UserError(f"{src} is a language model, not a classifier; train one with "
                        "`gpt2kit finetune --task classify`, or use `gpt2kit generate` for text")
    tok_src = tokenizer or tokenizer_source(src)
    if tok_src is None:
        if model.config.vocab_size < 50257:
            raise UserError(f"no tokenizer found next to {src} and its vocabulary ({model.config.vocab_size}) "
                            "is smaller than GPT-2's; pass --tokenizer PATH")
        tok_src = "gpt2"
    tok = load_tokenizer(tok_src)
    if tok.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer {tok_src} has {tok.vocab_size} ids but the model only "
                        f"{model.config.vocab_size}; pass the tokenizer the model was trained with (--tokenizer)")
    if int8:
        from gpt2kit.quantize import quantize_int8

        quantize_int8(model)
    return model, tok


def resolve_device(device: str | None) -> str:
    """`auto`/None: CUDA when available, else MPS, else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available here; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device {device}: MPS is not available here; use --device cpu or auto")
    return device
