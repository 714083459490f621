"""The protocol's results as files: ``results.csv`` (one row per method, budget and seed),
``results.md`` (mean ± std over seeds) and ``score_vs_budget.png`` (one line per method)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROW_KEYS = ("method", "kind", "budget", "train_units", "select_units", "seed", "step")


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std, count) over the finite values; NaN when there are none."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not v.size:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def groups(rows: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Rows by (method, budget): methods in first-seen order, budgets ascending."""
    out: dict[tuple[str, float], list[dict[str, Any]]] = {}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for row in sorted(rows, key=lambda r: (methods.index(r["method"]), r["budget"])):
        out.setdefault((row["method"], row["budget"]), []).append(row)
    return out


def write_csv(rows: list[dict[str, Any]], metrics: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, [*ROW_KEYS, *metrics], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in (*ROW_KEYS, *metrics)})


def cell(values: Sequence[float]) -> str:
    """``mean ± std``; says how many seeds gave a number when some did not (NaN: a class
    absent from target and prediction, or a diverged run)."""
    m, s, n = mean_std(values)
    if n == 0:
        return "—"
    return f"{m:.3f} ± {s:.3f}" + ("" if n == len(values) else f" ({n} of {len(values)})")


def write_markdown(
    rows: list[dict[str, Any]], metrics: list[str], title: str, notes: list[str], path: Path
) -> str:
    """The mean ± std table (sample std over seeds) as markdown; returns its text."""
    head = ["method", "budget", "train units", "select units", "seeds", *metrics]
    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for (method, budget), rs in groups(rows).items():
        units = sorted({int(r["train_units"]) for r in rs})
        select = sorted(
            {int(r["select_units"]) for r in rs if r.get("select_units") not in (None, "")}
        )
        cells = [method, f"{budget:g}", "/".join(map(str, units)),
                 "/".join(map(str, select)) or "—", str(len(rs))]  # fmt: skip
        cells += [cell([r.get(m, math.nan) for r in rs]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def write_plot(
    rows: list[dict[str, Any]],
    metrics: list[str],
    title: str,
    path: Path,
    budget_label: str = "label budget (fraction of training scenes / cases)",
) -> None:
    """Each metric (mean ± std) against the label budget, one panel per metric and one line per
    method that has it (an index baseline appears in its class's panel only)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}  # one colour per method throughout
    for ax, metric in zip(axes[0], metrics, strict=True):
        by_method: dict[str, list[tuple[float, float, float]]] = {}
        for (method, budget), rs in groups(rows).items():
            m, s, n = mean_std([r.get(metric, math.nan) for r in rs])
            if n:
                by_method.setdefault(method, []).append((budget, m, s))
        for method, points in by_method.items():
            b, m, s = (np.array(v) for v in zip(*sorted(points), strict=True))
            ax.errorbar(b, m, yerr=s, marker="o", capsize=3, label=method, color=colour[method])
        ax.set_xscale("log")
        ax.set_xlabel(budget_label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_config(config: dict[str, Any], path: Path) -> None:
    """The protocol as run, as YAML (``--config`` reads it back)."""
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
