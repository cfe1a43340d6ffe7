"""One way for every command to fail on the user's mistake.

Raise `UserError("what went wrong; how to fix it")` anywhere; the CLI prints it as one line
`error: ...` on stderr and exits with code 2, without a traceback. Anything else is a bug
and keeps its traceback (exit 1).
"""

from __future__ import annotations

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
