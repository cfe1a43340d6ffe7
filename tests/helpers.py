"""Checks shared by the bad-input and reliability tests (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of `path`, a file); the run lock is left out: only its holder's
    name changes, and a refusal may create it."""
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_error(rc: int, err: str) -> str:
    """The single `error:` line of a failed command (exit 2, no traceback)."""
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def train_args(base: dict[str, str], data, out, *extra: str, **over) -> list[str]:
    """`gpt2kit train` arguments: --data/--out, the `base` config flags with `over` (a__b = a.b) on top, `extra`."""
    args = ["train", "--data", str(data), "--out", str(out)]
    for k, v in {**base, **{k.replace("__", "."): str(v) for k, v in over.items()}}.items():
        args += [f"--{k}", v]
    return args + list(extra)


def kill9_when(proc, flag: Path, timeout: float = 240) -> None:
    """SIGKILL `proc` as soon as it creates the file `flag` (its own sign that it reached the moment to kill
    at); fails the test if it exits or takes more than `timeout` seconds first."""
    import signal
    import time

    try:
        deadline = time.time() + timeout
        while not flag.exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
