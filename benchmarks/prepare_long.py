"""Benchmark: `gpt2kit prepare` on one huge single-line document (peak memory must not grow with it).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/prepare_long.py [--mb 200] [--workers 2]

Writes a single-line text file of --mb MB (the stdlib's textwrap, string, shlex, difflib and statistics with
every run of whitespace made one space, repeated), runs `gpt2kit prepare --tokenizer gpt2` on it in a fresh
subprocess, and prints the wall time and the peak RSS of its largest process (workers included), next to a
tiny file's peak (the interpreter, torch-free imports and the tokenizer).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

_CHILD = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def write_line(path: Path, mb: int) -> None:
    lib = Path(sysconfig.get_paths()["stdlib"])
    text = " ".join((lib / f).read_text() for f in ("textwrap.py", "string.py", "shlex.py", "difflib.py",
                                                   "statistics.py"))
    text = " ".join(text.split()) + " "
    with open(path, "w") as f:
        while f.tell() < mb * 1_000_000:
            f.write(text)


def run(src: Path, out: Path, workers: int) -> tuple[float, float]:
    """(seconds, peak RSS MB of the largest process) of one prepare, measured by a fresh parent."""
    cmd = [sys.executable, "-c", _CHILD, sys.executable, "-m", "gpt2kit", "prepare", "--data", str(src),
           "--tokenizer", "gpt2", "--out", str(out), "--workers", str(workers), "--force", "--quiet"]
    rc, seconds, peak = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    if rc != "0":
        raise SystemExit(f"prepare failed with exit {rc}")
    return float(seconds), float(peak)


def cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=200, help="size of the single-line file (default 200)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_line(tmp / "line.txt", args.mb)
        (tmp / "tiny.txt").write_text((tmp / "line.txt").open().read(20_000))
        _, base = run(tmp / "tiny.txt", tmp / "tiny", args.workers)
        seconds, peak = run(tmp / "line.txt", tmp / "out", args.workers)
        size = (tmp / "line.txt").stat().st_size / 1e6
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, workers "
          f"{args.workers}, load average after the run {load}")
    print(f"one line of {size:.0f} MB: {seconds:.1f} s, {size / seconds:.1f} MB/s, peak RSS {peak:.0f} MB "
          f"(a 20 KB file: {base:.0f} MB)")


if __name__ == "__main__":
    main()
