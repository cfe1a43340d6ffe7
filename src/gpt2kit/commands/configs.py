"""`gpt2kit configs`: the config presets shipped with gpt2kit (use one with `--config NAME`)."""

from __future__ import annotations

import argparse

ORDER = 42


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("configs", help="list the shipped config presets (--config NAME)",
                       description="List the config presets shipped with gpt2kit; `--config NAME` uses one, "
                       "`gpt2kit configs NAME` prints it.")
    p.add_argument("name", nargs="?", help="print this preset's YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gpt2kit.config import presets, resolve_config_path

    if args.name:
        print(resolve_config_path(args.name).read_text(), end="")
        return 0
    for name, about in presets().items():
        print(f"{name:16s} {about}")
    return 0
