"""`gpt2kit serve`: an OpenAI-style completion server over one model, with dynamic batching.

Three layers, top to bottom:
- `Engine`: one thread owns the model. Each completion is a `Row`. Rows wait in a bounded queue, join
  the running batch between decode steps (their prompts are prefilled together, left-padded, and their
  keys/values merged into the batch's KV cache, right-aligned), and leave it as soon as they finish or
  their client goes away. Sampling is `gpt2kit.generate`'s: `apply_repetition_penalty` and `sample_next`
  on the rows that share settings, every row with its own `row_generator(seed, prompt, sample)` and its
  own `_TextRow` for stop strings and streaming; so a completion equals `gpt2kit generate` with the
  same seed, whatever else is in the batch (another batch shape changes only the last bits of the
  logits; tests/test_serve.py checks rows joining and leaving against each row decoded alone).
- `parse_request` -> `prepare_prompts` -> `make_rows`: the body of `POST /v1/completions` (OpenAI's
  fields, plus `top_k`, `repetition_penalty` and `truncate_prompt_tokens`), checked into rows or an
  `ApiError` (400, 404, 413).
- `create_app`: FastAPI routes (`/v1/completions`, `/v1/models`, `/health`, the playground at `/`), JSON
  errors in OpenAI's shape, server-sent events, disconnect watching, one JSON access-log line per request.
`serve()` loads the model, binds the socket first (a busy port is a one-line error before loading
anything), and runs uvicorn, whose SIGTERM/SIGINT handling lets in-flight requests finish
(`--shutdown-timeout`) before the engine stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException

from gpt2kit.errors import UserError
from gpt2kit.generate import _TextRow, apply_repetition_penalty, left_pad, row_generator
from gpt2kit.model import GPT, KVCache, sample_next

log = logging.getLogger("gpt2kit.serve")
access_log = logging.getLogger("gpt2kit.serve.access")

MAX_STOP = 4  # stop strings per request, as OpenAI
MAX_LOGPROBS = 5  # alternatives per token, as OpenAI


# ---------------------------------------------------------------- limits


@dataclass
class Limits:
    """What one server accepts; each field is a `gpt2kit serve` flag."""

    max_tokens: int = 512  # --max-tokens: most new tokens per completion
    max_batch: int = 16  # --max-batch: completions decoded together
    max_queue: int = 64  # --max-queue: completions waiting for a place in the batch (more: 503)
    timeout: float = 600.0  # --timeout: seconds a request may take, waiting included (more: 504)
    truncate: str = "error"  # --truncate: a prompt too long for the context: error (413) or cut on the left
    max_body: int = 4 << 20  # bytes of a request body (more: 413)

    def __post_init__(self) -> None:
        for flag in ("max_tokens", "max_batch", "max_queue"):
            v = getattr(self, flag)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {v!r}")
        if not 0 < self.timeout < float("inf"):
            raise UserError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.truncate not in ("error", "left"):
            raise UserError(f"--truncate must be `error` or `left`, got {self.truncate!r}")


class ApiError(Exception):
    """An HTTP error with an OpenAI-shaped JSON body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- engine


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0


class Job:
    """One request as the engine sees it: its rows post events to the request's asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: asyncio.Queue[list[tuple]] = asyncio.Queue()
        self.cancelled = False  # set by the request's task, read by the engine thread

    def post(self, events: list[tuple]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, events)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass

    def cancel(self) -> None:
        self.cancelled = True


class Row:
    """One completion: prompt ids, settings, random generator, text so far, place in the KV cache."""

    def __init__(self, job: Job, index: int, prompt: list[int], max_tokens: int, sampling: Sampling,
                 generator: torch.Generator, text: _TextRow, logprobs: int | None, vocab_size: int):
        self.job, self.index, self.prompt, self.max_tokens = job, index, prompt, max_tokens
        self.sampling, self.generator, self.text, self.logprobs = sampling, generator, text, logprobs
        self.seen: torch.Tensor | None = None  # tokens seen, for the repetition penalty
        if sampling.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=generator.device)
            self.seen[torch.as_tensor(prompt, device=generator.device)] = True
        self.generated = 0  # tokens chosen so far (EOS included)
        self.cached = 0  # tokens in the KV cache; they end at the cache's last used column
        self.last = 0  # the latest token, fed at the next step
        self.finish: str | None = None  # "eos", "stop" or "length"


class QueueFull(Exception):
    pass


class Engine:
    """Dynamic batching over one model in one thread (see the module docstring)."""

    def __init__(self, model: GPT, tokenizer, limits: Limits):
        self.model, self.tokenizer, self.limits = model.eval(), tokenizer, limits
        self.eos_id: int | None = getattr(tokenizer, "eos_id", None)
        self.context = model.config.block_size
        self.device = model.transformer.wte.weight.device
        self.rows: list[Row] = []  # the running batch, in KV-cache row order
        self.cache: KVCache | None = None
        self._pending: deque[Row] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"completed": 0, "cancelled": 0, "tokens": 0, "steps": 0, "max_batch_seen": 0}

    # -- control, from the event loop's thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpt2kit-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def submit(self, rows: Sequence[Row]) -> None:
        """Queue rows; raise QueueFull when the queue cannot take them all."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._pending) + len(rows) > self.limits.max_queue:
                self._pending = deque(r for r in self._pending if not r.job.cancelled)
                if len(self._pending) + len(rows) > self.limits.max_queue:
                    raise QueueFull(f"{len(self._pending)} completions are queued (--max-queue "
                                    f"{self.limits.max_queue}); retry later")
            self._pending.extend(rows)
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._pending)

    # -- the loop, in the engine's thread
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._pending and not self.rows:
                        self._cond.wait()
                    if self._stopping:
                        break
                    admit: list[Row] = []
                    while self._pending and len(self.rows) + len(admit) < self.limits.max_batch:
                        row = self._pending.popleft()
                        if row.job.cancelled:
                            self.stats["cancelled"] += 1
                        else:
                            admit.append(row)
                try:
                    self._iterate(admit)
                except Exception:  # a bug: fail the requests in the batch, keep serving the others
                    log.exception("engine step failed")
                    for job in {r.job for r in self.rows + admit}:
                        job.post([("error", 500, "internal error while generating; see the server log")])
                    self.rows, self.cache = [], None
        with self._cond:
            left = {r.job for r in list(self._pending) + self.rows}
            self._pending.clear()
        for job in left:
            job.post([("error", 503, "the server is shutting down")])
        self.rows, self.cache = [], None

    def _iterate(self, admit: list[Row]) -> None:
        """Admit new rows (prefill + first token), drop finished and abandoned rows, decode one step."""
        new_cache = None
        if admit:
            new_cache, logits = self._prefill(admit)
            self._advance(admit, logits)
        self.stats["cancelled"] += sum(r.job.cancelled and r.finish is None for r in self.rows + admit)
        keep = [i for i, r in enumerate(self.rows) if r.finish is None and not r.job.cancelled]
        join = [i for i, r in enumerate(admit) if r.finish is None and not r.job.cancelled]
        full = self.cache is not None and self.cache.pos >= self.cache.max_len
        if admit or len(keep) < len(self.rows) or full:
            self._rebuild(keep, [admit[i] for i in join], join, new_cache)
        if self.rows:
            self._step()

    def _prefill(self, rows: list[Row]) -> tuple[KVCache, torch.Tensor]:
        """Run the prompts of new rows (each distinct prompt once, left-padded together) into a
        cache of their own; return it with one row per Row, and each row's last-position logits."""
        unique: dict[tuple[int, ...], int] = {}
        order = [unique.setdefault(tuple(r.prompt), len(unique)) for r in rows]
        ids, mask = left_pad(list(unique))
        ids = ids.to(self.device)
        cache = self.model.make_cache(ids.size(0), ids.size(1))
        mask = None if mask is None else mask.to(self.device)
        logits = self.model(ids, attention_mask=mask, cache=cache)[:, -1]
        if len(unique) < len(rows):
            index = torch.tensor(order, device=self.device)
            cache.reorder(index)
            logits = logits[index]
        for r in rows:
            r.cached = len(r.prompt)
        return cache, logits

    def _rebuild(self, keep: list[int], new: list[Row], new_index: list[int],
                 new_cache: KVCache | None) -> None:
        """A fresh cache for the kept rows (indices into the batch) and the new ones (rows of
        `new_cache`), each row's tokens right-aligned at column S = the longest row's length, so
        leading all-padding columns are dropped, with room for the steps the rows may still take."""
        old = [self.rows[i] for i in keep]
        rows = old + new
        if not rows:
            self.rows, self.cache = [], None
            return
        S = max(r.cached for r in rows)
        need = max(r.max_tokens - r.generated for r in rows)
        cache = self.model.make_cache(len(rows), max(S + 1, min(self.context, S + need)))
        cache.pos = S
        for part, index, src, start in ((old, keep, self.cache, 0), (new, new_index, new_cache, len(old))):
            if part:
                w, end = min(src.pos, S), src.pos  # every row of `part` fits in its last w columns
                i = torch.tensor(index, device=self.device)
                cache.k[:, start : start + len(part), :, S - w : S] = src.k[:, i, :, end - w : end]
                cache.v[:, start : start + len(part), :, S - w : S] = src.v[:, i, :, end - w : end]
        self.rows, self.cache = rows, cache

    def _step(self) -> None:
        """Feed every row its latest token; choose the next one."""
        rows, cache = self.rows, self.cache
        S = cache.pos
        last = torch.tensor([[r.last] for r in rows], device=self.device)  # (B, 1)
        pos = torch.tensor([[r.cached] for r in rows], device=self.device)  # (B, 1) position ids
        mask = None
        if any(r.cached < S for r in rows):  # left padding: each row sees its own tokens only
            start = torch.tensor([S - r.cached for r in rows], device=self.device)
            mask = (torch.arange(S + 1, device=self.device)[None, :] >= start[:, None]).long()  # (B, S+1)
        logits = self.model(last, attention_mask=mask, position_ids=pos, cache=cache)[:, -1]
        for r in rows:
            r.cached += 1
        self.stats["steps"] += 1
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(rows))
        self._advance(rows, logits)

    def _advance(self, rows: list[Row], logits: torch.Tensor) -> None:
        """Choose each row's next token from its logits (B, V) and tell the rows' clients."""
        chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        groups: dict[Sampling, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r.sampling, []).append(i)
        for s, idx in groups.items():
            lg = logits if len(idx) == len(rows) else logits[idx]
            if s.repetition_penalty != 1.0:
                seen = torch.stack([rows[i].seen for i in idx])
                lg = apply_repetition_penalty(lg, seen, s.repetition_penalty)
            chosen[idx] = sample_next(lg, s.temperature, s.top_k, s.top_p, [rows[i].generator for i in idx])
        tops = self._logprobs(rows, logits, chosen)
        events: dict[Job, list[tuple]] = {}
        for r, tok, lp in zip(rows, chosen.tolist(), tops):
            if r.job.cancelled:
                continue
            events.setdefault(r.job, []).extend(self._accept(r, tok, lp))
        for job, evs in events.items():
            job.post(evs)

    def _logprobs(self, rows: list[Row], logits: torch.Tensor, chosen: torch.Tensor) -> list:
        """(logprob of the chosen token, {token: logprob} of the top k) for rows that asked, under the
        model's own distribution (raw logits, before temperature, top-k/top-p and penalty), as vLLM."""
        out: list = [None] * len(rows)
        idx = [i for i, r in enumerate(rows) if r.logprobs is not None]
        if not idx:
            return out
        lp = torch.log_softmax(logits[idx].float(), dim=-1)
        picked = lp.gather(1, chosen[idx, None]).squeeze(1).tolist()
        k = max(rows[i].logprobs for i in idx)
        top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
        for j, i in enumerate(idx):
            n = rows[i].logprobs
            ids, values = top_i[j, :n].tolist(), top_v[j, :n].tolist()
            top = {self.tokenizer.decode([t]): v for t, v in zip(ids, values)}
            out[i] = (picked[j], top)
        return out

    def _accept(self, r: Row, tok: int, lp) -> list[tuple]:
        """Record a row's new token; return its events: ("delta", index, text, logprob entry) and
        ("finish", index, reason, text, tokens) when it is done. Text as `generate_text` makes it."""
        r.generated += 1
        r.last = tok
        self.stats["tokens"] += 1
        if r.seen is not None:
            r.seen[tok] = True
        entry = None
        if tok == self.eos_id:
            r.finish = "eos"
            r.text.text = self.tokenizer.decode(r.text.ids)
            piece = r.text.flush()
        else:
            piece = r.text.push(tok)
            if lp is not None:
                entry = (self.tokenizer.decode([tok]), lp[0], lp[1])
            if r.text.finish == "stop":
                r.finish = "stop"
            elif r.generated >= r.max_tokens:
                r.finish = "length"
                r.text.text = self.tokenizer.decode(r.text.ids)
                piece += r.text.flush()
        events: list[tuple] = []
        if piece or entry is not None:
            events.append(("delta", r.index, piece, entry))
        if r.finish is not None:
            self.stats["completed"] += 1
            events.append(("finish", r.index, r.finish, r.text.text, r.generated))
        return events


# ---------------------------------------------------------------- requests


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The body of POST /v1/completions: OpenAI's fields (those with no effect here are accepted only
    at their neutral value), plus top_k, repetition_penalty and truncate_prompt_tokens (as vLLM)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: Any
    model: str | None = None
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)  # a list after validation
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    echo: Literal[False] = False
    best_of: int | None = Field(None, ge=1)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    suffix: None = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> list[str] | list[list[int]]:
        """One or more prompts: a string, token ids, or a list of either."""
        def ids(x: Any) -> bool:
            return isinstance(x, list) and bool(x) and all(type(t) is int for t in x)

        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and v:
            if all(isinstance(p, str) for p in v):
                return v
            if all(type(t) is int for t in v):
                return [v]
            if all(ids(p) for p in v):
                return v
        raise ValueError("must be a string, a list of strings, a non-empty list of token ids, "
                         "or a list of such lists")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("temperature", "top_p", "repetition_penalty")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _zero(cls, v: float) -> float:
        if v != 0:
            raise ValueError("is not supported by this server (only 0); use repetition_penalty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict | None) -> None:
        if v:
            raise ValueError("is not supported by this server; leave it empty")
        return None


def parse_request(body: bytes) -> CompletionRequest:
    """The validated request, or an ApiError(400) naming the first bad field."""
    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(body, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object, e.g. {\"prompt\": \"Hello\"}")
    try:
        req = CompletionRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "extra_forbidden":
            msg = "is not a parameter of /v1/completions"
        elif err["type"] == "literal_error":
            msg = f"is not supported by this server ({msg.lower()})"
        raise ApiError(400, f"{param}: {msg}", param=param) from None
    if req.best_of is not None and req.best_of != req.n:
        raise ApiError(400, "best_of: only best_of = n is supported (every sample is returned)",
                       param="best_of")
    return req


def prepare_prompts(req: CompletionRequest, tokenizer, context: int, vocab_size: int,
                    limits: Limits) -> list[list[int]]:
    """Token ids of each prompt, truncated by the request's and the server's policy; ApiError 400 for
    bad ids or limits, 413 for prompts that leave no room for max_tokens in the context."""
    cap = min(limits.max_tokens, context - 1)
    if req.max_tokens > cap:
        why = f"the model's context of {context} tokens minus one prompt token"
        if cap == limits.max_tokens:
            why = f"this server's limit (gpt2kit serve --max-tokens {limits.max_tokens})"
        raise ApiError(400, f"max_tokens: {req.max_tokens} is more than {cap}, {why}", param="max_tokens")
    rows = len(req.prompt) * req.n
    if rows > limits.max_queue:
        raise ApiError(400, f"this request asks for {rows} completions (prompts x n) but the server "
                       f"queues at most {limits.max_queue} (--max-queue); split it", param="n")
    room = context - req.max_tokens  # prompt tokens that fit next to max_tokens new ones
    eos_id = getattr(tokenizer, "eos_id", None)
    out = []
    for p in req.prompt:
        ids = tokenizer.encode(p) if isinstance(p, str) else list(p)
        if not ids:  # an empty prompt starts from end-of-text, as `gpt2kit generate`
            if eos_id is None:
                raise ApiError(400, "prompt: empty, and the tokenizer has no end-of-text token to start from",
                               param="prompt")
            ids = [eos_id]
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ApiError(400, f"prompt: token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})",
                           param="prompt")
        if req.truncate_prompt_tokens is not None:
            ids = ids[-req.truncate_prompt_tokens :]
        if len(ids) > room:
            if limits.truncate != "left":
                raise ApiError(413, f"prompt: {len(ids)} tokens + max_tokens {req.max_tokens} exceed the "
                               f"model's context of {context} tokens; shorten the prompt, lower max_tokens, "
                               "or set truncate_prompt_tokens", param="prompt",
                               code="context_length_exceeded")
            ids = ids[-room:]  # the server cuts from the left: the end of a prompt matters most
        out.append(ids)
    return out


def make_rows(job: Job, req: CompletionRequest, prompts: list[list[int]], engine: Engine) -> list[Row]:
    """One Row per (prompt, sample), seeded as `generate_text` seeds them."""
    seed = req.seed if req.seed is not None else random.getrandbits(62)
    top_p = req.top_p if req.top_p < 1.0 else None
    sampling = Sampling(req.temperature, req.top_k, top_p, req.repetition_penalty)
    vocab = engine.model.config.vocab_size
    return [Row(job, p * req.n + s, ids, req.max_tokens, sampling, row_generator(seed, p, s, engine.device),
                _TextRow(engine.tokenizer, req.stop), req.logprobs, vocab)
            for p, ids in enumerate(prompts) for s in range(req.n)]


# ---------------------------------------------------------------- HTTP


class ClientGone(Exception):
    """The client closed its connection: its rows were cancelled."""


async def read_body(request: Request, limit: int) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"the request body has {size} bytes; the limit is {limit}",
                       code="request_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def watch_disconnect(request: Request, job: Job) -> None:
    """Cancel the job when the client goes away (uvicorn answers `receive()` with http.disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()
    job.events.put_nowait([("gone",)])


async def job_events(job: Job, rows: int, deadline: float, timeout: float) -> AsyncIterator[tuple]:
    """The job's events until all its rows finished; ApiError on an engine error or the deadline."""
    loop = asyncio.get_running_loop()
    left = rows
    while left:
        try:
            batch = await asyncio.wait_for(job.events.get(), timeout=max(0.001, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than the server's timeout ({timeout:g} s, "
                           "gpt2kit serve --timeout); ask for fewer tokens", type="timeout") from None
        for ev in batch:
            if ev[0] == "gone":
                raise ClientGone
            if ev[0] == "error":
                raise ApiError(ev[1], ev[2], type="server_error")
            if ev[0] == "finish":
                left -= 1
            yield ev


class LogprobsBuilder:
    """OpenAI's `logprobs` object of one choice: tokens, token_logprobs, top_logprobs, text_offset."""

    def __init__(self) -> None:
        self.offset = 0

    def make(self, entries: list[tuple]) -> dict:
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for text, lp, top in entries:
            out["tokens"].append(text)
            out["token_logprobs"].append(lp)
            out["top_logprobs"].append(top)
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out


FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # OpenAI's names: EOS is a stop too


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class AccessLog:
    """ASGI middleware: one structured log line per request, with what the endpoint added to
    scope["gpt2kit.log"] (request id, token counts, finish reasons, cancellation)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        info: dict = scope.setdefault("gpt2kit.log", {})
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            client = scope.get("client")
            fields = {"method": scope["method"], "path": scope["path"], "status": status[0],
                      "duration_ms": round(1000 * (time.perf_counter() - t0), 1),
                      "client": f"{client[0]}:{client[1]}" if client else None, **info}
            access_log.info("%s %s %s", scope["method"], scope["path"], status[0], extra={"fields": fields})


def playground_html() -> str:
    return resources.files("gpt2kit").joinpath("static/playground.html").read_text(encoding="utf-8")


def create_app(engine: Engine, name: str, url: str | None = None) -> FastAPI:
    """The FastAPI application over a (not yet started) engine; the app's lifespan starts and stops it."""
    limits = engine.limits
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(engine.start)
        if url is not None:
            from gpt2kit.model import model_size

            log.info("serving %s (%s parameters) at %s; playground %s/", name, model_size(engine.model),
                     url, url,
                     extra={"fields": {"url": url, "model": name, "context": engine.context,
                                       "max_batch": limits.max_batch, "device": str(engine.device)}})
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)  # in-flight requests are done or cancelled by now

    app = FastAPI(title="gpt2kit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessLog)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        request.scope.setdefault("gpt2kit.log", {})["error"] = exc.message
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        where = f"{request.method} {request.url.path}"
        message = {404: f"no such endpoint: {where}; the endpoints are POST /v1/completions, GET /v1/models, "
                        "GET /health and the playground at /",
                   405: f"method not allowed: {where}"}.get(exc.status_code, str(exc.detail))
        err = ApiError(exc.status_code, message, type="not_found_error" if exc.status_code == 404 else
                       "invalid_request_error")
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:  # uvicorn logs the traceback
        err = ApiError(500, "internal server error; see the server log", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(playground_html())

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, "running": len(engine.rows), "queued": engine.queued,
                **engine.stats}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "gpt2kit", "max_model_len": engine.context}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.timeout
        info = request.scope.setdefault("gpt2kit.log", {})
        req = parse_request(await read_body(request, limits.max_body))
        if req.model is not None and req.model != name:
            raise ApiError(404, f"model: {req.model!r} is not served here; this server serves {name!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")
        vocab = engine.model.config.vocab_size
        prompts = prepare_prompts(req, engine.tokenizer, engine.context, vocab, limits)
        job = Job(loop)
        rows = make_rows(job, req, prompts, engine)
        try:
            engine.submit(rows)
        except QueueFull as e:
            raise ApiError(503, f"server busy: {e}", type="server_overloaded") from None
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        usage = {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 0, "total_tokens": 0}
        info.update(id=rid, prompt_tokens=usage["prompt_tokens"], completions=len(rows), stream=req.stream)
        head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": name}
        builders = [LogprobsBuilder() for _ in rows]
        watcher = asyncio.create_task(watch_disconnect(request, job))

        def finished(ev: tuple) -> None:
            usage["completion_tokens"] += ev[4]
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            info["completion_tokens"] = usage["completion_tokens"]
            info.setdefault("finish", []).append(FINISH[ev[2]])

        if req.stream:
            async def stream() -> AsyncIterator[str]:
                try:
                    async for ev in job_events(job, len(rows), deadline, limits.timeout):
                        if ev[0] == "delta":
                            lp = builders[ev[1]].make([ev[3]]) if ev[3] is not None else None
                            choice = {"index": ev[1], "text": ev[2], "logprobs": lp, "finish_reason": None}
                        else:
                            finished(ev)
                            choice = {"index": ev[1], "text": "", "logprobs": None,
                                      "finish_reason": FINISH[ev[2]]}
                        yield sse({**head, "choices": [choice]})
                    if req.stream_options is not None and req.stream_options.include_usage:
                        yield sse({**head, "choices": [], "usage": usage})
                except ClientGone:
                    info["cancelled"] = True
                    return
                except ApiError as e:
                    info["error"] = e.message
                    yield sse(e.body())
                finally:
                    watcher.cancel()
                    job.cancel()
                yield sse("[DONE]")

            return StreamingResponse(stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        texts, reasons = [""] * len(rows), [""] * len(rows)
        entries: list[list] = [[] for _ in rows]
        try:
            async for ev in job_events(job, len(rows), deadline, limits.timeout):
                if ev[0] == "delta" and ev[3] is not None:
                    entries[ev[1]].append(ev[3])
                elif ev[0] == "finish":
                    finished(ev)
                    texts[ev[1]], reasons[ev[1]] = ev[3], FINISH[ev[2]]
        except ClientGone:
            info["cancelled"] = True
            return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"
        finally:
            watcher.cancel()
            job.cancel()
        choices = [{"index": i, "text": texts[i],
                    "logprobs": builders[i].make(entries[i]) if req.logprobs is not None else None,
                    "finish_reason": reasons[i]} for i in range(len(rows))]
        return JSONResponse({**head, "choices": choices, "usage": usage})

    return app


# ---------------------------------------------------------------- running


class JsonLines(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, plus the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        row = {"time": when,
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        row.update(getattr(record, "fields", {}))
        if record.exc_info:
            row["traceback"] = self.formatException(record.exc_info)
        return json.dumps(row, ensure_ascii=False, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for gpt2kit's and uvicorn's loggers."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    for name in ("gpt2kit.serve", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, so a busy port fails before the model loads; port 0 = any free port."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise UserError(f"--host {host}: not an address of this machine; use e.g. 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port (0 = any free "
                        "port)") from None
    return sock


def make_server(app, sock: socket.socket, shutdown_timeout: float = 30.0):
    """A uvicorn server for `app` on `sock`; on SIGTERM/SIGINT it stops accepting connections, lets
    in-flight requests finish for up to `shutdown_timeout` seconds, then cancels the rest."""
    import uvicorn

    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=shutdown_timeout)
    return uvicorn.Server(config)


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def default_name(src: str) -> str:
    """The model id clients use: the source's directory name (`runs/mine` -> `mine`) or hub name."""
    p = Path(src).expanduser()
    return (p.resolve().name if p.exists() else str(src)) or str(src)


def serve(src: str, host: str = "127.0.0.1", port: int = 8000, *, limits: Limits | None = None,
          name: str | None = None, tokenizer: str | None = None, device: str | None = None,
          shutdown_timeout: float = 30.0, int8: bool = False) -> int:
    """Serve the model at `src` (what `--model` takes) until SIGTERM / SIGINT."""
    from gpt2kit.generate import load_model_and_tokenizer

    limits = limits or Limits()
    sock = bind_socket(host, port)
    try:
        model, tok = load_model_and_tokenizer(src, tokenizer, device, int8=int8)
        engine = Engine(model, tok, limits)
        configure_logging()
        app = create_app(engine, name or default_name(src), url=socket_url(sock))
        make_server(app, sock, shutdown_timeout).run(sockets=[sock])
    finally:
        sock.close()
    return 0
