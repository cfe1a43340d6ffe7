"""Run directories: what makes a directory a gpt2kit run, the lock one training process holds on it,
and removing only what gpt2kit wrote.

- A run is recognised by `RUN/.gpt2kit-run`, a small JSON marker written when `train` creates the run
  (`{"format": "gpt2kit-run", "version": 1, "created": ..., "gpt2kit_version": ...}`). Runs made before the
  marker existed are recognised by what only gpt2kit makes: `config.yaml` next to `checkpoints/step-NNNNNNNN/`
  holding a `COMPLETE` marker; resuming such a run adds the marker.
- `RUN/.lock` is held with `flock` by the training process (rank 0 of a distributed run) for the whole run, so
  a second `train` on the same `--out` refuses instead of mixing its files in. The operating system releases
  it when the process ends in any way (kill -9 included); the file itself stays, naming its last holder.
- `--overwrite` deletes only the files and directories gpt2kit writes into a run (`RUN_ENTRIES`); anything
  else the user put there is kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import shutil
import socket
import time
from pathlib import Path

from gpt2kit import __version__
from gpt2kit.atomic import write_text_atomic
from gpt2kit.checkpoint import STEP_DIR, is_complete
from gpt2kit.errors import UserError

MARKER = ".gpt2kit-run"
LOCK = ".lock"

# Everything `train` writes at the top of a run directory (tracker folders: those Accelerate's trackers
# create under the run, e.g. tensorboard, aim), and the temporary names its atomic writes use.
RUN_ENTRIES = (MARKER, "config.yaml", "tokenizer", "checkpoints", "metrics.jsonl", "tensorboard", "aim",
               "loss.png", "confusion.png", "base")
RUN_TEMPORARIES = (".tmp-base-*", ".old-base-*", ".config.yaml.tmp-*", ".metrics.jsonl.tmp-*",
                   f".{MARKER}.tmp-*")


def write_marker(run_dir: Path) -> None:
    """Mark `run_dir` as a gpt2kit run (once; an existing marker keeps its creation time)."""
    if (run_dir / MARKER).is_file():
        return
    marker = {"format": "gpt2kit-run", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "gpt2kit_version": __version__}
    write_text_atomic(run_dir / MARKER, json.dumps(marker) + "\n")


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a gpt2kit run: it has the marker, or (a run made before the marker) a config.yaml next
    to at least one complete checkpoint directory."""
    if (path / MARKER).is_file():
        return True
    ckpts = path / "checkpoints"
    if not (path / "config.yaml").is_file() or not ckpts.is_dir():
        return False
    return any(d.is_dir() and STEP_DIR.match(d.name) and is_complete(d) for d in ckpts.iterdir())


def is_empty(path: Path) -> bool:
    """A missing directory, or one holding nothing but a run lock (left by an attempt that failed in set-up)."""
    return not path.exists() or all(p.name == LOCK for p in path.iterdir())


def remove_run_files(run_dir: Path) -> list[str]:
    """Delete what gpt2kit wrote into `run_dir` (never the lock, never anything else); returns the names kept."""
    kept = []
    for p in sorted(run_dir.iterdir()):
        if p.name == LOCK:
            continue
        if p.name in RUN_ENTRIES or any(fnmatch.fnmatchcase(p.name, pat) for pat in RUN_TEMPORARIES):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        else:
            kept.append(p.name)
    return kept


class RunLock:
    """An exclusive, non-blocking `flock` on RUN/.lock, held until `release()` or the end of the process.

    `created` tells whether acquiring it created the run directory (so a set-up that fails can remove it again)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        missing = run_dir
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        self.created = missing if not run_dir.exists() else None  # the topmost directory we create
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        self.new_file = not path.exists()
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise UserError(f"{run_dir} is in use by another gpt2kit train ({holder}); wait for it to finish, "
                            "or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)

    def release(self, failed_setup: bool = False) -> None:
        """Unlock. After a set-up that failed, remove the lock file and the directories acquiring it created,
        when nothing else was written there, so a failed command leaves the filesystem as it was."""
        if self.fd is None:
            return
        if failed_setup and is_empty(self.run_dir) and (self.new_file or self.created):
            with contextlib.suppress(OSError):
                (self.run_dir / LOCK).unlink()
                if self.created is not None:
                    d = self.run_dir
                    while True:
                        d.rmdir()
                        if d == self.created:
                            break
                        d = d.parent
        os.close(self.fd)
        self.fd = None
