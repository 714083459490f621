"""Downstream evaluation: ``python -m geomed_mim.evaluate --config configs/evaluate/X.yaml``
(also the ``geomed-evaluate`` console script).

Probes (frozen encoder, linear or attentive head) and fine-tunes (UNETR decoder) every
``--encoders`` entry (pretraining checkpoints, export folders, ``scratch``) at every ``--budgets``
fraction of the training scenes with every ``--seeds`` seed, beside the ``--baselines`` (logistic
regression on the raw bands, a thresholded spectral index, a CT HU window), and writes
``results.csv``, ``results.md`` (mean ± std) and ``score_vs_budget.png`` into ``--output``. YAML and
flags as in the training commands (``--config``, ``--data`` with ``class_path``/``init_args``,
dotted overrides). A user mistake is one line naming the flag, exit status 2.

Scene classification when ``--data.class_path`` (in the config) is a torchgeo dataset class, e.g.
``--config configs/evaluate/eurosat_ms.yaml --data.root ROOT``: k-NN, linear and attentive
probes on frozen features and fine-tuning, beside a band-statistics baseline, at every
``--fractions`` fraction of the training split (see :mod:`geomed_mim.evaluation.scene_protocol`).

Semantic segmentation when ``--data.class_path`` is a torchgeo segmentation dataset (its samples
carry a ``mask``), e.g. ``--config configs/evaluate/cloud_cover.yaml --data.root ROOT``:
per-pixel logistic regression beside probes on each encoder's patch tokens, scored by the test
split's mIoU, pixel accuracy and per-class IoU (see :mod:`geomed_mim.evaluation.tgseg`).

Flood-water segmentation on Sen1Floods11's hand-labeled chips when ``--data.class_path`` is
``geomed_mim.evaluation.floods.Sen1Floods11``, e.g. ``--config configs/evaluate/sen1floods11.yaml
--data.root ROOT`` (``sen1floods11_s1.yaml`` for the Sentinel-1 chips): NDWI > t (S1: VV < t)
beside probes on each encoder's patch tokens, scored by the water IoU of the test split and of
the Bolivia hold-out (see :mod:`geomed_mim.evaluation.floods`).

CT segmentation on a Medical Segmentation Decathlon task folder when ``--data.class_path`` is
``geomed_mim.evaluation.msd.MSDTask``, e.g. ``--config configs/evaluate/msd_spleen.yaml
--data.root ROOT``: the task's labeled cases built into a CT store inside ``--output``, a
seeded share of them held out, then the segmentation protocol on it (see
:mod:`geomed_mim.evaluation.msd`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import LightningDataModule

from geomed_mim.cli import quiet_known_noise
from geomed_mim.evaluation.floods import CLASS_PATH as FLOODS
from geomed_mim.evaluation.floods import FloodData, FloodProtocol, evaluate_floods
from geomed_mim.evaluation.msd import CLASS_PATH as MSD
from geomed_mim.evaluation.msd import MSDData, MSDProtocol, prepare_msd
from geomed_mim.evaluation.protocol import (
    Protocol,
    baseline_rows,
    check_protocol,
    deep_rows,
    first_datamodule,
    write_report,
)
from geomed_mim.evaluation.scene_data import SceneData
from geomed_mim.evaluation.scene_protocol import SceneProtocol, evaluate_scenes
from geomed_mim.evaluation.tgseg import SegData, SegProtocol, evaluate_segmentation, yields_masks
from geomed_mim.usage import UsageError, UserErrors, one_line


class _Parser(ArgumentParser):
    """jsonargparse's errors as one usage line, naming the flag (``--steps``, not the
    parser's ``key "steps"``)."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        message = re.sub(r'Parser key "([^"]+)"', r"--\1", one_line(message))
        raise UsageError(f"{message}; see python -m geomed_mim.evaluate --help")


def parser() -> ArgumentParser:
    p = _Parser(
        prog="python -m geomed_mim.evaluate",
        description=__doc__.split("\n\n")[1],
        allow_abbrev=False,  # --step is a mistake, not --steps
    )
    p.add_argument("--config", action=ActionConfigFile, help="a YAML task config")
    # the data module as in the training commands (class_path/init_args, dotted overrides);
    # kept as its config, since the protocol builds one per budget and seed
    p.add_subclass_arguments(LightningDataModule, "data", required=True)
    p.add_class_arguments(Protocol, None, fail_untyped=False, skip={"data"})
    return p


def protocol_parser(protocol: type) -> ArgumentParser:
    """Scene classification (:class:`SceneProtocol`: ``--data`` names a torchgeo dataset class
    and its ``root``), torchgeo segmentation (:class:`SegProtocol`: likewise), Sen1Floods11
    (:class:`FloodProtocol`: the reader and the release's ``root``) and Decathlon tasks
    (:class:`MSDProtocol`: the task folder): the protocol dataclass's fields are the flags."""
    p = _Parser(
        prog="python -m geomed_mim.evaluate",
        description=__doc__.split("\n\n")[1],
        allow_abbrev=False,
    )
    p.add_argument("--config", action=ActionConfigFile, help="a YAML task config")
    p.add_class_arguments(protocol, None, fail_untyped=False)
    return p


def is_scene_task(args: list[str]) -> bool:
    """True when the data is a torchgeo dataset class (``torchgeo.datasets.EuroSAT``), in a
    ``--config`` file or a ``--data.class_path`` flag; the segmentation protocol otherwise.
    (:data:`DATA_PROTOCOLS` asks :func:`is_torchgeo_segmentation_task` first.)"""
    return data_class_path(args).startswith("torchgeo.")


def is_torchgeo_segmentation_task(args: list[str]) -> bool:
    """True when the data is a torchgeo segmentation dataset (its samples carry a ``mask``,
    e.g. ``torchgeo.datasets.CloudCoverDetection``), or when another torchgeo class is given
    on top of a ``--config`` naming one (the protocol then says it is no segmentation
    dataset)."""
    paths = data_class_paths(args)
    if not paths or not paths[-1].startswith("torchgeo."):
        return False
    return yields_masks(paths[-1]) or any(yields_masks(c) for c in config_class_paths(args))


def is_flood_task(args: list[str]) -> bool:
    """True when the data is the Sen1Floods11 reader (:mod:`geomed_mim.evaluation.floods`)."""
    return data_class_path(args) == FLOODS


def is_msd_task(args: list[str]) -> bool:
    """True when the data is a Decathlon task folder (:mod:`geomed_mim.evaluation.msd`)."""
    return data_class_path(args) == MSD


def data_class_path(args: list[str]) -> str:
    """The data class the arguments name last (``--config`` files and ``--data.class_path``)."""
    class_paths = data_class_paths(args)
    return class_paths[-1] if class_paths else ""


def config_class_paths(args: list[str]) -> list[str]:
    """The data classes the ``--config`` files name."""
    return data_class_paths([a for i, a in enumerate(args) if not is_class_path_flag(args, i)])


def is_class_path_flag(args: list[str], i: int) -> bool:
    """``args[i]`` is a ``--data.class_path`` flag or its value."""
    flag = args[i].partition("=")[0]
    return flag == "--data.class_path" or (i > 0 and args[i - 1] == "--data.class_path")


def data_class_paths(args: list[str]) -> list[str]:
    """Every data class the arguments name, in order (``--config`` files and
    ``--data.class_path``)."""
    class_paths = []
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        value = value or (args[i + 1] if i + 1 < len(args) else "")
        if flag == "--data.class_path":
            class_paths.append(value)
        elif flag == "--config" and Path(value).is_file():
            try:
                data = (yaml.safe_load(Path(value).read_text()) or {}).get("data") or {}
            except (yaml.YAMLError, AttributeError):
                continue  # the parser reports it
            class_paths.append(str(data.get("class_path", "")) if isinstance(data, dict) else "")
    return class_paths


def say(line: str) -> None:
    print(line, flush=True)


def evaluate(protocol: Protocol, split: str | None = None) -> dict[str, Any]:
    """Run the whole protocol; returns the files written. ``split`` says how validation was
    held out when the data module's own description does not (a task's case split)."""
    check_protocol(protocol)
    dm = first_datamodule(protocol)
    names, split = list(dm.classes["names"]), split or dm.split_description
    rows = baseline_rows(protocol, say)
    rows += deep_rows(protocol, say)
    if not rows:
        raise RuntimeError("the protocol produced no results")
    return write_report(protocol, rows, names, split)


def evaluate_msd(p: MSDProtocol, say: Any) -> dict[str, Any]:
    """The Decathlon task built into a CT store, then the segmentation protocol on it."""
    protocol, split, config = prepare_msd(p, say)
    return {**evaluate(protocol, split), "config": config}


# the protocols whose data is a dataclass of their own: (selects it, protocol, data, run)
DATA_PROTOCOLS: tuple[tuple[Callable[[list[str]], bool], type, type, Callable[..., Any]], ...] = (
    (is_flood_task, FloodProtocol, FloodData, evaluate_floods),
    (is_torchgeo_segmentation_task, SegProtocol, SegData, evaluate_segmentation),
    (is_scene_task, SceneProtocol, SceneData, evaluate_scenes),
    (is_msd_task, MSDProtocol, MSDData, evaluate_msd),
)


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_known_noise()
    args = sys.argv[1:] if args is None else list(args)
    with UserErrors():  # an output error names --output, where the report is written
        for selects, protocol_class, data_class, run in DATA_PROTOCOLS:
            if selects(args):
                cfg = protocol_parser(protocol_class).parse_args(args).as_dict()
                cfg.pop("config", None)
                data = data_class(**cfg.pop("data"))
                files = run(protocol_class(data=data, **cfg), say)
                break
        else:  # the segmentation protocol: --data is a data module's config, kept as one
            p = parser()
            cfg = p.parse_args(args).as_dict()
            cfg.pop("config", None)
            protocol = Protocol(**cfg)
            files = evaluate(protocol)
    say("wrote " + ", ".join(str(f) for f in files.values()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
