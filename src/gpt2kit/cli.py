"""`gpt2kit COMMAND [options]`: the command line.

Every module in `gpt2kit/commands/` registers one command through `add_parser(subparsers)`,
which sets `func` on its parser. `main` turns UserError into `error: ...` + exit 2, and
KeyboardInterrupt into exit 130.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from gpt2kit import __version__
from gpt2kit.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line `error: ...` and exit 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from gpt2kit import commands

    parser = Parser(
        prog="gpt2kit",
        description="Train GPT-2: tokenizers, data preparation, pretraining, fine-tuning, generation, evaluation, export.",
    )
    parser.add_argument("--version", action="version", version=f"gpt2kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [importlib.import_module(f"gpt2kit.commands.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    # Only commands that take dotted config overrides (train) accept extra arguments.
    if extra and not getattr(args, "accepts_overrides", False):
        print(f"error: unrecognized arguments: {' '.join(extra)}; see `gpt2kit {args.command} --help`", file=sys.stderr)
        return 2
    args.overrides = extra
    from gpt2kit.errors import set_flag_style

    set_flag_style("cli")  # commands with dotted config flags (train, finetune) switch it; a new call starts over
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError) as e:
        if not e.filename:
            raise
        # A backstop for paths the user gave that a command did not check itself.
        print(f"error: {e.strerror or type(e).__name__}: {e.filename}; check the path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `gpt2kit generate ... | head` closes stdout early; that is not an error.
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
