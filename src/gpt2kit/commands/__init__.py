"""One module per command; each defines `add_parser(subparsers)` and an optional `ORDER`."""

from __future__ import annotations

import argparse


def add_int8_flag(p: argparse.ArgumentParser) -> None:
    """--int8, shared by generate, eval and serve (gpt2kit.quantize)."""
    p.add_argument("--int8", action="store_true", help="linear layers in int8 (CPU only): faster decoding for a "
                   "small loss of quality, measured in docs/BENCHMARKS.md; the default path is exact fp32")
