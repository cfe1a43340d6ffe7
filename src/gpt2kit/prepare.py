"""Tokenize a corpus once into flat token shards that training memory-maps.

`prepare(sources, tokenizer, out)` writes (layout in CONTRACTS.md, "A prepared data directory"):

    out/meta.json          format, version, dtype, vocab_size, eos_id, tokenizer_sha256, source_fingerprint, splits
    out/train-00000.bin    raw little-endian uint16 (vocab <= 65536) or uint32 ids; every document + eos_id
    out/val-00000.bin      the validation documents, same layout
    out/tokenizer.json     the tokenizer that made them (+ tokenizer_config.json, special_tokens_map.json)

How, and why:
- Documents stream from `gpt2kit.sources` in chunks of ~1 MB; `workers` processes encode chunks with tiktoken
  (threads do not scale with it) while the main process reads files and writes results in order. At most
  `2 * workers` chunks are in flight: memory does not grow with the corpus. The `tokenizers` engine runs
  in-process, where its own thread pool parallelises each batch.
- A huge document (one 200 MB line) is encoded in pieces of ~1 MB cut before an ASCII whitespace character that
  follows a non-whitespace one: for GPT-2-style byte-level BPEs (`Tokenizer.cuttable`) no pre-token spans such a
  point, so the ids are exactly those of the whole document (tested). A text file of more than 16 MB read whole
  (`sample_by` file) is also read from disk a few MB at a time (`sources.FileDocument`), so memory stays flat
  whatever its size. Where ids could differ (a normalizer, another pre-tokenizer, non-special added tokens),
  documents are encoded whole, and memory grows with the longest one; so does a stretch of >1 MB without a cut
  point.
- The split is by document: a document goes to validation when the hash of its key (path, or path:row) falls
  below `val_fraction`. Stable across runs and machines, and adding files does not move the others.
- Small corpora: the hash may leave validation empty or smaller than one block. Then whole documents move from
  the end of the training split until validation has `min_val_tokens` tokens and a document, while training
  keeps `min_val_tokens` tokens, a document and at least half of its tokens (`["val"]["val_floor"]`). When whole
  documents cannot do it (e.g. a corpus of one file), validation is the training split's last tokens instead
  (`["val"]["from_train_tail"]`), cut anywhere. Either way every split records its real documents and UTF-8
  bytes (a document cut in two counts in both), so bits per byte is computable.
- Everything is written to a temporary sibling directory and renamed into place at the end, so `out` is
  either the old complete result or the new complete result, never half of one. A prepare killed with -9 leaves
  its `.NAME.tmp-PID` behind; the next prepare into the same parent removes those whose process is gone (on
  this host: a marker file names the host, the PID and its start time), and puts back a previous result a kill
  left swapped aside (`.old-NAME-PID`) between its two renames.
- Re-running with the same sources (names, sizes, mtimes), tokenizer and options returns the existing result.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from gpt2kit.atomic import is_disk_full, replace_dir
from gpt2kit.errors import UserError, flag
from gpt2kit.sources import SOURCE_OPTIONS, Document, FileDocument, open_sources
from gpt2kit.tokenizer import Tokenizer, warn

FORMAT = "gpt2kit-tokens"
VERSION = 1
SPLITS = ("train", "val")
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB uint16 shards, like llm.c / nanochat
_CHUNK_CHARS = 1 << 20
_PIECE_CHARS = 1 << 20  # a longer document is encoded in pieces of about this many characters (cuttable tokenizers)
# Where a document may be cut: before an ASCII whitespace character that follows a non-whitespace one (see
# `Tokenizer.cuttable`); Python's \S is "not str.isspace()", stricter than the regex engines' Unicode \s.
_CUT = re.compile(r"(?<=\S)[ \t\n\r]")
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
_OLD_NAME = re.compile(r"^\.old-(?P<name>.+)-(?P<pid>\d+)$")
_MARKER = ".gpt2kit-prepare"  # inside a temporary directory: {"host", "pid", "start"} of the prepare writing it
_OURS = re.compile(r"^((train|val)-\d{5}\.bin|meta\.json|tokenizer\.json|tokenizer_config\.json|"
                   r"special_tokens_map\.json|\.gpt2kit-prepare)$")
_CHECK_CHARS = 128 * 1024  # fast engine vs reference engine, on the first 128K characters of every corpus


def default_cache_dir() -> Path:
    return Path(os.environ.get("GPT2KIT_CACHE") or Path.home() / ".cache" / "gpt2kit" / "data").expanduser()


def token_dtype(vocab_size: int) -> str:
    """The smallest dtype that holds every id."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def is_val(key: str, val_fraction: float) -> bool:
    """Deterministic split: a document's key hashes to a number in [0, 1)."""
    if val_fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


# -- metadata ----------------------------------------------------------------------------------------
def read_meta(data_dir: str | os.PathLike) -> dict:
    """meta.json of a prepared directory, validated (UserError for other/older formats or damaged shards)."""
    d = Path(data_dir).expanduser()
    if not d.exists():
        raise UserError(f"data not found: {data_dir}; check the path or run `gpt2kit prepare --out {data_dir}`")
    path = d / "meta.json"
    if not path.is_file():
        raise UserError(f"{data_dir} is not a prepared data directory (no meta.json); run `gpt2kit prepare` first")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run `gpt2kit prepare`") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not gpt2kit token metadata (format {meta.get('format')!r}); re-run `gpt2kit prepare`")
    version = meta.get("version")
    if not isinstance(version, int) or version < VERSION:
        raise UserError(f"{data_dir} was prepared by an older gpt2kit (format version {version}, need {VERSION}); "
                        "re-run `gpt2kit prepare` on the source data")
    if version > VERSION:
        raise UserError(f"{data_dir} was prepared by a newer gpt2kit (format version {version}); upgrade gpt2kit")
    _check_meta_fields(meta, path)
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, info in meta["splits"].items():
        size = sum((d / f).stat().st_size if (d / f).exists() else -1 for f in info["files"])
        if size != info["tokens"] * itemsize:
            raise UserError(f"{data_dir}: the {split} shards do not match meta.json ({size} bytes, expected "
                            f"{info['tokens'] * itemsize}); they are damaged, re-run `gpt2kit prepare`")
    return meta


def _check_meta_fields(meta: dict, path: Path) -> None:
    """Every field readers use, with the right type: a hand-edited or truncated meta.json is one error line."""
    def bad(what: str) -> UserError:
        return UserError(f"{path} {what}; it is damaged or hand-made - re-run `gpt2kit prepare` on the source data")

    for key, kind in (("dtype", str), ("vocab_size", int), ("eos_id", int), ("tokenizer_sha256", str),
                      ("splits", dict)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise bad(f"has no valid {key!r}" if key in meta else f"lacks the key {key!r}")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise bad(f"has dtype {meta['dtype']!r} (expected uint16 or uint32)")
    if "train" not in meta["splits"]:
        raise bad("has no 'train' split")
    for split, info in meta["splits"].items():
        if not (isinstance(info, dict) and isinstance(info.get("files"), list) and isinstance(info.get("tokens"), int)
                and all(isinstance(f, str) and "/" not in f and "\\" not in f and f not in ("", ".", "..")
                        for f in info["files"])):
            raise bad(f"has no valid file list and token count for the {split!r} split")
    if "max_id" in meta and not isinstance(meta["max_id"], int):
        raise bad("has no valid 'max_id'")


def load_split(data_dir: str | os.PathLike, split: str, meta: dict | None = None) -> list[np.memmap]:
    """The shards of one split as read-only memmaps (shards with no tokens left out), checked to hold no id
    beyond the tokenizer's vocabulary (such an id would fail deep inside the model)."""
    d = Path(data_dir)
    meta = meta or read_meta(d)
    if split not in meta["splits"]:
        raise UserError(f"{data_dir} has no {split!r} split; it has {', '.join(meta['splits'])}")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    shards = [(d / f, np.memmap(d / f, dtype=dtype, mode="r"))
              for f in meta["splits"][split]["files"] if (d / f).stat().st_size]
    vocab = meta["vocab_size"]
    if meta.get("max_id", vocab) >= vocab:  # recorded by prepare; older or hand-made directories are scanned
        for path, mm in shards:
            for start in range(0, len(mm), 1 << 24):  # 32-64 MB at a time: memory stays flat
                top = int(mm[start : start + (1 << 24)].max())
                if top >= vocab:
                    raise UserError(f"{path} holds token id {top} but meta.json's vocab_size is {vocab}; the shards "
                                    "were not made by this tokenizer - re-run `gpt2kit prepare` on the source data")
    return [mm for _, mm in shards]


def split_bytes_per_token(split_info: dict) -> float | None:
    """UTF-8 bytes per token of a split (`meta["splits"][name]`), or None when its bytes are unknown (0 in
    directories prepared before the tail split counted them): bits per byte = loss / ln 2 / this."""
    n_bytes, tokens = split_info.get("bytes") or 0, split_info.get("tokens") or 0
    return n_bytes / tokens if n_bytes > 0 and tokens > 0 else None


def check_vocab(data_vocab_size: int, model_vocab_size: int, where: str = "the data") -> None:
    """UserError when a model cannot embed every id of the data."""
    if model_vocab_size < data_vocab_size:
        raise UserError(f"{where} uses a tokenizer with {data_vocab_size} ids but the model has model.vocab_size "
                        f"{model_vocab_size}; set --model.vocab_size {data_vocab_size} or use the model's tokenizer")


# -- writing -----------------------------------------------------------------------------------------
class _ShardWriter:
    """Appends token arrays to `split-00000.bin`, `split-00001.bin`, ... of at most `shard_tokens` each."""

    def __init__(self, directory: Path, split: str, dtype: str, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.files: list[str] = []
        self.tokens = self.documents = self.bytes = 0
        self.max_id = -1  # recorded in meta.json: readers check it against vocab_size without a scan
        self._f = None
        self._in_shard = 0

    def _open(self) -> None:
        if self._f:
            self._f.close()
        name = f"{self.split}-{len(self.files):05d}.bin"
        self.files.append(name)
        self._f = open(self.directory / name, "wb")
        self._in_shard = 0

    def write(self, ids: np.ndarray) -> None:
        if self._f is None:
            self._open()
        if len(ids):
            self.max_id = max(self.max_id, int(ids.max()))
        while len(ids):
            room = self.shard_tokens - self._in_shard
            if room == 0:
                self._open()
                continue
            part, ids = ids[:room], ids[room:]
            self._f.write(part.astype(self.dtype, copy=False).tobytes())
            self._in_shard += len(part)
            self.tokens += len(part)

    def close(self) -> dict:
        if self._f is None:
            self._open()  # an empty split still has its (empty) file: readers need not special-case it
        self._f.close()
        return {"files": self.files, "tokens": self.tokens, "documents": self.documents, "bytes": self.bytes}


_WORKER_TOKENIZER: Tokenizer | None = None


def _worker_init(tok) -> None:
    """Give a worker process its tokenizer: inherited as is under fork, rebuilt from JSON under spawn."""
    global _WORKER_TOKENIZER
    if isinstance(tok, tuple):
        from tokenizers import Tokenizer as HFTokenizer

        text, eos, pad = tok
        tok = Tokenizer(HFTokenizer.from_str(text), eos_token=eos, pad_token=pad)
    _WORKER_TOKENIZER = tok


def _encode_chunk(texts: list[str], flags: list[bool], eos: int, reference: bool, tokenizer=None,
                  ends: list[bool] | None = None) -> list:
    """Ids of a chunk of documents, each followed by EOS, gathered per split (runs in a worker process).
    `ends[i]` False: text i is a piece of a document that goes on in the next text (no EOS, not counted yet)."""
    tokenizer = tokenizer or _WORKER_TOKENIZER
    if reference or tokenizer.engine != "tiktoken":
        ids = tokenizer.encode_batch(texts) if tokenizer.engine != "tiktoken" else map(tokenizer.reference_encode, texts)
    else:
        ids = map(tokenizer.encode, texts)  # encode_ordinary: faster than encode_to_numpy, and one core each
    out = [([], 0, 0), ([], 0, 0)]
    for a, t, f, end in zip(ids, texts, flags, ends or [True] * len(texts)):
        parts, n_docs, n_bytes = out[f]
        parts += a
        if end:
            parts.append(eos)
        out[f] = (parts, n_docs + end, n_bytes + len(t.encode("utf-8", "surrogatepass")))
    return [(np.array(parts, dtype=np.uint32), n_docs, n_bytes) for parts, n_docs, n_bytes in out]


def _check_engine(tokenizer: Tokenizer, docs: list[Document]) -> None:
    """The fast engine must give the tokenizer's own ids; if a sample disagrees, use the reference engine."""
    if tokenizer.engine == "tokenizers":
        return
    for d in docs:
        if tokenizer.encode(d.text) != tokenizer.reference_encode(d.text):
            warn(f"tiktoken and tokenizers disagree on {d.key}; encoding with tokenizers (slower)")
            tokenizer.use_reference_engine()
            return


class _InlineExecutor:
    """The executor interface, run in this process (one worker, or the `tokenizers` engine, which is
    parallel inside and must not be forked after use)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn, *args):
        f: Future = Future()
        f.set_result(fn(*args))
        return f


def _executor(tokenizer: Tokenizer, workers: int):
    """Worker processes for tiktoken (it does not scale with threads: measured slower with 2 threads than 1)."""
    if workers <= 1 or tokenizer.engine != "tiktoken":
        return _InlineExecutor()
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    init = tokenizer if ctx.get_start_method() == "fork" else (tokenizer._tk.to_str(), tokenizer.eos_token,
                                                              tokenizer.pad_token)
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(init,))


def cut_text(text: str, size: int = _PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of about `size` characters, each cut before an ASCII whitespace character that follows a
    non-whitespace one (so a cuttable tokenizer gives the same ids piece by piece); a stretch with no such point
    stays in one piece."""
    start = 0
    while len(text) - start > size:
        m = _CUT.search(text, start + size)
        if m is None:
            break
        yield text[start : m.start()]
        start = m.start()
    yield text[start:] if start else text


def cut_stream(blocks: Iterable[str], size: int = _PIECE_CHARS) -> Iterator[str]:
    """`cut_text` over a text that arrives in blocks (a huge file read a few MB at a time): the same cut rule,
    applied to the whole text, with at most one piece and one block in memory."""
    buf = ""
    for block in blocks:
        buf += block
        while len(buf) > size:
            m = _CUT.search(buf, size)
            if m is None:
                break  # no cut point yet: keep reading
            yield buf[: m.start()]
            buf = buf[m.start() :]
    if buf:
        yield buf


def _chunks(docs, chunk_chars: int, cuttable: bool = False):
    """Lists of (text, key, ends_document) of about `chunk_chars` characters; long documents come in pieces
    when the tokenizer is cuttable (a huge file, a FileDocument, streamed from disk)."""
    buf, n = [], 0
    for doc in docs:
        if cuttable and isinstance(doc, FileDocument):
            pieces = cut_stream(doc.blocks())
        elif cuttable and len(doc.text) > _PIECE_CHARS:
            pieces = cut_text(doc.text)
        else:
            pieces = iter((doc.text,))
        piece = next(pieces)
        for following in itertools.chain(pieces, (None,)):
            buf.append((piece, doc.key, following is None))
            n += len(piece)
            if n >= chunk_chars:
                yield buf
                buf, n = [], 0
            piece = following
    if buf:
        yield buf


def _defaults_dropped(options: dict) -> dict:
    """Options without the values that change nothing, so that passing a default keeps old results valid."""
    return {k: v for k, v in options.items()
            if v is not None and not (k == "sample_by" and v == "file")}


def _options_key(val_fraction: float, shard_tokens: int, source_options: dict,
                 min_val_tokens: int | None = None) -> dict:
    extra = {"min_val_tokens": min_val_tokens} if min_val_tokens is not None else {}
    return {"val_fraction": val_fraction, "shard_tokens": shard_tokens, **extra,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(_defaults_dropped(source_options).items())}}


def prepare(
    sources: Sequence[str] | str,
    tokenizer: Tokenizer | str,
    out: str | os.PathLike,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    min_val_tokens: int | None = None,
    workers: int | None = None,
    block_size: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    force: bool = False,
    progress: bool = True,
    **source_options,
) -> dict:
    """Tokenize `sources` into `out` (see the module docstring) and return its metadata.

    `min_val_tokens` (a trainer passes block_size + 1) is the validation split's floor when val_fraction > 0:
    see "Small corpora" in the module docstring. `block_size`, when given, makes a too-small training split
    an error now rather than at training time.
    Source options: text_column, include, exclude, streaming, split, limit, sample_by."""
    from gpt2kit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer)
    if isinstance(sources, (str, os.PathLike)):
        sources = [str(sources)]
    if not 0 <= val_fraction < 1:
        raise UserError(f"{flag('data.val_fraction')} must be in [0, 1), got {val_fraction}")
    if min_val_tokens is not None and min_val_tokens < 1:
        raise UserError(f"min_val_tokens must be positive, got {min_val_tokens}")
    if shard_tokens < 1:
        raise UserError(f"shard_tokens must be positive, got {shard_tokens}")
    workers = max(1, workers or os.cpu_count() or 1)
    corpus = open_sources(sources, **source_options)
    fingerprint = corpus.fingerprint()
    options = _options_key(val_fraction, shard_tokens, source_options, min_val_tokens)
    out = Path(out).expanduser()

    if (out / "meta.json").is_file() and not force:
        try:
            old = read_meta(out)
        except UserError:
            old = None  # an older format or damaged: prepare again
        if (old and old.get("source_fingerprint") == fingerprint and old["tokenizer_sha256"] == tokenizer.sha256
                and old.get("options") == options):
            _check_size(old, block_size, out)
            if progress:
                print(f"{out} is up to date ({_summary(old)})", file=sys.stderr)
            return old
    elif out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / "meta.json").is_file():
        raise UserError(f"--out {out} exists and is not a prepared data directory; choose a new or empty directory")

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / _MARKER).write_text(json.dumps(_this_process()))
    try:
        meta = _write(corpus, tokenizer, tmp, val_fraction, workers, shard_tokens, progress, min_val_tokens)
        meta.update(source_fingerprint=fingerprint, sources=[str(s) for s in sources], options=options)
        if meta["splits"]["train"]["documents"] == 0 and meta["splits"]["val"]["documents"] == 0:
            skipped = corpus.stats.binary_skipped + corpus.stats.empty_skipped
            raise UserError(f"no documents found in {' '.join(map(str, sources))}"
                            + (f" ({skipped} binary or empty files skipped)" if skipped else "")
                            + f"; check the path, {flag('data.include')} or {flag('data.text_column')}")
        _check_size(meta, block_size, out)
        tokenizer.save(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / _MARKER).unlink()
        replace_dir(tmp, out)
    except UserError:
        raise
    except Exception as e:
        if not is_disk_full(e, out.parent):
            raise
        kept = f"{out} is as it was" if (out / "meta.json").is_file() else "nothing was written"
        raise UserError(f"no space left on the disk holding {out.parent} while preparing {out} ({kept}); free "
                        "some space or pass an --out on another disk") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    corpus.report()
    if progress:
        print(f"prepared {out}: {_summary(meta)}", file=sys.stderr)
    return meta


def _start_time(pid: int) -> str | None:
    """When process `pid` started (field 22 of /proc/PID/stat, clock ticks since boot), or None off Linux or when
    it is gone: a PID reused by another process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _process_gone(pid: int, marker: dict | None) -> bool:
    """Whether `pid`, which wrote `marker` (None: an older gpt2kit wrote no marker), no longer runs on this host."""
    if marker is not None and marker.get("host") != socket.gethostname():
        return False  # another machine's prepare on a shared disk: not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    start = (marker or {}).get("start")
    return start is not None and _start_time(pid) not in (None, start)  # the PID now names another process


def clean_stale(parent: Path) -> list[Path]:
    """Remove the temporary directories of prepares into `parent` that were killed (their process is gone), and
    put back a previous result a kill left swapped aside (`.old-NAME-PID` without NAME). Only directories holding
    nothing but files prepare writes are touched. Returns what was removed or restored."""
    done: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for e in entries:
        m = _TMP_NAME.match(e.name) or _OLD_NAME.match(e.name)
        if m is None or not e.is_dir(follow_symlinks=False) or int(m["pid"]) == os.getpid():
            continue
        path = Path(e.path)
        try:
            names = os.listdir(path)
            marker = json.loads((path / _MARKER).read_text()) if _MARKER in names else None
        except (OSError, ValueError):
            continue
        if not all(_OURS.match(n) for n in names) or not _process_gone(int(m["pid"]), marker):
            continue
        final = parent / m["name"]
        if m.re is _OLD_NAME and not final.exists() and "meta.json" in names:
            os.replace(path, final)  # the kill came between replace_dir's two renames: the old result is back
            done.append(final)
            continue
        shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


def _write(corpus, tokenizer: Tokenizer, tmp: Path, val_fraction: float, workers: int, shard_tokens: int,
           progress: bool, min_val_tokens: int | None = None) -> dict:
    from tqdm.auto import tqdm

    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens) for s in SPLITS}
    start = time.perf_counter()
    bar = tqdm(unit=" docs", disable=not progress, file=sys.stderr, delay=1.0, mininterval=0.5, desc="prepare")
    pending: deque = deque()

    def drain(limit: int) -> None:
        while len(pending) > limit:
            for w, (ids, docs, nbytes) in zip((writers["train"], writers["val"]), pending.popleft().result()):
                w.write(ids)
                w.documents += docs
                w.bytes += nbytes
            done_docs = writers["train"].documents + writers["val"].documents
            mb = (writers["train"].bytes + writers["val"].bytes) / 1e6
            tokens = writers["train"].tokens + writers["val"].tokens
            bar.update(done_docs - bar.n)
            bar.set_postfix_str(f"{tokens / 1e6:.1f}M tokens, {mb / (time.perf_counter() - start):.1f} MB/s",
                                refresh=False)

    chunks = _chunks(corpus, _CHUNK_CHARS, tokenizer.cuttable)
    first = next(chunks, None)
    if first is not None:  # the fast engine must agree with the reference on a sample of this corpus
        sample, n = [], 0
        for text, key, _ in first:
            if n >= _CHECK_CHARS:
                break
            sample.append(Document(text[: _CHECK_CHARS - n], key))  # any prefix is text to agree on
            n += len(sample[-1].text)
        _check_engine(tokenizer, sample)
    reference = tokenizer.engine != "tiktoken"
    try:
        with _executor(tokenizer, workers) as pool:
            for chunk in itertools.chain([first] if first else [], chunks):
                texts = [text for text, _, _ in chunk]
                flags = [is_val(key, val_fraction) for _, key, _ in chunk]
                ends = [end for _, _, end in chunk]
                pending.append(pool.submit(_encode_chunk, texts, flags, tokenizer.eos_id, reference,
                                           tokenizer if isinstance(pool, _InlineExecutor) else None, ends))
                del texts, chunk  # the pool holds them while they are in flight, and no longer
                drain(2 * workers)
            drain(0)
    finally:
        bar.close()
    splits = {s: w.close() for s, w in writers.items()}
    if splits["train"]["documents"] == 0 and splits["val"]["documents"] > 0:
        _train_on_val(tmp, splits)  # e.g. one small file that hashed into validation
    if val_fraction > 0:
        _val_floor(tmp, splits, dtype, shard_tokens, tokenizer, val_fraction, min_val_tokens)
    return {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokenizer_sha256": tokenizer.sha256,
        "source_fingerprint": "",
        "splits": splits,
        "max_id": max(w.max_id for w in writers.values()),
        "engine": tokenizer.engine,
        "skipped": dict(corpus.stats.as_dict()),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _train_on_val(tmp: Path, splits: dict) -> None:
    """Every document hashed into validation: make them the training split (the caller then takes
    validation from the tail), rather than failing on an empty training split."""
    for name in splits["train"]["files"]:
        (tmp / name).unlink()
    files = []
    for name in splits["val"]["files"]:
        new = "train-" + name.split("-", 1)[1]
        os.replace(tmp / name, tmp / new)
        files.append(new)
    empty = "val-00000.bin"
    (tmp / empty).write_bytes(b"")
    splits["train"] = {**splits["val"], "files": files}
    splits["val"] = {"files": [empty], "tokens": 0, "documents": 0, "bytes": 0}


def _val_floor(tmp: Path, splits: dict, dtype: str, shard_tokens: int, tokenizer: Tokenizer, val_fraction: float,
               min_val_tokens: int | None) -> None:
    """Give validation at least `min_val_tokens` tokens and a document when the hash split did not, taking them
    from the end of the training split: whole documents when possible, else a tail of tokens."""
    train, val = splits["train"], splits["val"]
    floor = min_val_tokens or 1
    if val["documents"] > 0 and val["tokens"] >= floor:
        return
    total = train["tokens"]
    eos = tokenizer.eos_id
    # Training keeps a block's worth and at least half of its tokens: validation must not starve it.
    budget = min(total - floor, total // 2)
    if train["documents"] >= 2 and budget > 0:  # training keeps at least one whole document
        moved_docs = 0
        for e in _eos_backward(tmp, train, dtype, eos, stop=total - budget - 1):
            cut = e + 1  # documents after this EOS would move
            if cut == total:
                continue  # the stream's final EOS ends the last document
            moved_docs += 1
            if moved_docs >= train["documents"] or total - cut > budget:
                break
            if val["tokens"] + total - cut >= floor:
                _move_tail(tmp, splits, dtype, shard_tokens, tokenizer, cut)
                val["val_floor"] = True
                return
    if total < 2:
        return
    want = max(round(val_fraction * total), floor - val["tokens"], 1)
    n = min(want, total - floor)
    if n < 1:  # too small for a block in both splits: keep the old proportion; the loader reports the rest
        n = min(max(1, round(val_fraction * total)), total - 1)
    _move_tail(tmp, splits, dtype, shard_tokens, tokenizer, total - n)
    val["from_train_tail"] = True


def _shard_spans(tmp: Path, info: dict, dtype: str) -> list[tuple[Path, int, int]]:
    """(path, first token, token count) of each shard of a split, in stream order."""
    itemsize = np.dtype(dtype).itemsize
    spans, start = [], 0
    for name in info["files"]:
        n = (tmp / name).stat().st_size // itemsize
        spans.append((tmp / name, start, n))
        start += n
    return spans


def _eos_backward(tmp: Path, info: dict, dtype: str, eos: int, stop: int) -> Iterator[int]:
    """Stream positions of EOS in a split, last first, down to position `stop` (read in chunks from the end)."""
    chunk = 1 << 20
    for path, first, n in reversed(_shard_spans(tmp, info, dtype)):
        if n == 0:
            continue
        mm = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
        end = n
        while end > 0 and first + end > stop:
            begin = max(0, end - chunk)
            for i in np.flatnonzero(mm[begin:end] == eos)[::-1].tolist():
                yield first + begin + i
            end = begin
        del mm
        if first <= stop:
            return


def _byte_counter(tokenizer: Tokenizer) -> Callable[[np.ndarray], int]:
    """UTF-8 bytes of the text of some ids, EOS excluded. Exact for byte-level BPEs even when the ids start or end
    inside a character (a table of bytes per id); other tokenizers decode the pieces between EOS."""
    from gpt2kit.tokenizer import _bytes_decoder

    byte_of = _bytes_decoder()
    special = set(tokenizer.special_tokens.values())
    added = {i: t.content for i, t in tokenizer._tk.get_added_tokens_decoder().items()}
    table = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    decoder = json.loads(tokenizer._tk.to_str()).get("decoder") or {}
    byte_level = decoder.get("type") == "ByteLevel"
    for i in range(tokenizer.vocab_size) if byte_level else ():
        if i in special:
            continue
        token = added.get(i) or tokenizer._tk.id_to_token(i)
        if token is None:
            continue
        if i in added:
            table[i] = len(token.encode("utf-8"))
        elif all(c in byte_of for c in token):
            table[i] = len(token)  # one character per byte
        else:
            byte_level = False
            break
    if byte_level:
        return lambda ids: int(table[np.asarray(ids, dtype=np.int64)].sum())
    eos = tokenizer.eos_id

    def by_decoding(ids: np.ndarray) -> int:
        ids = np.asarray(ids, dtype=np.int64)
        bounds = [-1, *np.flatnonzero(ids == eos).tolist(), len(ids)]
        return sum(len(tokenizer.decode(ids[a + 1 : b]).encode("utf-8", "surrogatepass"))
                   for a, b in zip(bounds, bounds[1:]) if b > a + 1)

    return by_decoding


def _move_tail(tmp: Path, splits: dict, dtype: str, shard_tokens: int, tokenizer: Tokenizer, cut: int) -> None:
    """Append the training tokens from stream position `cut` on to validation; move their documents and bytes."""
    train, val = splits["train"], splits["val"]
    np_dtype = np.dtype(dtype).newbyteorder("<")
    count_bytes = _byte_counter(tokenizer)
    spans = _shard_spans(tmp, train, dtype)
    moved = moved_bytes = moved_eos = 0
    before = next(((path, cut - 1 - first) for path, first, n in spans if first <= cut - 1 < first + n), None)
    mid_document = before is not None and int(np.memmap(before[0], dtype=np_dtype, mode="r")[before[1]]) != \
        tokenizer.eos_id  # the cut splits a document: it has tokens on both sides
    # validation's shards continue where they end, up to shard_tokens each
    out_name = val["files"][-1]
    out_room = shard_tokens - (tmp / out_name).stat().st_size // np_dtype.itemsize
    f = open(tmp / out_name, "ab")
    try:
        for path, first, n in spans:
            if first + n <= cut or n == 0:
                continue
            mm = np.memmap(path, dtype=np_dtype, mode="r")
            for a in range(max(0, cut - first), n, 1 << 22):
                part = np.array(mm[a : min(n, a + (1 << 22))])
                moved_bytes += count_bytes(part)
                moved_eos += int((part == tokenizer.eos_id).sum())
                moved += len(part)
                while len(part):
                    if out_room == 0:
                        f.close()
                        out_name = f"val-{len(val['files']):05d}.bin"
                        val["files"].append(out_name)
                        f, out_room = open(tmp / out_name, "wb"), shard_tokens
                    piece, part = part[:out_room], part[out_room:]
                    f.write(piece.tobytes())
                    out_room -= len(piece)
            del mm
    finally:
        f.close()
    keep = []
    for path, first, n in spans:  # cut the training shards at `cut`; shards wholly after it go
        if first >= cut and keep:
            path.unlink()
        else:
            if first + n > cut:
                os.truncate(path, max(0, cut - first) * np_dtype.itemsize)
            keep.append(path.name)
    train["files"] = keep
    train["tokens"] -= moved
    val["tokens"] += moved
    train["bytes"] = max(0, train["bytes"] - moved_bytes)
    val["bytes"] += moved_bytes
    # every moved EOS ends a document that now has tokens in validation; one cut in two stays in training too
    train["documents"] -= moved_eos - (1 if mid_document else 0)
    val["documents"] += moved_eos


def _check_size(meta: dict, block_size: int | None, out: Path) -> None:
    need = (block_size or 1) + 1
    have = meta["splits"]["train"]["tokens"]
    if have < need:
        raise UserError(f"the training split of {out} has {have} tokens but a block of {block_size or 1} needs "
                        f"{need}; add data or lower {flag('model.block_size')}")


def _summary(meta: dict) -> str:
    t, v = meta["splits"]["train"], meta["splits"]["val"]
    return (f"train {t['tokens']:,} tokens / {t['documents']:,} docs, val {v['tokens']:,} tokens / "
            f"{v['documents']:,} docs, {meta['dtype']}")


def ensure_prepared(
    data: Sequence[str] | str,
    tokenizer: Tokenizer | str,
    cache_dir: str | os.PathLike | None = None,
    **options,
) -> Path:
    """A prepared directory for `data`: `data` itself when it is one (its tokenizer must match), else a cached
    preparation under `cache_dir/<fingerprint>` (default $GPT2KIT_CACHE or ~/.cache/gpt2kit/data), reused
    while sources, tokenizer and options are unchanged. Options: those of `prepare` (val_fraction, min_val_tokens,
    workers, block_size, progress, ...) and the source options (text_column, include, sample_by, ...).
    A prepared directory given as `data` is used as it is, whatever its validation split (the loader reports a
    split too small for a block)."""
    from gpt2kit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer)
    if isinstance(data, (str, os.PathLike)):
        data = [str(data)]
    data = [str(d) for d in data]
    if len(data) == 1 and (Path(data[0]).expanduser() / "meta.json").is_file():
        d = Path(data[0]).expanduser()
        meta = read_meta(d)
        if meta["tokenizer_sha256"] != tokenizer.sha256:
            raise UserError(
                f"{d} was prepared with a different tokenizer (vocab {meta['vocab_size']}, sha256 "
                f"{meta['tokenizer_sha256'][:12]}, saved as {d / 'tokenizer.json'}) than the one given (vocab "
                f"{tokenizer.vocab_size}, sha256 {tokenizer.sha256[:12]}); pass {flag('data.tokenizer')} {d} or "
                "re-run prepare"
            )
        if options.get("block_size"):
            _check_size(meta, options["block_size"], d)
        return d
    source_options = {k: v for k, v in options.items() if k in SOURCE_OPTIONS and v is not None}
    corpus = open_sources(data, **source_options)
    # min_val_tokens is in the key: another block size may hold out validation differently
    key_options = {k: v for k, v in sorted(options.items()) if k not in ("workers", "progress", "block_size")
                   and not (k == "min_val_tokens" and v is None) and not (k == "sample_by" and v == "file")}
    key = hashlib.sha256(json.dumps({
        "sources": corpus.fingerprint(), "tokenizer": tokenizer.sha256, "options": key_options,
    }, sort_keys=True, default=str).encode()).hexdigest()[:20]
    out = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    out = out / key
    prepare(data, tokenizer, out, **options)
    return out
