"""Writing results so that a crash at any moment leaves the old result or the new one, never half.

Used by checkpoints, prepared data directories, exports and small pointer/metrics files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A temporary sibling directory to build a result in, with normal (umask) permissions,
    not mkdtemp's 0700, so checkpoints and exports stay readable by the user's other tools."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished `tmp` to `final`; an existing `final` is swapped aside first, never deleted
    before the new one is in place."""
    if final.exists():
        trash = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small file (a `latest` pointer, metrics) in one rename, after an fsync."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
