"""Every corpus through one interface: `open_sources(["SRC", ...], **options)` yields `Document`s.

A source is one of:
- a text file or a table file: `.jsonl`, `.json`, `.csv`, `.parquet` (one document per row, from
  `text_column`). A text file is one document, or, with `sample_by` (like `datasets`' text loader), one
  document per non-empty line (`line`), per blank-line separated paragraph (`paragraph`), or whichever of
  the two the file looks like (`auto`: paragraphs if a blank line separates text, else lines);
- a directory, walked recursively in sorted order (hidden entries skipped), filtered by `include` /
  `exclude` globs (e.g. `*.py`); `.jsonl`/`.csv`/`.parquet` files inside it are read as tables, `.json`
  files as text (in code trees they are configuration files, not datasets);
- `stdlib`: the `.py` files of the running Python's standard library, without site-packages — a real
  code corpus present on every machine, our default;
- a Hugging Face dataset: a `save_to_disk` directory, or a hub name (`hf:NAME[:CONFIG]`, or `NAME`),
  optionally `streaming`.

Each document carries a stable `key` (its path relative to the source root, plus the row for tables or
the index of the line/paragraph, `jokes.txt:17`) so the train/validation split can hash it: the split does not change when the corpus moves or grows.
Binary files (a NUL byte in the first 8 KB) are skipped and undecodable bytes replaced; both are counted and
reported once. A binary .csv/.jsonl in a folder is skipped the same way; one named directly, a NUL byte further
into a CSV, or a parquet file with damaged pages is an error that names the file.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpt2kit.errors import UserError, flag

SAMPLE_BY = ("file", "line", "paragraph", "auto")
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".ndjson")
_BINARY_PROBE = 8192
# A text file read as one document (sample_by file) larger than this comes as a FileDocument: `prepare` streams it
# in blocks of _READ_BYTES rather than holding its bytes and its text at once.
_STREAM_BYTES = 16 * 2**20
_READ_BYTES = 4 * 2**20
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SHARD = re.compile(r"^(train|val)-\d{5}\.bin$")  # the token shards of a prepared directory
_SPLIT_NAMES = {"line": "one document per line", "paragraph": "documents separated by blank lines"}


@dataclass(frozen=True)
class Document:
    text: str
    key: str  # stable identity: "relative/path.py", "data.jsonl:17", "hf:name:train:17"


class FileDocument(Document):
    """A whole text file too large to hold comfortably: `text` reads and decodes it (what every consumer gets
    from a Document), `blocks()` yields its text a few MB at a time (undecodable bytes replaced, as `text` does)."""

    def __init__(self, path: Path, key: str, stats: SourceStats):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "stats", stats)

    @property
    def text(self) -> str:  # type: ignore[override]
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {self.path}: {e.strerror}; check its permissions") from e
        return _decode(data, self.key, self.stats) or ""

    def blocks(self) -> Iterator[str]:
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        try:
            with open(self.path, "rb") as f:
                while True:
                    data = f.read(_READ_BYTES)
                    pending = decoder.getstate()[0]  # the start of a character the last block ended inside
                    try:
                        text = decoder.decode(data, final=not data)
                    except UnicodeDecodeError:  # from here on, replace what does not decode (counted once)
                        decoder = codecs.getincrementaldecoder("utf-8")("replace")
                        text = decoder.decode(pending + data, final=not data)
                        self.stats.undecodable_files += 1
                        if len(self.stats.examples) < 3:
                            self.stats.examples.append(self.key)
                    if text:
                        yield text
                    if not data:
                        return
        except OSError as e:
            raise UserError(f"cannot read {self.path}: {e.strerror}; check its permissions") from e

    def __repr__(self) -> str:
        return f"FileDocument({str(self.path)!r}, key={self.key!r})"


@dataclass
class SourceStats:
    """What was skipped or repaired while reading (reported once, recorded in prepared metadata)."""

    binary_skipped: int = 0
    undecodable_files: int = 0
    undecodable_bytes: int = 0
    empty_skipped: int = 0
    tables_skipped: list[str] = field(default_factory=list)  # tables in a directory without the text column
    examples: list[str] = field(default_factory=list)
    auto_chosen: dict[str, str] = field(default_factory=dict)  # file key -> "line" / "paragraph" (sample_by auto)

    def as_dict(self) -> dict:
        return {
            "binary_skipped": self.binary_skipped,
            "undecodable_files": self.undecodable_files,
            "empty_skipped": self.empty_skipped,
            "tables_skipped": len(self.tables_skipped),
        }


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in rel.parts)


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """A glob matches the relative path or the file name (`*.py` and `json/*.py` both work)."""
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _walk(root: Path, include: Sequence[str], exclude: Sequence[str], skip_dirs: Sequence[str] = ()) -> list[Path]:
    """Files under `root`, sorted, filtered: deterministic order on every filesystem."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__" and d not in skip_dirs)
        for name in sorted(filenames):
            if name.startswith(".") or not os.path.isfile(os.path.join(dirpath, name)):
                continue  # hidden files, broken symlinks, sockets, fifos
            rel = (rel_dir / name).as_posix()
            if include and not _matches(rel, include):
                continue
            if exclude and _matches(rel, exclude):
                continue
            out.append(Path(dirpath) / name)
    out.sort(key=lambda p: p.relative_to(root).as_posix())
    return out


def split_documents(text: str, sample_by: str) -> tuple[list[str], str]:
    """The documents of a text file's `text` and the way it was split ("file", "line" or "paragraph").

    Lines are split at \\n, \\r\\n or \\r only (not str.splitlines' form feeds and Unicode separators, which
    are text); whitespace-only lines are blank. A paragraph is a run of non-blank lines joined by \\n."""
    if sample_by == "file":
        return ([text] if text else []), "file"
    lines = _LINE_BREAK.split(text)
    blank = [not line.strip() for line in lines]
    if sample_by == "auto":
        seen_text = gap = False
        sample_by = "line"
        for b in blank:  # a blank line with text before and after it: paragraphs
            if not b and gap:
                sample_by = "paragraph"
                break
            seen_text = seen_text or not b
            gap = gap or (b and seen_text)
    if sample_by == "line":
        return [line for line, b in zip(lines, blank) if not b], "line"
    docs, run = [], []
    for line, b in zip(lines, blank):
        if b:
            if run:
                docs.append("\n".join(run))
            run = []
        else:
            run.append(line)
    if run:
        docs.append("\n".join(run))
    return docs, "paragraph"


def check_sample_by(sample_by: str) -> str:
    if sample_by not in SAMPLE_BY:
        raise UserError(f"{flag('data.sample_by')} must be one of {', '.join(SAMPLE_BY)}, got {sample_by!r}")
    return sample_by


def _decode(data: bytes, key: str, stats: SourceStats) -> str | None:
    """UTF-8 text of a file, or None for binary files (both outcomes counted)."""
    if b"\x00" in data[:_BINARY_PROBE]:
        stats.binary_skipped += 1
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        stats.undecodable_files += 1
        if len(stats.examples) < 3:
            stats.examples.append(key)
        return text


def _has_nul(path: Path) -> bool:
    """The binary probe of text files, for a table file: a NUL byte in its first 8 KB."""
    try:
        with open(path, "rb") as f:
            return b"\x00" in f.read(_BINARY_PROBE)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; check its permissions") from e


class Source:
    """One source string, resolved. Iterating yields documents; `fingerprint` changes when content may have."""

    def __init__(self, spec: str, *, text_column: str = "text", include: Sequence[str] = (), exclude: Sequence[str] = (),
                 streaming: bool = False, split: str = "train", sample_by: str = "file", stats: SourceStats | None = None):
        self.spec = spec
        self.text_column = text_column
        self.sample_by = check_sample_by(sample_by)
        self.include = tuple(include or ())
        self.exclude = tuple(exclude or ())
        self.streaming = streaming
        self.hf_split = split
        self.stats = stats or SourceStats()
        self.kind, self.path = self._resolve(spec)

    def _resolve(self, spec: str) -> tuple[str, Path | None]:
        if spec == "stdlib":
            return "stdlib", stdlib_root()
        if spec.startswith("hf:"):
            return "hub", None
        p = Path(spec).expanduser()
        if p.is_dir():
            if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
                return "saved_dataset", p
            shard = next((e.name for e in os.scandir(p) if _SHARD.match(e.name)), None)
            if shard is not None and not (p / "meta.json").exists():
                # read as text it would train on the tokenizer's JSON, the shards skipped as binary
                raise UserError(f"{spec} looks like a prepared data directory ({shard}) but has no meta.json; "
                                "run `gpt2kit prepare` on the source data again, into a new --out")
            return "dir", p
        if p.is_file():
            return ("table" if p.suffix.lower() in TABLE_SUFFIXES else "file"), p
        # Not on disk: a hub dataset name, unless it clearly meant a path.
        looks_like_path = spec.startswith((".", "/", "~")) or Path(spec).suffix or spec.count("/") > 1 or os.sep != "/" and os.sep in spec
        if looks_like_path or not spec:
            raise UserError(f"data not found: {spec}; check the path (sources: files, directories, `stdlib`, hf:NAME)")
        return "hub", None

    # -- identity ---------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        if self.kind == "stdlib":
            include = self.include or ("*.py",)
            return _walk(self.path, include, self.exclude, skip_dirs=("site-packages", "dist-packages"))
        if self.kind == "dir":
            return _walk(self.path, self.include, self.exclude)
        if self.kind in ("file", "table"):
            return [self.path]
        return []

    def fingerprint(self) -> str:
        """Hash of what identifies the content: file names, sizes and mtimes; dataset fingerprints."""
        h = hashlib.sha256()
        identity = [self.kind, self.spec if self.kind in ("hub",) else "", self.text_column, self.include, self.exclude,
                    self.hf_split]
        if self.sample_by != "file" and self.kind in ("stdlib", "dir", "file"):  # "file": fingerprints as before
            identity.append(self.sample_by)
        h.update(json.dumps(identity).encode())
        if self.kind in ("stdlib", "dir", "file", "table"):
            for f in self.files():
                st = f.stat()
                h.update(f"{f.relative_to(self.path.parent if self.kind in ('file', 'table') else self.path).as_posix()}"
                         f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        elif self.kind == "saved_dataset":
            for f in sorted(self.path.rglob("*")):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.relative_to(self.path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    # -- reading ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Document]:
        if self.kind in ("stdlib", "dir"):
            root = self.path
            prefix = "stdlib/" if self.kind == "stdlib" else ""
            for f in self.files():
                rel = prefix + f.relative_to(root).as_posix()
                if f.suffix.lower() in TABLE_SUFFIXES and self.kind == "dir" and not f.name.endswith(".json"):
                    try:  # one fixture.csv in a code folder must not abort the corpus: skip it, and say so
                        yield from self._table(f, rel)
                    except MissingColumn:
                        self.stats.tables_skipped.append(rel)
                else:
                    yield from self._file(f, rel)
        elif self.kind == "file":
            yield from self._file(self.path, self.path.name)
        elif self.kind == "table":
            yield from self._table(self.path, self.path.name)
        else:
            yield from self._dataset()

    def _file(self, path: Path, key: str) -> Iterator[Document]:
        try:
            if self.sample_by == "file" and path.stat().st_size > _STREAM_BYTES:
                with open(path, "rb") as f:
                    if b"\x00" in f.read(_BINARY_PROBE):
                        self.stats.binary_skipped += 1
                        return
                yield FileDocument(path, key, self.stats)
                return
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}; check its permissions") from e
        text = _decode(data, key, self.stats)
        del data  # a huge file is then held once, as text, while it is consumed
        if text is None:
            return
        docs, how = split_documents(text, self.sample_by)
        if not docs:
            self.stats.empty_skipped += 1
            return
        if how == "file":
            yield Document(text, key)
            return
        if self.sample_by == "auto":
            self.stats.auto_chosen[key] = how
        for i, doc in enumerate(docs):
            yield Document(doc, f"{key}:{i}")

    def _rows(self, path: Path) -> Iterator[dict]:
        """Rows of a table file as dicts (only `text_column` is needed, so parquet reads just that)."""
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except ValueError as e:
                            raise UserError(f"{path}:{n}: not valid JSON ({e}); fix or remove that line") from e
        elif suffix == ".json":
            text = path.read_text(encoding="utf-8", errors="replace")
            try:
                data = json.loads(text)
            except ValueError:
                try:  # JSON lines under a .json name
                    data = [json.loads(line) for line in text.splitlines() if line.strip()]
                except ValueError as e:
                    raise UserError(f"{path}: not valid JSON ({e}); expected a list of objects or JSON lines") from e
            if isinstance(data, dict):  # {"data": [...]} / {"train": [...]}: the first list of records
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            if not isinstance(data, list):
                raise UserError(f"{path}: expected a list of objects with a {self.text_column!r} field")
            yield from data
        elif suffix == ".csv":
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    # Python's csv reads NUL bytes as text; in a CSV they mean damage or another encoding.
                    if any(isinstance(v, str) and "\x00" in v for v in row.values()):
                        raise UserError(f"{path}:{reader.line_num}: a NUL byte in a CSV row - the file is damaged "
                                        "or not UTF-8 text; fix or remove that line (or save the file as UTF-8)")
                    yield row
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(path)
            except Exception as e:  # pyarrow raises ArrowInvalid & co. for damaged files
                raise UserError(f"{path} is not a readable parquet file ({type(e).__name__}); fix or remove it") from None
            names = pf.schema_arrow.names
            if self.text_column not in names:
                raise MissingColumn(_unknown_column(self.text_column, names, path))
            batches = pf.iter_batches(batch_size=1024, columns=[self.text_column])
            while True:
                try:  # only the reading is guarded: an error of the consumer is not the file's fault
                    batch = next(batches)
                except StopIteration:
                    break
                except Exception as e:  # corrupt pages: OSError / ArrowInvalid mid-file
                    why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
                    raise UserError(f"{path} is damaged: reading its row groups failed ({why}); re-create or "
                                    "remove the file") from None
                for v in batch.column(0).to_pylist():
                    yield {self.text_column: v}

    def _table(self, path: Path, key: str) -> Iterator[Document]:
        if path.suffix.lower() != ".parquet" and _has_nul(path):
            if self.kind != "table":  # in a folder: skipped like any binary file, and counted
                self.stats.binary_skipped += 1
                return
            raise UserError(f"{path} has NUL bytes, so it is binary or UTF-16 text, not a UTF-8 "
                            f"{path.suffix.lstrip('.')} file; save it as UTF-8 or pass another file")
        for i, row in enumerate(self._rows(path)):
            if not isinstance(row, dict) or self.text_column not in row:
                names = list(row) if isinstance(row, dict) else [type(row).__name__]
                raise MissingColumn(_unknown_column(self.text_column, names, path))
            text = row[self.text_column]
            if text is None or text == "":
                self.stats.empty_skipped += 1
                continue
            yield Document(str(text), f"{key}:{i}")

    def _dataset(self) -> Iterator[Document]:
        ds = self._load_dataset()
        names = getattr(ds, "column_names", None)
        if names is not None and self.text_column not in names:
            raise UserError(_unknown_column(self.text_column, names, self.spec))
        for i, row in enumerate(ds):
            if self.text_column not in row:
                raise UserError(_unknown_column(self.text_column, list(row), self.spec))
            text = row[self.text_column]
            if text:
                yield Document(str(text), f"{self.spec}:{self.hf_split}:{i}")
            else:
                self.stats.empty_skipped += 1

    def _load_dataset(self):
        import datasets

        if self.kind == "saved_dataset":
            ds = datasets.load_from_disk(str(self.path))
            if isinstance(ds, datasets.DatasetDict):
                if self.hf_split not in ds:
                    raise UserError(f"{self.spec} has no split {self.hf_split!r}; it has {', '.join(ds)} (use --split)")
                ds = ds[self.hf_split]
            return ds.to_iterable_dataset() if self.streaming else ds
        name = self.spec[3:] if self.spec.startswith("hf:") else self.spec
        name, _, config = name.partition(":")
        try:
            return datasets.load_dataset(name, config or None, split=self.hf_split, streaming=self.streaming)
        except Exception as e:
            offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
            why = "the Hugging Face hub is offline" if offline else str(e).splitlines()[0][:160]
            raise UserError(f"data {self.spec!r} is not a local path and could not be loaded as a dataset: {why}; "
                            "check the path or the dataset name") from e


class MissingColumn(UserError):
    """A table without the text column (skipped inside directories, an error for a named file)."""


def _unknown_column(column: str, names: Sequence[str], where, key: str = "data.text_column") -> str:
    return (f"no column {column!r} in {where}; columns found: {', '.join(map(str, names)) or 'none'} "
            f"(use {flag(key)})")


class Corpus:
    """Several sources read as one stream of documents, with one set of counters and one fingerprint."""

    def __init__(self, sources: Sequence[str], *, limit: int | None = None, **options):
        if not sources:
            raise UserError("no data given; pass --data with a file, a directory, `stdlib` or a dataset name")
        self.stats = SourceStats()
        self.sources = [Source(str(s), stats=self.stats, **options) for s in sources]
        self.limit = limit
        self.options = options

    def __iter__(self) -> Iterator[Document]:
        n = 0
        for src in self.sources:
            for doc in src:
                if self.limit is not None and n >= self.limit:
                    return
                n += 1
                yield doc

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps({"limit": self.limit}).encode())
        for s in self.sources:
            h.update(s.fingerprint().encode())
        return h.hexdigest()

    def report(self) -> None:
        """Print one warning line per kind of trouble met while reading."""
        s = self.stats
        if s.undecodable_files:
            eg = ", ".join(s.examples)
            print(f"warning: {s.undecodable_files} file(s) had bytes that are not UTF-8, replaced by U+FFFD (e.g. {eg})",
                  file=sys.stderr)
        if s.binary_skipped:
            print(f"warning: skipped {s.binary_skipped} binary file(s)", file=sys.stderr)
        if s.tables_skipped:
            print(f"warning: skipped {len(s.tables_skipped)} table file(s) without a {self.options.get('text_column', 'text')!r} "
                  f"column (e.g. {', '.join(s.tables_skipped[:3])}); use {flag('data.text_column')}, or exclude them",
                  file=sys.stderr)
        if s.auto_chosen:  # what `auto` decided, so a surprising split is visible; a few lines at most
            chosen = list(s.auto_chosen.items())
            for key, how in chosen[:3]:
                print(f"{key}: {_SPLIT_NAMES[how]} (sample_by auto)", file=sys.stderr)
            if len(chosen) > 3:
                rest = [how for _, how in chosen[3:]]
                counts = ", ".join(f"{rest.count(h)} {_SPLIT_NAMES[h]}" for h in ("line", "paragraph") if h in rest)
                print(f"... and {len(rest)} more file(s) (sample_by auto): {counts}", file=sys.stderr)


SOURCE_OPTIONS = ("text_column", "include", "exclude", "streaming", "split", "limit", "sample_by")


def open_sources(sources: Sequence[str] | str, **options) -> Corpus:
    """All `sources` as one corpus. Options: text_column, include, exclude, streaming, split, limit, sample_by
    (how text files split into documents: file, line, paragraph or auto)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [str(sources)]
    options = {k: v for k, v in options.items() if v is not None}
    allowed = set(SOURCE_OPTIONS)
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"unknown source options: {', '.join(sorted(unknown))}")
    return Corpus(list(sources), **options)


def iter_documents(sources: Sequence[str] | str, **options) -> Iterator[Document]:
    """Shortcut: the documents of `sources`."""
    yield from open_sources(sources, **options)


def add_source_args(parser, required: bool = True) -> None:
    """The flags every command that reads a corpus shares (`--data` and how to read it)."""
    parser.add_argument("--data", nargs="+", required=required, metavar="SRC",
                        help="files, directories, `stdlib` (the Python standard library's .py files), "
                             "a saved dataset directory or a Hugging Face dataset name (hf:NAME[:CONFIG])")
    parser.add_argument("--include", action="append", metavar="GLOB",
                        help="only files matching this glob, e.g. '*.py' (repeatable)")
    parser.add_argument("--exclude", action="append", metavar="GLOB", help="skip files matching this glob (repeatable)")
    parser.add_argument("--text-column", default="text", help="column holding the text in tables and datasets")
    parser.add_argument("--split", default="train", help="which split of a Hugging Face dataset to read")
    parser.add_argument("--streaming", action="store_true", help="stream a Hugging Face dataset instead of downloading it")
    parser.add_argument("--limit", type=int, metavar="N", help="read at most N documents")
    parser.add_argument("--sample-by", choices=SAMPLE_BY, default="file",
                        help="documents of a text file: the whole file (default), each non-empty line, each "
                             "blank-line separated paragraph, or auto (paragraphs if blank lines separate text, "
                             "else lines); tables are always one document per row")


def source_options(args) -> dict:
    """The source options from parsed `add_source_args` flags, for open_sources / prepare / train_tokenizer."""
    return {
        "text_column": args.text_column,
        "include": tuple(args.include or ()),
        "exclude": tuple(args.exclude or ()),
        "split": args.split,
        "streaming": args.streaming,
        "limit": args.limit,
        "sample_by": getattr(args, "sample_by", None),
    }


def iter_rows(sources: Sequence[str] | str, columns: Sequence[str], *, column_keys: Sequence[str] | None = None,
              **options) -> Iterator[dict]:
    """Rows of table files / datasets holding every column in `columns` (for supervised pairs).

    A missing column is a UserError that lists the columns found and names the config key that sets it
    (`column_keys[i]` for `columns[i]`, e.g. "data.label_column")."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [str(sources)]
    options = {k: v for k, v in options.items() if v is not None and k in ("streaming", "split", "limit")}
    limit = options.pop("limit", None)
    n = 0
    for spec in sources:
        src = Source(str(spec), **options)
        if src.kind == "table":
            rows = src._rows(src.path)
        elif src.kind in ("saved_dataset", "hub"):
            rows = iter(src._load_dataset())
        else:
            raise UserError(f"{spec}: supervised data must be a .jsonl/.json/.csv/.parquet file or a dataset "
                            f"with columns {', '.join(columns)}")
        for row in rows:
            missing = [c for c in columns if not isinstance(row, dict) or c not in row]
            if missing:
                key = column_keys[list(columns).index(missing[0])] if column_keys else "data.text_column"
                raise UserError(_unknown_column(missing[0], list(row) if isinstance(row, dict) else [], spec, key))
            if limit is not None and n >= limit:
                return
            n += 1
            yield row
