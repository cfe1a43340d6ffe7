"""Checkpoints that cannot be lost, and finding a model from whatever the user points at.

Layout (CONTRACTS.md): RUN/checkpoints/step-00000100/ holds model.safetensors, config.json,
state.json, optimizer.pt, tokenizer/, MANIFEST.json (sha256 of every file) and COMPLETE, written
last. Everything is written into a temporary sibling directory, fsynced, and renamed into place,
so a crash at any moment leaves either the old state or the new one. A directory without
COMPLETE is not a checkpoint and is ignored. `latest` / `best` are small text files, not symlinks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from gpt2kit import __version__
from gpt2kit.atomic import is_disk_full, make_temp_dir, replace_dir, write_text_atomic
from gpt2kit.errors import UserError
from gpt2kit.model import GPT, GPTConfig

ARCHITECTURE = "gpt2kit.GPT"
STEP_DIR = re.compile(r"^step-(\d{8})$")
OLD_STEP_DIR = re.compile(r"^\.old-(step-\d{8})-\d+$")  # a re-save's swap, see replace_dir


# ---------------------------------------------------------------- writing


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model_files(model: GPT, directory: Path, state_dict: dict | None = None, finetune: dict | None = None
                     ) -> None:
    """model.safetensors (HF names, tied lm_head stored once) + config.json.

    state_dict: the full weights when they are not simply `model.state_dict()` (FSDP gathers them), or
    only the trained tensors of a partial fine-tune, described by `finetune` (see gpt2kit.finetune)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(sd, directory / "model.safetensors", metadata={"format": "pt", "producer": "gpt2kit"})
    meta = {"architecture": ARCHITECTURE, "gpt2kit_version": __version__, **model.config.to_dict()}
    if finetune is not None:
        meta["finetune"] = finetune
    if getattr(model, "labels", None) is not None:
        meta["classifier"] = {"labels": list(model.labels)}
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def _seal(tmp: Path, final: Path, marker: str) -> None:
    """MANIFEST.json (sha256 of every file), fsync everything, COMPLETE last, then rename into place."""
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(tmp)): _sha256(p) for p in files}
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for p in files:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    with open(tmp / "COMPLETE", "w") as f:
        f.write(marker + "\n")
        f.flush()
        os.fsync(f.fileno())
    for d in (p for p in tmp.rglob("*") if p.is_dir()):
        _fsync_dir(d)
    _fsync_dir(tmp)
    replace_dir(tmp, final)  # re-saving (e.g. a step after a resume) swaps, never deletes first
    _fsync_dir(final.parent)


def save_base(run_dir: Path, model: GPT, state_dict: dict) -> Path:
    """RUN/base/: the weights a partial fine-tune starts from, written once, atomically, with a MANIFEST."""
    final = run_dir / "base"
    tmp = make_temp_dir(run_dir, ".tmp-base-")
    try:
        save_model_files(model, tmp, state_dict)
        _seal(tmp, final, "base")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: GPT,
    state: dict[str, Any],
    optimizer_state: dict | None = None,
    tokenizer=None,
    extra_files: dict[str, str] | None = None,
    state_dict: dict | None = None,
    finetune: dict | None = None,
) -> Path:
    """Write checkpoint `step` atomically under `ckpt_root`; returns its directory.

    state: JSON-able loop state (step, tokens, best val loss, RNG states, loader position).
    extra_files: more small text files to include (e.g. config.yaml).
    """
    ckpt_root.mkdir(parents=True, exist_ok=True)
    recover_interrupted(ckpt_root)
    final = ckpt_root / f"step-{step:08d}"
    tmp = None
    try:
        tmp = make_temp_dir(ckpt_root, f".tmp-step-{step:08d}-")
        save_model_files(model, tmp, state_dict, finetune)
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _seal(tmp, final, f"step {step}")
        write_text_atomic(ckpt_root / "latest", final.name + "\n")
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_disk_full(e, ckpt_root):
            raise _disk_full(ckpt_root, final) from None
        raise
    return final


def _disk_full(ckpt_root: Path, final: Path) -> UserError:
    previous = find_checkpoint(ckpt_root.parent)
    kept = f"{previous} is intact" if previous is not None else "no earlier checkpoint exists"
    return UserError(f"no space left on the disk holding {ckpt_root} while saving {final.name} ({kept}); free some "
                     "space, then continue with --resume auto (or lower train.keep_last)")


def recover_interrupted(ckpt_root: Path) -> None:
    """Finish what a killed writer left: a re-save of the same step swaps the old directory aside
    (`.old-step-N-PID`) before moving the new one in; killed between the two renames, step-N is missing and the
    old copy - complete, verified when it was written - goes back. Once step-N is back in place the copy is
    garbage. Call this only while holding the run (the training process, under its lock)."""
    if not ckpt_root.is_dir():
        return
    for d in sorted(ckpt_root.iterdir()):
        m = OLD_STEP_DIR.match(d.name)
        if not m or not d.is_dir():
            continue
        final = ckpt_root / m.group(1)
        if not final.exists() and is_complete(d):
            os.replace(d, final)
        elif final.is_dir() and is_complete(final):
            shutil.rmtree(d, ignore_errors=True)


def update_checkpoint_state(directory: Path, changes: dict[str, Any]) -> None:
    """Update state.json of a complete checkpoint (e.g. with the final evaluation, which runs after the save):
    a sibling holding hard links to its other files (copies where the filesystem has no links) and the new
    state.json is sealed and swapped in exactly like a re-save, so a crash leaves the old state or the new."""
    state = {**json.loads((directory / "state.json").read_text()), **changes}
    tmp = make_temp_dir(directory.parent, f".tmp-{directory.name}-")
    try:
        for p in sorted(directory.rglob("*")):
            rel = p.relative_to(directory)
            if p.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
            elif str(rel) not in ("state.json", "MANIFEST.json", "COMPLETE"):
                try:
                    os.link(p, tmp / rel)
                except OSError:
                    shutil.copy2(p, tmp / rel)
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        _seal(tmp, directory, (directory / "COMPLETE").read_text().strip())
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_disk_full(e, directory.parent):
            raise _disk_full(directory.parent, directory) from None
        raise


def prune_checkpoints(ckpt_root: Path, keep_last: int, keep: set[str] = frozenset()) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, never those named in `keep` nor those the
    `latest` and `best` pointers name."""
    steps = complete_checkpoints(ckpt_root)
    if keep_last <= 0:
        return
    keep = set(keep) | {_pointer(ckpt_root / name) for name in ("latest", "best")}
    for d in steps[:-keep_last]:
        if d.name not in keep:
            # Renamed first: a prune interrupted half-way must not leave a COMPLETE dir without weights.
            trash = ckpt_root / f".trash-{d.name}-{os.getpid()}"
            os.replace(d, trash)
            shutil.rmtree(trash, ignore_errors=True)
    # Leftovers of interrupted writes and prunes are garbage by construction.
    for d in [*ckpt_root.glob(".tmp-step-*"), *ckpt_root.glob(".trash-*")]:
        shutil.rmtree(d, ignore_errors=True)
    recover_interrupted(ckpt_root)


def _pointer(path: Path) -> str:
    """The directory name a `latest` / `best` pointer file holds ('' when there is none or it is unreadable)."""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- reading


def is_complete(directory: Path) -> bool:
    return (directory / "COMPLETE").is_file()


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint directories under `ckpt_root`, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [d for d in ckpt_root.iterdir() if d.is_dir() and STEP_DIR.match(d.name) and is_complete(d)]
    return sorted(found, key=lambda d: d.name)


def find_checkpoint(run_dir: Path, which: str = "latest") -> Path | None:
    """The checkpoint named by RUN/checkpoints/{which}, else the newest complete one."""
    root = run_dir / "checkpoints"
    pointer = root / which
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if target.is_dir() and is_complete(target):
            return target
    if which == "best":
        return None
    found = complete_checkpoints(root)
    return found[-1] if found else None


def verify_checkpoint(directory: Path) -> None:
    """Check COMPLETE and every sha256 in MANIFEST.json; a UserError names what is wrong."""
    if not is_complete(directory):
        raise UserError(f"{directory} is not a complete checkpoint (no COMPLETE marker); "
                        "it was interrupted while being written - use an earlier checkpoint")
    try:
        manifest = json.loads((directory / "MANIFEST.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"checkpoint {directory} has no readable MANIFEST.json; it is damaged - "
                        "use an earlier checkpoint") from None
    for name, digest in manifest.items():
        path = directory / name
        if not path.is_file() or _sha256(path) != digest:
            raise UserError(f"checkpoint {directory} is corrupt ({name} does not match its sha256 in "
                            "MANIFEST.json); delete it or use an earlier checkpoint")


def is_gpt2kit_model_dir(directory: Path) -> bool:
    try:
        return json.loads((directory / "config.json").read_text()).get("architecture") == ARCHITECTURE
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_gpt2kit_dir(directory: Path, merge: bool = True) -> GPT:
    """A model from a gpt2kit checkpoint (or any directory with our config.json + model.safetensors).

    A partial fine-tune (freeze/LoRA) is rebuilt from its run's base weights; `merge=False` keeps LoRA
    adapters as separate trainable layers (to resume training) instead of folding them in."""
    from gpt2kit.hf import empty_model, load_safetensors, load_state

    if (directory / "MANIFEST.json").exists():
        verify_checkpoint(directory)
    meta = json.loads((directory / "config.json").read_text())
    meta.pop("architecture", None)
    meta.pop("gpt2kit_version", None)
    finetune = meta.pop("finetune", None)
    labels = meta.pop("classifier", {}).get("labels")
    config = GPTConfig.from_dict(meta)
    sd = load_safetensors(directory / "model.safetensors")
    if finetune is not None:
        from gpt2kit.finetune import load_partial

        return load_partial(directory, finetune, sd, merge=merge).eval()
    return load_state(empty_model(config, labels), sd, str(directory)).eval()


def resolve_local(src: Path) -> Path:
    """Turn a run directory into its best (else latest) checkpoint; other directories are returned as is."""
    if (src / "checkpoints").is_dir():
        ckpt = find_checkpoint(src, "best") or find_checkpoint(src, "latest")
        if ckpt is None:
            raise UserError(f"run directory {src} has no complete checkpoint yet")
        return ckpt
    return src


def _hub_download(name: str) -> Path:
    """A local snapshot of hub model `name`, or a UserError that suggests a local path."""
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.txt", "merges.txt", "vocab.json", "pytorch_model.bin"]
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        why = "the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)" if offline else f"{type(e).__name__}"
        raise UserError(
            f"{name!r} is not a local path and could not be fetched from the Hugging Face Hub ({why}); "
            "pass a local directory: a gpt2kit run or checkpoint, or a saved Hugging Face GPT-2 model"
        ) from None


def model_dir(src: str | os.PathLike) -> Path:
    """The directory holding the model weights for any `--model` / `--init` source."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{src} is a file; pass a directory (a run, a checkpoint, or a Hugging Face model)")
        return resolve_local(path)
    text = str(src)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise UserError(f"model path not found: {src}; check the path")
    return _hub_download(text)


def load_model(src: str | os.PathLike, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> GPT:
    """A GPT (eval mode) from a run dir, checkpoint dir, Hugging Face GPT-2 dir or reachable hub name."""
    from gpt2kit.hf import load_hf_dir

    directory = model_dir(src)
    if is_gpt2kit_model_dir(directory):
        model = load_gpt2kit_dir(directory)
    elif (directory / "config.json").is_file():
        model = load_hf_dir(directory)
    else:
        raise UserError(f"{src} is not a GPT-2 checkpoint (no config.json); pass a run directory, "
                        "a checkpoint directory, or a Hugging Face GPT-2 model directory")
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def tokenizer_source(src: str | os.PathLike) -> str | None:
    """The directory holding the tokenizer that goes with model source `src`, if there is one."""
    directory = model_dir(src)
    for candidate in (directory / "tokenizer", directory, directory.parent.parent / "tokenizer"):
        if (candidate / "tokenizer.json").is_file() or (candidate / "vocab.json").is_file():
            return str(candidate)
    return None


def run_config(src: str | os.PathLike):
    """The TrainConfig a local run or checkpoint was trained with (its config.yaml), or None (e.g. an HF dir)."""
    from gpt2kit.config import build_config, load_yaml

    path = Path(src).expanduser()
    if not path.is_dir():
        return None
    path = resolve_local(path)
    for candidate in (path / "config.yaml", path.parent.parent / "config.yaml"):
        if candidate.is_file():
            try:
                return build_config(load_yaml(candidate))
            except UserError:
                return None  # written by another version: the model still loads, without its training config
    return None


def load_checkpoint_state(directory: Path, required: tuple[str, ...] = ()) -> tuple[dict, dict | None]:
    """(state.json, optimizer state or None) of a verified checkpoint, loaded safely; a UserError names the file
    when state.json is unreadable or lacks one of the `required` keys."""
    verify_checkpoint(directory)
    path = directory / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); the checkpoint is damaged - "
                        "use an earlier checkpoint") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{path} lacks {', '.join(map(repr, missing))} (damaged, or written by another version); "
                        "use an earlier checkpoint")
    opt = None
    if (directory / "optimizer.pt").exists():
        try:
            opt = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"cannot load {directory / 'optimizer.pt'} safely ({type(e).__name__}); "
                            "the checkpoint is damaged or was not written by gpt2kit") from None
    return state, opt


def choose_checkpoint(run_dir: Path, required: tuple[str, ...] = (), warn=None
                      ) -> tuple[Path, dict, dict | None] | None:
    """(checkpoint, state, optimizer state) to resume run `run_dir` from: the newest complete one, falling back past any that is damaged (MANIFEST mismatch, missing or unreadable files, no
    COMPLETE) with a `warn(message)` naming what was wrong. None when the run has no checkpoint at all; a UserError
    when it has some but none is usable (starting over would silently throw the run away)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    steps = sorted((d for d in root.iterdir() if d.is_dir() and STEP_DIR.match(d.name)), key=lambda d: d.name)
    complete = [d for d in steps if is_complete(d)]
    problems: list[tuple[str, str]] = []  # (step dir name or '', what is wrong)
    # Newest complete first, even when `latest` names an older one: a kill between a save's final rename and
    # the pointer's update leaves a whole, newer checkpoint that the pointer has not caught up with (an older
    # resume on purpose moves newer checkpoints aside first, so none is ever ahead of the run by design).
    order = complete[::-1]
    named = _pointer(root / "latest")
    if (root / "latest").exists():
        target = root / named if STEP_DIR.match(named) else None
        if target is None or not target.is_dir():  # a step dir without COMPLETE is reported below
            problems.append((named if STEP_DIR.match(named) else "",
                             f"{root / 'latest'} names {named[:60]!r}, which is not a checkpoint"))
    problems += [(d.name, f"{d} has no COMPLETE marker (interrupted or damaged)") for d in steps if d not in complete]
    for ckpt in order:
        try:
            state, opt = load_checkpoint_state(ckpt, required)
        except UserError as e:
            problems.append((ckpt.name, str(e)))
            continue
        for name, what in problems:
            if warn is not None and (not name or name > ckpt.name):
                warn(f"warning: {what}; resuming from {ckpt.name}, the newest usable checkpoint")
        return ckpt, state, opt
    if not steps and not problems:
        return None
    why = "; ".join(what for _, what in problems) or "no checkpoint directory is complete"
    raise UserError(f"no usable checkpoint in {root} ({why}); nothing was changed - resume from a checkpoint "
                    "elsewhere with --resume DIR, or start over with --overwrite")
