"""Writing results so that a crash at any moment leaves the old result or the new one, never half.

Used by checkpoints, prepared data directories, exports and small pointer/metrics files.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

_FULL_MESSAGES = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(e: BaseException, path: Path) -> bool:
    """Whether `e`, raised while writing under `path`, means the disk (or the quota) is full. Writers say so
    differently: Python raises OSError(ENOSPC), safetensors and tokenizers quote the OS message, and torch.save
    only says "unexpected pos" - there the free space left on `path`'s filesystem decides."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(m in str(e) for m in _FULL_MESSAGES):
        return True
    if isinstance(e, RuntimeError):
        try:
            return shutil.disk_usage(path).free < 1 << 20
        except OSError:
            return False
    return False


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
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. the disk filled up: no half-written temporary stays behind
        raise
