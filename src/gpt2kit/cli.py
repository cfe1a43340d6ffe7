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
from gpt2kit.errors import UserError, say_error


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line `error: ...` and exit 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        say_error(f"error: {message}; see `{self.prog} --help`")
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


# What gloo / NCCL say when another process of the run died or cannot be reached.
_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "ECONNRESET",
                 "NCCL communicator was aborted", "Watchdog caught collective operation timeout", "timed out")


def peer_failure(e: BaseException) -> str | None:
    """One line for a distributed run whose peer died (kill -9, OOM killer, lost node), else None.

    Only while a process group is up, so a single-process error is never mistaken for one."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    text = str(e)
    if not (isinstance(e, getattr(dist, "DistError", ())) or any(m in text for m in _PEER_MARKERS)):
        return None
    # gloo: "[.../pair.cc:553] Read error [127.0.0.1]:31638: Connection reset by peer. This is typically ..."
    detail = text.splitlines()[0].split("] ", 1)[-1].split(". ")[0][:160] if text else type(e).__name__
    return (f"rank {dist.get_rank()} of {dist.get_world_size()} lost another process of the distributed run "
            f"({detail}); that process's log says why. Checkpoints already written are complete: fix the "
            "cause and start the run again with --resume auto")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    # Only commands that take dotted config overrides (train) accept extra arguments.
    if extra and not getattr(args, "accepts_overrides", False):
        say_error(f"error: unrecognized arguments: {' '.join(extra)}; see `gpt2kit {args.command} --help`")
        return 2
    args.overrides = extra
    from gpt2kit.errors import set_flag_style

    set_flag_style("cli")  # commands with dotted config flags (train, finetune) switch it; a new call starts over
    try:
        return _run(args)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Leave a distributed run's process group before the interpreter exits: tearing gloo down at exit
    can abort the process ("terminate called without an active exception", exit -6) after a clean error."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone: nothing left to close cleanly
            pass


def _run(args) -> int:
    try:
        rc = args.func(args)
    except UserError as e:
        say_error(f"error: {e}")
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError) as e:
        if not e.filename:
            raise
        # A backstop for paths the user gave that a command did not check itself.
        say_error(f"error: {e.strerror or type(e).__name__}: {e.filename}; check the path")
        return 2
    except KeyboardInterrupt:
        say_error("interrupted")
        return 130
    except RuntimeError as e:
        why = peer_failure(e)
        if why is None:
            raise
        say_error(f"error: {why}")
        return 1  # not the user's mistake, and not a bug here: the dead process's own log has the cause
    except BrokenPipeError:
        # `gpt2kit generate ... | head` closes stdout early; that is not an error.
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
