"""The evaluation protocol: every encoder probed and fine-tuned at every label budget with
every seed, beside the baselines, on one labeled task; results as CSV, markdown and a plot.

Stages (each a function below): :func:`check_protocol` (every user mistake before any work),
:func:`baseline_rows`, :func:`deep_rows`, :func:`write_report`. A label budget is a fraction of
the training *scenes* (RS; at least one) or cases (CT); the validation split is always whole.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomed_mim.cli import check_encoder_source
from geomed_mim.evaluation import baselines as bl
from geomed_mim.evaluation.deep import MODES, SCRATCH, DeepRun, family_modes, family_of, run_deep
from geomed_mim.evaluation.pixels import pixels, subsample
from geomed_mim.evaluation.report import mean_std, write_csv, write_markdown, write_plot
from geomed_mim.tasks.store_checks import check_data_config
from geomed_mim.usage import UsageError

MIN_SEEDS = 3


@dataclass
class Protocol:
    """One task's evaluation (the fields are the command's flags; see docs/evaluation.md)."""

    data: dict[str, Any]
    encoders: list[str] = field(default_factory=lambda: [SCRATCH])
    modes: list[str] = field(default_factory=lambda: ["probe", "finetune"])
    budgets: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: dict[str, int] = field(default_factory=lambda: {"probe": 300, "finetune": 300})
    check_every: int = 25
    select_fraction: float = 0.25
    task: dict[str, Any] = field(default_factory=dict)
    baselines: list[dict[str, Any]] = field(default_factory=list)
    pixel_limit: int = 200_000
    output: str = "runs/evaluate"
    title: str = "evaluation"
    accelerator: str = "auto"


# -- checks ---------------------------------------------------------------------------------------
def check_protocol(p: Protocol) -> None:
    """Every flag, before any work: a mistake is a :class:`UsageError` naming the flag."""
    check_data_config(p.data, "fit", labeled=True)
    check_flags(p)


def check_flags(p: Protocol) -> None:
    """The flags that need no data (seeds, budgets, modes, steps, encoders, baselines)."""
    if len(set(p.seeds)) < MIN_SEEDS:
        raise UsageError(
            f"--seeds {p.seeds}: give at least {MIN_SEEDS} distinct seeds, e.g. [0, 1, 2]"
        )
    if not p.budgets or any(not 0 < b <= 1 for b in p.budgets):
        raise UsageError(f"--budgets {p.budgets}: give fractions in (0, 1], e.g. [0.1, 1.0]")
    if is_ct(p) and any(b < 1 for b in p.budgets):
        raise UsageError(
            f"--budgets {p.budgets}: CT budgets below 1.0 are not supported; use [1.0]"
        )
    if p.encoders and not p.modes:
        raise UsageError("--modes is empty: give probe, attentive and/or finetune, or "
                         "--encoders []")  # fmt: skip
    for mode in p.modes:
        if mode not in MODES:
            raise UsageError(f"--modes: unknown mode {mode!r}; use any of {sorted(MODES)}")
        if int(p.steps.get(mode, 0)) < 1:
            raise UsageError(f"--steps.{mode}: give a number of optimizer steps >= 1")
    if p.check_every < 1:
        raise UsageError(f"--check_every {p.check_every}: give a number of steps >= 1")
    if not 0 <= p.select_fraction < 1:
        raise UsageError(f"--select_fraction {p.select_fraction}: give a share in [0, 1), "
                         "e.g. 0.25 (0: no early stopping)")  # fmt: skip
    for enc in p.encoders:
        if enc != SCRATCH:
            check_encoder_source(enc, "--encoders", "runs/<run>/checkpoints/last.ckpt")
            check_encoder_modes(enc, p.modes)
    if not p.encoders and not p.baselines:
        raise UsageError("--encoders and --baselines are both empty: nothing to evaluate")


def skipped_modes(p: Protocol) -> list[tuple[str, str]]:
    """(encoder, mode) pairs the encoder's family has no head for (a Swin encoder has no
    attentive head, a 3-D Swin no linear probe): left out of the run, and said so."""
    return [(e, m) for e in p.encoders for m in p.modes
            if m not in family_modes(family_of(e))]  # fmt: skip


def check_encoder_modes(source: str, modes: list[str]) -> None:
    """At least one ``--modes`` entry has a head for the encoder's family: one line naming the
    flags otherwise."""
    family = family_of(source)
    if not set(modes) & set(family_modes(family)):
        raise UsageError(
            f"--encoders {source}: a {family} encoder runs --modes {family_modes(family)}, "
            f"none of {modes}; add one of them"
        )


def check_baselines(p: Protocol, dm: Any) -> None:
    """Baseline kinds, index names, band names and class names against the data."""
    names = list(dm.classes["names"])
    for i, spec in enumerate(p.baselines):
        flag = f"--baselines[{i}]"
        kind = spec.get("kind")
        if kind not in bl.BASELINE_KINDS:
            raise UsageError(f"{flag}.kind {kind!r}: use one of {list(bl.BASELINE_KINDS)}")
        if (kind == "hu_window") != is_ct(p):
            raise UsageError(f"{flag}: {kind} does not fit this data; RS takes logistic_regression "
                             "and spectral_index, CT takes hu_window")  # fmt: skip
        if kind != "spectral_index":
            continue
        index, cls = spec.get("index"), spec.get("class")
        if index not in bl.INDEX_BANDS:
            raise UsageError(f"{flag}.index {index!r}: use one of {sorted(bl.INDEX_BANDS)}")
        missing = [b for b in bl.INDEX_BANDS[index] if b not in dm.bands]
        if missing:
            raise UsageError(f"{flag}.index {index}: the store has no band {missing[0]} "
                             f"(bands: {', '.join(dm.bands)}); use a store with it")  # fmt: skip
        if cls not in names:
            raise UsageError(f"{flag}.class {cls!r}: not in the class table ({', '.join(names)})")


def is_ct(p: Protocol) -> bool:
    return "CT" in str(p.data.get("class_path", "")).rsplit(".", 1)[-1]


# -- data ---------------------------------------------------------------------------------------
def datamodule(p: Protocol, budget: float, seed: int, select: bool = False) -> Any:
    """The configured data module holding ``budget`` of the training scenes (seeded), set up;
    with ``select`` (deep runs), ``--select_fraction`` of their locations held out as its
    select split (RS), which baselines do not need: they fit on the whole budget."""
    module, _, name = str(p.data["class_path"]).rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = dict(p.data.get("init_args") or {})
    if not is_ct(p):
        args.update(train_fraction=budget, subset_seed=seed, subset_unit="scene",
                    select_fraction=p.select_fraction if select else 0.0)  # fmt: skip
    dm = cls(**args)
    dm.setup("fit")
    return dm


def first_datamodule(p: Protocol) -> Any:
    """The data module at the full budget, built before any work: its refusal of a split
    option (``slab_fraction 0.9: ...``, ``holdout_margin 40: ...``) becomes one line naming
    the flag."""
    try:
        return datamodule(p, 1.0, p.seeds[0])
    except ValueError as e:
        name = str(e).split(" ", 1)[0]
        if name in SPLIT_OPTIONS:
            raise UsageError(f"--data.init_args.{e}") from None
        raise


SPLIT_OPTIONS = {"holdout_side", "holdout_fraction", "holdout_margin", "select_fraction",
                 "slab_axis", "slab_side", "slab_fraction", "slab_margin"}  # fmt: skip


def train_units(dm: Any) -> int:
    """Training scenes (RS: store arrays) or cases (CT) the data module holds."""
    ds = dm.train_dataset
    if hasattr(ds, "index"):
        return len(set(ds.index.array.tolist()))
    return len(ds.cases)


def encoder_label(encoder: str) -> str:
    """A short name: ``scratch``, the run folder of ``runs/<run>/checkpoints/x.ckpt``, or the
    export folder's name."""
    path = Path(encoder)
    if encoder == SCRATCH:
        return SCRATCH
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
        return path.parent.parent.name
    return path.stem if path.is_file() else path.name


# -- stages -------------------------------------------------------------------------------------
def baseline_rows(p: Protocol, say: Any) -> list[dict[str, Any]]:
    """Every baseline at every budget and seed (the pixels of that budget's training scenes).
    A fit is deterministic given its pixels, so seeds that draw the same scenes (always at
    budget 1.0) share one fit unless ``--pixel_limit`` subsamples them."""
    rows: list[dict[str, Any]] = []
    fits: dict[tuple, tuple[str, dict[str, float]]] = {}
    for budget in p.budgets:
        for seed in p.seeds:
            dm = datamodule(p, budget, seed)
            check_baselines(p, dm)
            if not p.baselines:
                return rows
            train, val = pixels(dm, "train"), pixels(dm, dm.val_split or "train")
            ids, names = [int(i) for i in dm.classes["ids"]], list(dm.classes["names"])
            base = {"budget": budget, "seed": seed, "train_units": train_units(dm)}
            drawn = seed if len(train.labels) > p.pixel_limit else None
            for i, spec in enumerate(p.baselines):
                key = (i, training_set(dm), drawn)
                if key not in fits:
                    fits[key] = one_baseline(spec, train, val, dm, ids, names, seed, p)
                method, scores = fits[key]
                rows.append({"method": method, "kind": "baseline", **base, **scores})
                say(f"baseline {method}  budget {budget:g}  seed {seed}: {headline(p, scores)}")
    return rows


def training_set(dm: Any) -> tuple:
    """What identifies the training samples: RS tile rows (store array, row), CT cases."""
    ds = dm.train_dataset
    if hasattr(ds, "index"):
        return tuple(zip(ds.index.array.tolist(), ds.index.tile.tolist(), strict=True))
    return tuple(str(c.case) for c in ds.cases)


def one_baseline(spec, train, val, dm, ids, names, seed, p) -> tuple[str, dict[str, float]]:
    kind = spec["kind"]
    if kind == "logistic_regression":
        fit = subsample(train, p.pixel_limit, seed)
        return "logistic regression (pixels)", bl.logistic_regression(fit, val, ids, names, seed)
    if kind == "spectral_index":
        cls = spec["class"]
        cid = ids[names.index(cls)]
        scores = bl.spectral_index(train, val, list(dm.bands), spec["index"], cid, cls)
        return f"{spec['index'].upper()} > t ({cls})", scores
    return "HU window (per organ)", bl.hu_window(train, val, ids, names)


def deep_rows(p: Protocol, say: Any) -> list[dict[str, Any]]:
    """Every encoder × mode × budget × seed, trained and scored."""
    skipped = skipped_modes(p)
    for e, m in skipped:
        say(f"{encoder_label(e)} / {m}: skipped, a {family_of(e)} encoder has no {m} head")
    plan = [DeepRun(e, m, b, s, int(p.steps[m]), p.check_every)
            for e in p.encoders for m in p.modes if (e, m) not in skipped
            for b in p.budgets for s in p.seeds]  # fmt: skip
    rows = []
    for k, run in enumerate(plan, 1):
        start = time.perf_counter()
        dm = datamodule(p, run.budget, run.seed, select=True)
        scores = run_deep(run, dm, p.task, p.accelerator)
        method = f"{encoder_label(run.encoder)} / {run.mode}"
        rows.append({"method": method, "kind": run.mode, "budget": run.budget, "seed": run.seed,
                     "train_units": train_units(dm),
                     "select_units": getattr(dm, "select_locations", 0), **scores})  # fmt: skip
        say(f"[{k}/{len(plan)}] {method}  budget {run.budget:g}  seed {run.seed}: "
            f"{headline(p, scores)}  step {scores['step']}  "
            f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
    return rows


# -- metrics and report --------------------------------------------------------------------------
def metric_columns(p: Protocol, class_names: list[str]) -> list[str]:
    """RS: mIoU, then the IoU of each spectral-index class; CT: each organ's Dice and their
    mean (background left out)."""
    if is_ct(p):
        organs = [n for n in class_names[1:]]
        return ["mean_organ_dice", *[f"dice_{n}" for n in organs]]
    index_classes = [s["class"] for s in p.baselines if s.get("kind") == "spectral_index"]
    return ["miou", *[f"iou_{c}" for c in dict.fromkeys(index_classes)]]


def add_mean_organ_dice(rows: list[dict[str, Any]], class_names: list[str]) -> None:
    """``mean_organ_dice``: mean of the organs' Dice (every method alike; NaN-skipping)."""
    for row in rows:
        m, _, n = mean_std([row.get(f"dice_{c}", math.nan) for c in class_names[1:]])
        row["mean_organ_dice"] = m if n else math.nan


def headline(p: Protocol, scores: dict[str, float]) -> str:
    """The progress line's scores: the table's columns this run has."""
    names = [k.removeprefix("dice_") for k in scores if k.startswith("dice_")]
    organs = [n for n in names if n != "background"]  # metric_columns skips the first name
    keys = [k for k in metric_columns(p, ["background", *organs]) if k in scores]
    return "  ".join(f"{k} {scores[k]:.3f}" for k in keys) or "no score"


def write_report(
    p: Protocol, rows: list[dict[str, Any]], class_names: list[str], split: str
) -> dict[str, Path]:
    """The three files; ``split`` says how validation was separated from training."""
    out = Path(p.output)
    out.mkdir(parents=True, exist_ok=True)
    if is_ct(p):
        add_mean_organ_dice(rows, class_names)
    metrics = metric_columns(p, class_names)
    files = {"csv": out / "results.csv", "markdown": out / "results.md",
             "plot": out / "score_vs_budget.png"}  # fmt: skip
    write_csv(rows, [*metrics, "accuracy", "threshold"], files["csv"])
    write_markdown(rows, metrics, p.title, report_notes(p, split), files["markdown"])
    write_plot(rows, metrics, p.title, files["plot"])
    return files


def report_notes(p: Protocol, split: str) -> list[str]:
    """What the table's numbers mean: the split, the seeds, the budget unit, the training."""
    unit = "cases" if is_ct(p) else "scenes"
    steps = ", ".join(f"{m} {int(p.steps[m])}" for m in p.modes)
    select = (
        f"the state with the best mIoU on the held-out training locations (`select units`: "
        f"{p.select_fraction:g} of the budget's locations, every date; checked every "
        f"{p.check_every} steps), or the last state where none is held out (`select units` 0)"
        if not is_ct(p) and p.select_fraction > 0
        else "the last state (no held-out selection)"
    )
    skipped = "; ".join(f"{encoder_label(e)} / {m}" for e, m in skipped_modes(p))
    return [
        f"Validation: {split}. Mean ± sample std over seeds {p.seeds}; budget = fraction of "
        f"the training {unit}.",
        f"Deep runs: {steps} optimizer steps at every budget; scored with {select}.",
        *([f"Not run (no such head for the encoder's family): {skipped}."] if skipped else []),
    ]
