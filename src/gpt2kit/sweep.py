"""Hyper-parameter search: short real `train` runs over a search space, with optuna.

`gpt2kit sweep --config BASE.yaml --space SPACE.yaml --trials N --out DIR`. The space file maps dotted
config fields to distributions:

    optim.lr: {type: loguniform, low: 1e-4, high: 1e-2}
    optim.warmup_steps: {type: uniform, low: 0, high: 50}   # an integer field samples integers
    model.n_layer: {type: int, low: 2, high: 4}
    train.batch_size: [4, 8]                                # = {type: choice, values: [4, 8]}

Each trial is `train()` on base config < sampled values, in DIR/trials/trial-0003/ (a normal run dir). The
validation loss of every evaluation is reported to a median pruner; a trial worse than the median of the
finished ones at the same step stops there (its checkpoints stay) and is PRUNED.

DIR holds everything, so running the same command again continues:
    study.db           optuna's SQLite storage; `--trials N` = N finished (complete or pruned) trials in total
    trials/            one run directory per trial
    results.md / .csv  every trial, lowest validation loss first: parameters, state, tokens, time, best step
    importance.png     validation loss against the most important parameters (optuna's importance)
    best.yaml          base config + the best trial's values: `gpt2kit train --config DIR/best.yaml`
A trial cut mid-way (Ctrl-C, a kill) is never counted: it becomes FAIL and its values are queued to run
again. Grid points are all queued when the study is created, in the space's order, so trial k is grid point k
and a continued sweep visits the rest.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import fcntl
import io
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpt2kit.atomic import write_text_atomic
from gpt2kit.config import _field_types, _sections, _unknown, all_keys, build_config
from gpt2kit.errors import UserError, say_error

if typing.TYPE_CHECKING:
    import optuna

    from gpt2kit.config import TrainConfig

KINDS = ("loguniform", "uniform", "int", "choice")
KIND_ALIASES = {"log_uniform": "loguniform", "float": "uniform", "categorical": "choice", "randint": "int"}
SAMPLERS = ("tpe", "random", "grid")
STUDY = "sweep"
MAX_FAILS_IN_ROW = 3  # then the sweep stops: something is wrong with every trial, not with one sample


# ---------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Param:
    """One searched field: `kind` is the distribution's shape; `integer` (the field is an int) makes
    uniform / loguniform sample integers."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    values: tuple = ()
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        log = self.kind == "loguniform"
        if self.kind == "int" or self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=log)

    def grid(self) -> list | None:
        """The grid points, or None when the distribution is continuous."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int" or self.integer or self.step:
            step = self.step or 1
            n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
            pts = [self.low + i * step for i in range(n)]
            return [int(v) for v in pts] if self.kind == "int" or self.integer else pts
        return None

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key}: choice of {list(self.values)}"
        step = f", step {self.step:g}" if self.step else ""
        return f"{self.key}: {self.kind} [{self.low:g}, {self.high:g}]{step}" + (
            " (integers)" if self.integer and self.kind != "int" else "")

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _flatten(data: dict) -> Iterator[tuple[str, Any]]:
    """Dotted keys as they are; `optim: {lr: {...}}` (a section nesting fields) flattened to `optim.lr`."""
    for key, spec in data.items():
        key = str(key)
        if key in _sections() and isinstance(spec, dict) and "type" not in spec:
            for name, sub in spec.items():
                yield f"{key}.{name}", sub
        else:
            yield key, spec


def _number(where: str, name: str, value: Any) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{where}: {name} must be a finite number, got {value!r}")
    return value


def parse_space(data: Any, base: TrainConfig, source: str = "the space") -> list[Param]:
    """Validate a space mapping against the config dataclasses and `base`; every error names the field."""
    if data is None:
        data = {}  # an empty file: "names no fields" below
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a YAML mapping of dotted config fields to distributions, e.g. "
                        "`optim.lr: {type: loguniform, low: 1e-4, high: 1e-2}`")
    params = []
    for key, spec in _flatten(data):
        if key not in all_keys():
            raise UserError(f"{source}: {_unknown(key, all_keys())}")
        params.append(_parse_param(key, spec, base, source))
    if not params:
        raise UserError(f"{source} names no fields; add one like `optim.lr: {{type: loguniform, low: 1e-4, "
                        "high: 1e-2}`")
    return params


def _parse_param(key: str, spec: Any, base: TrainConfig, source: str) -> Param:
    where = f"{source}: {key}"
    if isinstance(spec, list):
        spec = {"type": "choice", "values": spec}
    if not isinstance(spec, dict):
        raise UserError(f"{where} must be a distribution like {{type: loguniform, low: 1e-4, high: 1e-2}} or a "
                        f"list of choices, got {spec!r}")
    kind = KIND_ALIASES.get(str(spec.get("type")), spec.get("type"))
    if kind not in KINDS:
        near = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f"did you mean {near[0]}?" if near else f"use one of {', '.join(KINDS)}"
        raise UserError(f"{where}: unknown type {spec.get('type')!r}; {hint}")
    allowed = {"type", "values"} if kind == "choice" else {"type", "low", "high"} | (
        set() if kind == "loguniform" else {"step"})
    extra = sorted(set(spec) - allowed)
    if extra:
        raise UserError(f"{where}: {kind} takes {', '.join(sorted(allowed - {'type'}))}, not {extra[0]}")
    section, _, name = key.partition(".")
    tp, _ = _field_types(_sections()[section])[name]
    tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)  # int | None -> int
    if typing.get_origin(tp) is list:
        raise UserError(f"{where} is a list field; a sweep searches single values only")

    def check(value: Any) -> None:  # the field's own type and range checks, on top of the base config
        try:
            build_config(None, {key: value}, base=base)
        except UserError as e:
            raise UserError(f"{source}: {e}") from None  # (the message names the field)

    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: choice needs a non-empty list of values, e.g. values: [4, 8]")
        for v in values:
            if v is not None and not isinstance(v, bool | int | float | str):
                raise UserError(f"{where}: choices must be single values (numbers, strings, true/false, null), "
                                f"got {v!r}")
            check(v)
        return Param(key, kind, values=tuple(values))
    if tp not in (int, float):
        raise UserError(f"{where} is a {getattr(tp, '__name__', tp)} field; search it with type: choice")
    for name_ in ("low", "high"):
        if name_ not in spec:
            raise UserError(f"{where}: {kind} needs low and high, e.g. {{type: {kind}, low: 1, high: 4}}")
    low, high = _number(where, "low", spec["low"]), _number(where, "high", spec["high"])
    step = _number(where, "step", spec["step"]) if spec.get("step") is not None else None
    if low > high:
        raise UserError(f"{where}: low ({low:g}) is greater than high ({high:g}); swap them")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform needs low > 0 (got {low:g}); use uniform for ranges from 0")
    if step is not None and step <= 0:
        raise UserError(f"{where}: step must be > 0, got {step:g}")
    integer = tp is int
    if (kind == "int" or integer) and not all(float(v).is_integer() for v in (low, high, step or 1)):
        what = "int" if kind == "int" else "an integer field"
        raise UserError(f"{where}: {what} takes integer low/high/step, got low {low:g}, high {high:g}")
    if kind == "int" or integer:
        low, high, step = int(low), int(high), (int(step) if step is not None else None)
    check(low)
    check(high)
    return Param(key, kind, low=low, high=high, step=step, integer=integer and kind != "int")


def load_space(path: str | os.PathLike, base: TrainConfig) -> list[Param]:
    """Read and validate SPACE.yaml (its own reader: a space is never a shipped preset name)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"space file not found: {path}; pass a YAML file mapping config fields to distributions")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; --space takes a YAML file") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_space(data, base, source=str(path))


def grid_points(space: list[Param]) -> list[dict]:
    """Every combination, first parameter slowest; a UserError when a parameter is continuous."""
    axes = []
    for p in space:
        pts = p.grid()
        if pts is None:
            raise UserError(f"--sampler grid needs choices or integer ranges; {p.key} is a continuous {p.kind} "
                            "(give it a step, or use type: choice)")
        axes.append(pts)
    return [dict(zip([p.key for p in space], combo)) for combo in itertools.product(*axes)]


def trial_config(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """Base config < sampled values. A searched step count replaces the base's epochs and vice versa (they
    exclude each other, and the space is the last word)."""
    over = dict(params)
    if "train.max_steps" in over and "train.epochs" not in over:
        over["train.epochs"] = None
    if "train.epochs" in over and "train.max_steps" not in over:
        over["train.max_steps"] = None
    return build_config(None, over, base=base)


# ---------------------------------------------------------------- the study


@dataclass
class SweepSettings:
    base: TrainConfig
    space: list[Param]
    trials: int
    out: Path
    sampler: str = "tpe"
    seed: int = 0
    minutes: float | None = None
    prune: bool = True
    quiet: bool = False

    def check(self) -> None:
        """Every mistake in the settings, before anything is created."""
        from gpt2kit.train import plan_steps

        if self.trials < 1:
            raise UserError(f"--trials must be at least 1, got {self.trials}")
        if self.minutes is not None and not self.minutes > 0:
            raise UserError(f"--minutes must be > 0, got {self.minutes:g}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "grid":
            grid_points(self.space)
        for p in self.space:  # each extreme together with the rest of the base (e.g. epochs vs max_steps)
            for v in ([p.values[0]] if p.kind == "choice" else [p.low, p.high]):
                plan_steps(trial_config(self.base, {p.key: v}).train, 1)
        out = self.out
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; pass a directory for the sweep")
        if out.is_dir() and any(out.iterdir()) and not (out / "study.db").exists():
            raise UserError(f"--out {out} exists and is not a sweep directory (no study.db); choose another --out")

    def identity(self) -> dict:
        """What a continued sweep must share with the one that created DIR."""
        return {"space": [p.to_json() for p in self.space], "base": self.base.to_dict(),
                "grid": self.sampler == "grid"}


def open_study(out: Path, sampler: optuna.samplers.BaseSampler | None = None, prune: bool = True) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}",
                                         engine_kwargs={"connect_args": {"timeout": 60}})
    # Pruning starts once 2 trials finished (optuna's default of 5 never prunes in a small sweep), from the
    # first evaluation: a trial already worse than their median at the same step rarely recovers.
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if prune
              else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler, pruner=pruner,
                               direction="minimize", load_if_exists=True)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: every point is queued; nothing is sampled


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One sweep process per DIR at a time (its workers aside); the lock dies with the process."""
    f = open(out / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"another gpt2kit sweep is running in {out}; wait for it or choose another --out") from None
    try:
        yield
    finally:
        f.close()


def prepare_study(study: optuna.Study, s: SweepSettings, log: Callable[[str], None]) -> None:
    """A new study: record what it searches, queue the grid. A continued one: check it is the same sweep,
    and turn trials left RUNNING by a killed process into FAIL, their values queued to run again."""
    from optuna.trial import TrialState

    ident = s.identity()
    saved = study.user_attrs.get("gpt2kit")
    if saved is None:
        study.set_user_attr("gpt2kit", ident)
        if s.sampler == "grid" and not study.trials:
            for point in grid_points(s.space):
                study.enqueue_trial(point)
    elif saved != ident:
        raise UserError(f"{s.out} holds a sweep {_difference(saved, ident)}; continue it with the same "
                        "--config/--space/--sampler (and flags), or choose another --out")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        params = t.params or t.system_attrs.get("fixed_params")  # a queued (grid) trial cut before it sampled
        note = "cut: the sweep stopped during this trial" + (
            f"; its values run again as trial {requeue(study, params, t.number)}" if params else "")
        _finish(study, t.number, "FAIL", {"note": note})
        log(f"trial {t.number}: {note}")


def _difference(saved: dict, ident: dict) -> str:
    if saved["grid"] != ident["grid"]:
        return "made with " + ("--sampler grid" if saved["grid"] else "another sampler than grid")
    if saved["space"] != ident["space"]:
        return "over another space (" + "; ".join(Param(**{**p, "values": tuple(p["values"])}).describe()
                                                  for p in saved["space"]) + ")"
    flat = {f"{s}.{k}": v for s, sec in saved["base"].items() for k, v in sec.items()}
    now = {f"{s}.{k}": v for s, sec in ident["base"].items() for k, v in sec.items()}
    key = next((k for k in now if flat.get(k) != now[k]), "?")
    return f"with another base config ({key} was {flat.get(key)!r}, now {now.get(key)!r})"


def requeue(study: optuna.Study, params: dict, of: int) -> int:
    """Queue `params` to run again as a new trial (once); its number."""
    from optuna.trial import TrialState

    for w in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if w.system_attrs.get("fixed_params") == params:
            return w.number
    study.enqueue_trial(params, user_attrs={"note": f"re-run of trial {of}"})
    return study.get_trials(deepcopy=False)[-1].number


def _finish(study: optuna.Study, number: int, state: str, attrs: dict, value: float | None = None) -> None:
    import optuna
    from optuna.trial import TrialState

    t = study.get_trials(deepcopy=False)[number]
    trial = optuna.Trial(study, t._trial_id)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    study.tell(trial, value if state == "COMPLETE" else None, state=TrialState[state])


# ---------------------------------------------------------------- trials


def _counts(study: optuna.Study) -> tuple[int, int, int]:
    """(finished, running, waiting)."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return (sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
            states.count(TrialState.RUNNING), states.count(TrialState.WAITING))


class CannotTrain(UserError):
    """The first trial of a new sweep failed during set-up: the base config (or data) is wrong, not a sample."""


class TrialFailed(Exception):
    def __init__(self, message: str, setup: bool):
        super().__init__(message)
        self.setup = setup  # failed before its first training step (no metrics.jsonl)


def run_trial(study: optuna.Study, trial: optuna.Trial, s: SweepSettings, log: Callable[[str], None]) -> int:
    """Train one trial and tell the study how it ended; the exit code of train (130/143: stopped by a signal)."""
    from gpt2kit.train import train

    params = {p.key: p.suggest(trial) for p in s.space}
    run_dir = s.out / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir.relative_to(s.out)))
    seen: dict[str, Any] = {"best": None, "best_step": None, "pruned_at": None}

    def on_eval(step: int, metrics: dict) -> bool:
        v = metrics.get("val_loss")
        if v is None or not math.isfinite(v):  # a diverged trial: nothing to compare, nothing to hope for
            seen["pruned_at"] = step if s.prune else None
            return s.prune
        trial.report(v, step)
        if seen["best"] is None or v < seen["best"]:
            seen["best"], seen["best_step"] = v, step
        if s.prune and trial.should_prune():
            seen["pruned_at"] = step
            return True
        return False

    params_text = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
    t0 = time.time()
    try:
        res = train(trial_config(s.base, params), run_dir, quiet=True, on_eval=on_eval)
    except UserError as e:
        _finish(study, trial.number, "FAIL", {"note": str(e)})
        raise TrialFailed(str(e), setup=not (run_dir / "metrics.jsonl").exists()) from None
    except KeyboardInterrupt:
        again = requeue(study, params, trial.number)
        _finish(study, trial.number, "FAIL", {"note": f"cut: interrupted; its values run again as trial {again}"})
        raise
    except Exception as e:
        import torch

        if not isinstance(e, torch.OutOfMemoryError):
            _finish(study, trial.number, "FAIL", {"note": f"{type(e).__name__}: {e}"})
            raise
        _finish(study, trial.number, "FAIL", {"note": "out of memory"})
        raise TrialFailed(f"out of memory with {params_text}", setup=False) from None
    attrs = {"tokens": res.tokens, "seconds": round(time.time() - t0, 2), "steps": res.step,
             "best_step": seen["best_step"], "best_val_loss": seen["best"]}
    finished, _, _ = _counts(study)
    head = f"trial {trial.number} [{finished + 1}/{s.trials}] {params_text}:"
    if res.exit_code:
        again = requeue(study, params, trial.number)
        _finish(study, trial.number, "FAIL", {**attrs, "note": f"cut at step {res.step}; its values run again "
                                              f"as trial {again}"})
        log(f"{head} stopped at step {res.step}; re-run the same command to continue the sweep")
        return res.exit_code
    if seen["pruned_at"] is not None:
        _finish(study, trial.number, "PRUNED", {**attrs, "note": f"pruned at step {seen['pruned_at']}"})
        log(f"{head} pruned at step {seen['pruned_at']} (val loss {_fmt(seen['best'])}), {attrs['seconds']:.1f} s")
        return 0
    if seen["best"] is None:
        _finish(study, trial.number, "FAIL", {**attrs, "note": "no finite validation loss"})
        raise TrialFailed(f"trial {trial.number} ({params_text}) has no finite validation loss", setup=False)
    _finish(study, trial.number, "COMPLETE", attrs, value=seen["best"])
    log(f"{head} val loss {seen['best']:.4f} at step {seen['best_step']}, {attrs['seconds']:.1f} s")
    return 0


def run_trials(study: optuna.Study, s: SweepSettings, log: Callable[[str], None], deadline: float | None,
               new_study: bool = False, on_trial: Callable[[], None] | None = None) -> int:
    """Ask, train, tell until N trials finished, the grid is done, or the time budget is used; an exit code."""
    fails, ran = 0, 0
    while True:
        finished, running, waiting = _counts(study)
        if finished + running >= s.trials:
            return 0
        if deadline is not None and time.time() >= deadline:
            log(f"time budget of {s.minutes:g} min used: no new trials ({finished} of {s.trials} finished)")
            return 0
        if s.sampler == "grid" and not waiting:
            log(f"grid done: every point ran ({finished} finished)")
            return 0
        trial = study.ask()
        try:
            code = run_trial(study, trial, s, log)
            fails = 0
        except TrialFailed as e:
            if new_study and ran == 0 and e.setup:
                raise CannotTrain(str(e)) from None
            log(f"trial {trial.number} failed: {e}")
            fails += 1
            if fails >= MAX_FAILS_IN_ROW:
                raise UserError(f"{fails} trials in a row failed, the last with: {e}; see {s.out / 'results.md'}"
                                ) from None
            code = 0
        finally:
            ran += 1
            if on_trial is not None:
                on_trial()
        if code:
            return code


def cuda_devices(base: TrainConfig) -> list[str]:
    """The CUDA devices trials can spread over (one trial each); [] = one trial at a time in this process."""
    if getattr(base.train, "device", "auto") not in ("auto", "cuda"):
        return []
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [d.strip() for d in visible.split(",") if d.strip()][:n] if visible else [str(i) for i in range(n)]


def run_sweep(s: SweepSettings) -> int:
    """The whole sweep; an exit code (0, or 130/143 when a signal stopped a trial)."""
    s.check()
    log = (lambda msg: None) if s.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = s.out
    was_there = out.exists()  # (then empty, or a sweep: check() refuses anything else)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    deadline = t0 + 60 * s.minutes if s.minutes else None
    with locked(out):
        new = not (out / "study.db").exists()
        try:
            study = open_study(out, prune=s.prune)
            prepare_study(study, s, log)
            study.sampler = make_sampler(s.sampler, s.seed + len(study.trials))  # no replay after a restart
            finished, _, _ = _counts(study)
            if finished >= s.trials:
                log(f"{out}: {finished} trials finished already (--trials {s.trials}); raise --trials to run more")
            n = len(s.space)
            log(f"sweep {out}: {n} parameter{'s' * (n != 1)}, {s.sampler} sampler, {finished} of {s.trials} trials "
                "finished" + (", pruning on" if s.prune else ""))
            write_results(study, s)
            devices = cuda_devices(s.base)
            if devices and finished < s.trials:
                code = run_parallel(s, devices, deadline, log)
            else:
                code = run_trials(study, s, log, deadline, new_study=new, on_trial=lambda: write_results(study, s))
            write_results(study, s)
        except CannotTrain:
            if new:
                shutil.rmtree(out, ignore_errors=True)  # a sweep that could not train once leaves nothing behind
                if was_there:
                    out.mkdir()
            raise
    summary(study, s, log, time.time() - t0)
    return code


def summary(study: optuna.Study, s: SweepSettings, log: Callable[[str], None], seconds: float) -> None:
    best = best_trial(study)
    finished, _, _ = _counts(study)
    log(f"{finished} of {s.trials} trials finished ({seconds / 60:.1f} min in this run); results "
        f"{s.out / 'results.md'}, {s.out / 'importance.png'}")
    if best is not None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        log(f"best: trial {best.number}, val loss {best.value:.4f} ({params}); train it: "
            f"gpt2kit train --config {s.out / 'best.yaml'} --out RUN")


# ---------------------------------------------------------------- several GPUs


def run_parallel(s: SweepSettings, devices: list[str], deadline: float | None, log: Callable[[str], None]) -> int:
    """One worker process per CUDA device (CUDA_VISIBLE_DEVICES), all on the same study.db; each asks for
    trials until N are finished or running. Written for machines with several GPUs; not tested here."""
    spec = s.out / ".workers.json"
    write_text_atomic(spec, json.dumps({"base": s.base.to_dict(), "space": [p.to_json() for p in s.space],
                                        "trials": s.trials, "out": str(s.out), "sampler": s.sampler,
                                        "seed": s.seed, "minutes": s.minutes, "prune": s.prune,
                                        "deadline": deadline}))
    log(f"{len(devices)} CUDA devices: one trial on each at a time")
    procs = [subprocess.Popen([sys.executable, "-m", "gpt2kit.sweep", str(spec), str(i)],
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": dev}) for i, dev in enumerate(devices)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: their trials save and stop
        codes = [130, *(p.wait() for p in procs)]
    finally:
        spec.unlink(missing_ok=True)
    return next((c for c in codes if c), 0)


def _worker_main(spec: str, index: str) -> int:
    """`python -m gpt2kit.sweep SPEC INDEX`: one worker of run_parallel, on the device it was given."""
    d = json.loads(Path(spec).read_text())
    base = build_config(d["base"])
    space = [Param(**{**p, "values": tuple(p["values"])}) for p in d["space"]]
    s = SweepSettings(base, space, d["trials"], Path(d["out"]), d["sampler"], d["seed"], d["minutes"], d["prune"])
    tag = f"[cuda {os.environ.get('CUDA_VISIBLE_DEVICES', index)}] "
    study = open_study(s.out, prune=s.prune)
    study.sampler = make_sampler(s.sampler, s.seed + 1000 * (int(index) + 1) + len(study.trials))
    try:
        return run_trials(study, s, lambda m: print(tag + m, file=sys.stderr, flush=True), d["deadline"],
                          on_trial=lambda: write_results(study, s))
    except UserError as e:
        say_error(f"error: {tag}{e}")
        return 2


# ---------------------------------------------------------------- results


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return min(done, key=lambda t: (t.value, t.number)) if done else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _val(t: optuna.trial.FrozenTrial) -> float | None:
    v = t.user_attrs.get("best_val_loss", t.value)
    return v if v is not None and math.isfinite(v) else None


def result_rows(study: optuna.Study, space: list[Param]) -> list[dict]:
    """One row per trial that ran (queued ones are left out), lowest best validation loss first."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    trials.sort(key=lambda t: (_val(t) is None, _val(t) or 0.0, t.number))
    rows = []
    for t in trials:
        a = t.user_attrs
        rows.append({"trial": t.number, "state": t.state.name, "val_loss": _val(t),
                     **{p.key: t.params.get(p.key) for p in space},
                     "tokens": a.get("tokens"), "seconds": a.get("seconds"), "best_step": a.get("best_step"),
                     "steps": a.get("steps"), "run_dir": a.get("run_dir", ""), "note": a.get("note", "")})
    return rows


def write_results(study: optuna.Study, s: SweepSettings) -> None:
    """results.csv, results.md, best.yaml and importance.png, rewritten after every trial."""
    rows = result_rows(study, s.space)
    cols = list(rows[0]) if rows else ["trial", "state", "val_loss", *(p.key for p in s.space)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(s.out / "results.csv", buf.getvalue())
    best = best_trial(study)
    finished, _, _ = _counts(study)
    lines = [f"# Sweep {s.out.name}", "",
             f"{finished} of {s.trials} trials finished; sampler {s.sampler}; lowest validation loss first. "
             "`val_loss` is the best validation loss of the trial (of a pruned one: before it stopped).", "",
             "Searched: " + "; ".join(p.describe() for p in s.space) + ".", ""]
    if best is not None:
        lines += [f"Best: trial {best.number}, val loss {best.value:.4f}; `gpt2kit train --config "
                  f"{s.out / 'best.yaml'} --out RUN` trains it.", ""]
    head = ["trial", "state", "val loss", *(p.key for p in s.space), "tokens", "time (s)", "best step", "steps",
            "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["trial"], r["state"], f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "",
                 *(_fmt(r[p.key]) for p in s.space), f"{r['tokens']:,}" if r["tokens"] is not None else "",
                 _fmt(r["seconds"]), _fmt(r["best_step"]), _fmt(r["steps"]), r["note"].replace("|", "/")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    write_text_atomic(s.out / "results.md", "\n".join(lines) + "\n")
    if best is not None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        header = (f"# gpt2kit sweep {s.out}: trial {best.number} ({params}), best val loss {best.value:.4f}\n"
                  f"# gpt2kit train --config {s.out / 'best.yaml'} --out RUN  (add --train.max_steps N for a "
                  "longer run)\n")
        write_text_atomic(s.out / "best.yaml", header + trial_config(s.base, best.params).to_yaml())
    try:
        plot_importance(study, s.space, s.out / "importance.png")
    except Exception as e:  # a plot must never cost a sweep
        print(f"(importance plot skipped: {e})", file=sys.stderr)


def importances(study: optuna.Study, space: list[Param]) -> dict[str, float] | None:
    """optuna's parameter importance over the complete trials, when there are enough to say anything."""
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varying = [p.key for p in space if len({repr(t.params.get(p.key)) for t in done}) > 1]
    if len(done) < 2 or len(varying) < 2:
        return None
    try:
        return optuna.importance.get_param_importances(study, params=varying)
    except (RuntimeError, ValueError):
        return None


def plot_importance(study: optuna.Study, space: list[Param], path: Path, top: int = 3) -> Path | None:
    """Importance bars (when there are enough trials) and validation loss against the `top` most important
    parameters; pruned trials grey, the best a star. None when no trial has a validation loss yet."""
    from optuna.trial import TrialState

    pts = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
           if _val(t) is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    imp = importances(study, space)
    order = sorted(space, key=lambda p: -imp.get(p.key, -1.0)) if imp else list(space)
    shown = order[:top]
    panels = len(shown) + (imp is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
    axes = list(axes[0])
    if imp is not None:
        ax = axes.pop(0)
        names = [p.key for p in order][::-1]
        ax.barh(names, [imp.get(n, 0.0) for n in names], color="C0")
        ax.set(title="importance (optuna)", xlabel="share of the val-loss variance")
    best = best_trial(study)
    # A diverged trial (val loss in the hundreds) would flatten the differences that matter: such outliers,
    # far above the complete trials, sit on the top edge of the axis as triangles.
    done = [_val(t) for t in pts if t.state == TrialState.COMPLETE]
    top_y = None
    if done:
        limit = max(done) + max(1.0, 2 * (max(done) - min(done)))
        kept = [_val(t) for t in pts if _val(t) <= limit]
        if len(kept) < len(pts):
            top_y = max(kept) + 0.1 * (max(kept) - min(kept) or 0.1)
    for ax, p in zip(axes, shown):
        for state, style in ((TrialState.COMPLETE, dict(c="C0", marker="o", label="complete")),
                             (TrialState.PRUNED, dict(c="0.6", marker="x", label="pruned"))):
            sel = [t for t in pts if t.state == state and p.key in t.params]
            for off in (False, True):
                part = [t for t in sel if (top_y is not None and _val(t) > top_y) == off]
                if part:
                    ys = [top_y if off else _val(t) for t in part]
                    kw = {**style, "marker": "^", "label": f"{style['label']} (above the axis)"} if off else style
                    ax.scatter([_xpos(p, t.params[p.key]) for t in part], ys, s=30, clip_on=False, **kw)
        if best is not None and p.key in best.params:
            ax.scatter([_xpos(p, best.params[p.key])], [best.value], c="C3", marker="*", s=160, label="best",
                       zorder=3)
        if p.kind == "loguniform":
            ax.set_xscale("log")
        elif p.kind == "int" or p.integer:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if p.kind == "choice":
            ax.set_xticks(range(len(p.values)), [_fmt(v) or "null" for v in p.values])
        title = p.key + (f" (importance {imp[p.key]:.2f})" if imp and p.key in imp else "")
        ax.set(xlabel=p.key, ylabel="best val loss", title=title)
        if top_y is not None:
            ax.set_ylim(top=top_y)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _xpos(p: Param, v: Any) -> Any:
    return p.values.index(v) if p.kind == "choice" else v


if __name__ == "__main__":
    sys.exit(_worker_main(*sys.argv[1:3]))
