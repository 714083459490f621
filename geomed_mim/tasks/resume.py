"""Which checkpoint ``fit`` starts from, and checkpoints given by hand that cannot work.

``fit`` defaults to ``--ckpt_path last`` so that re-running the same command after a preemption
resumes. That must never pick up *another* run's checkpoint: ``last`` resumes only a
``last*.ckpt`` in this run's checkpoint folder (``<root>/checkpoints``) whose task arguments
(model, sizes, learning rate, ``init_from``, band list, ...) equal this command's, and says so
in one line; a checkpoint of a different run there is a one-line error naming the folder and
the two ways out (``--ckpt_path null`` to start over in this root, or a new
``--trainer.default_root_dir``). Trainer settings such as ``max_epochs`` may change between the
two commands (that is how a finished run is trained further).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from geomed_mim.tasks.run_dir import shown
from geomed_mim.usage import UsageError

# task arguments that say how the task was built or what a run shows and writes, not what it
# trains: they may differ between the first command and the one that resumes it
IGNORED_HPARAMS = frozenset(
    {"_instantiator", "preview_every_n_steps", "preview_samples", "write_probabilities"}
)
FRESH_START = "--ckpt_path null"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's plain-data entries (memory-mapped: large weights stay on disk)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated file, another format, a pickle with objects in it
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path} is not a checkpoint this project wrote ({first[:120]})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UsageError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def _plain(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def hparam_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: saved → current`` for every task argument that differs (sorted by name)."""
    keys = (set(saved) | set(current)) - IGNORED_HPARAMS
    diffs = []
    for key in sorted(keys):
        a, b = saved.get(key), current.get(key)
        if _plain(a) != _plain(b):
            diffs.append(f"{key.lstrip('_')}: {_short(a)} → {_short(b)}")
    return diffs


def _short(value: Any, limit: int = 40) -> str:
    text = _plain(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def last_checkpoint(folders: Iterable[str | Path]) -> Path | None:
    """The newest ``last*.ckpt`` (``last.ckpt``, ``last-v1.ckpt``, ...) in ``folders``."""
    found = [p for folder in folders for p in Path(folder).glob("last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_resume(
    ckpt_path: str | None, folders: Iterable[str | Path], hparams: Mapping[str, Any]
) -> tuple[str | None, str]:
    """(the checkpoint ``fit`` restores or None, the one line to print about it).

    ``ckpt_path`` is what ``--ckpt_path`` says: None starts fresh, ``"last"`` resumes this run
    (see the module docstring), a path resumes that file."""
    folders = [Path(f) for f in folders]
    where = ", ".join(shown(f) for f in folders) or "(no checkpoint folder)"
    if ckpt_path is None:
        return None, f"new run: checkpoints in {where}"
    if ckpt_path != "last":
        ckpt = read_checkpoint(require_file(ckpt_path, "--ckpt_path"))
        return str(ckpt_path), f"resuming from {ckpt_path} ({position(ckpt)}), as --ckpt_path asks"
    path = last_checkpoint(folders)
    if path is None:
        return None, f"new run: checkpoints in {where}"
    ckpt = read_checkpoint(path)
    diffs = hparam_differences(ckpt.get("hyper_parameters") or {}, hparams)
    if diffs:
        raise UsageError(
            f"{shown(path.parent)} holds the checkpoint of a different run ({'; '.join(diffs[:2])}"
            f"{'; ...' if len(diffs) > 2 else ''}): give this run its own "
            f"--trainer.default_root_dir, or pass {FRESH_START} to start over in this folder"
        )
    return str(path), (
        f"resuming {shown(path)} ({position(ckpt)}): the same model and settings; "
        f"{FRESH_START} starts over"
    )


def position(ckpt: Mapping[str, Any]) -> str:
    """``step S, epoch E`` of a checkpoint, as Lightning saved them (epochs counted from 0)."""
    return f"step {int(ckpt.get('global_step', 0))}, epoch {int(ckpt.get('epoch', 0))}"


def require_file(path: str | Path, flag: str) -> Path:
    """``path`` when it is a file, else a usage error naming ``flag``."""
    if not Path(path).is_file():
        raise UsageError(
            f"{flag} {path}: no such file; give the .ckpt a run wrote "
            "(runs/<run>/checkpoints/last.ckpt)"
        )
    return Path(path)
