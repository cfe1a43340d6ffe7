"""Shared fixtures: a small real corpus (stdlib modules), a tokenizer trained on it, prepared shards."""

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the Hub

STDLIB_MODULES = ["textwrap", "string", "shlex", "fnmatch", "glob", "bisect", "heapq", "colorsys",
                  "keyword", "reprlib", "graphlib", "numbers", "queue", "sched", "statistics", "difflib"]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """~400 KB of real Python: a few stdlib modules copied into a folder."""
    d = tmp_path_factory.mktemp("corpus")
    lib = Path(sysconfig.get_paths()["stdlib"])
    for name in STDLIB_MODULES:
        shutil.copy(lib / f"{name}.py", d / f"{name}.py")
    return d


@pytest.fixture(scope="session")
def small_tokenizer(corpus_dir):
    from gpt2kit.tokenizer import train_tokenizer

    return train_tokenizer([str(corpus_dir)], vocab_size=512)


@pytest.fixture(scope="session")
def prepared_dir(corpus_dir, small_tokenizer, tmp_path_factory) -> Path:
    from gpt2kit.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([str(corpus_dir)], small_tokenizer, out, val_fraction=0.15)
    return out
