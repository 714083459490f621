"""How a build's counters are named: the keys of each part's summary and of ``build.json``'s
``counts``, written and read back through these functions only.

A plain counter is a name (``samples_written``). A counter per reason or kind is
``<group>:<reason>`` (``excluded:cloud``, ``duplicates:near``, ``format:dicom``); a counter per
tile size is ``<name>@<size>`` (``tiles_total@64``). The keys are strings because they travel
as JSON (part summaries, the build record) and readers of ``build.json`` know them.
"""

from __future__ import annotations

from collections.abc import Mapping

# plain counters the summary reads
TILES_TOTAL = "tiles_total"
SAMPLES_WRITTEN = "samples_written"
# groups of counters per reason or kind
EXCLUDED = "excluded"  # tiles excluded, per reason
DUPLICATES = "duplicates"  # samples marked duplicates, per kind (exact, near)
FORMAT = "format"  # CT inputs, per format (nifti, dicom ...)


def reason_key(group: str, reason: str) -> str:
    """The counter of ``reason`` in ``group``: ``excluded:cloud``."""
    return f"{group}:{reason}"


def size_key(name: str, size: int) -> str:
    """The counter ``name`` of one tile size: ``tiles_total@64``."""
    return f"{name}@{size}"


def by_reason(counts: Mapping[str, int], group: str) -> dict[str, int]:
    """``group``'s counters by reason, sorted by reason: ``{"cloud": 3, "nodata": 1}``."""
    prefix = reason_key(group, "")
    return {k[len(prefix) :]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}


def by_size(counts: Mapping[str, int], name: str) -> dict[int, int]:
    """``name``'s counters by tile size: ``{64: 120, 128: 30}``."""
    prefix = size_key(name, 0)[:-1]
    return {int(k[len(prefix) :]): v for k, v in counts.items() if k.startswith(prefix)}
