"""One way for every command to fail on the user's mistake.

Raise `UserError("what went wrong; how to fix it")` anywhere; the CLI prints it as one line
`error: ...` on stderr and exits with code 2, without a traceback. Anything else is a bug
and keeps its traceback (exit 1).
"""

from __future__ import annotations

import sys
from pathlib import Path


class UserError(ValueError):
    """A mistake the user can fix (bad path, bad config value, ...). Exit code 2.

    A ValueError, so library callers can catch it the usual way."""


def require_path(path: str | Path, what: str = "path") -> Path:
    """Return `path` as a Path, or raise a UserError saying it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{what} not found: {path}; check the path and try again")
    return p


# Commands spell the same setting differently: `prepare --val-fraction` vs `train --data.val_fraction`.
# The running command sets the style once, so library messages name the flag the user can actually type.
_FLAG_STYLES = ("cli", "config")
_flag_style = "cli"


def set_flag_style(style: str) -> None:
    """How `flag` spells settings from now on: "cli" (`--val-fraction`, the default) or "config"
    (`--data.val_fraction`, for commands configured by dotted fields such as train and finetune)."""
    global _flag_style
    if style not in _FLAG_STYLES:
        raise ValueError(f"flag style must be one of {', '.join(_FLAG_STYLES)}, got {style!r}")
    _flag_style = style


def flag(key: str) -> str:
    """The command-line flag of config key `key` (e.g. "data.val_fraction") in the current style:
    `--data.val_fraction` in config style, `--val-fraction` in cli style."""
    if _flag_style == "config":
        return f"--{key}"
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def say_error(message: str) -> None:
    """One line on stderr in one write: with PYTHONUNBUFFERED, print() writes the text and its newline
    separately, and two ranks failing together would glue their lines into one."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
