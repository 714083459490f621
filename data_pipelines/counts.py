"""A build's counters: typed keys in memory, flat string keys in JSON.

In memory a counter is a :class:`Count`: a name, and for a counter per reason or kind a
``str`` detail (``Count(EXCLUDED, "cloud")``), for a counter per tile size an ``int`` detail
(``Count(TILES_TOTAL, 64)``). :class:`BuildCounts` holds them and reads them back by their
fields (:meth:`~BuildCounts.by_reason`, :meth:`~BuildCounts.by_size`,
:meth:`~BuildCounts.total`).

At the JSON boundary only (each part's fragment summary, ``build.json``'s ``counts``),
:meth:`BuildCounts.to_json` / :meth:`BuildCounts.from_json` write and read the flat string
keys readers of ``build.json`` know: a plain counter is its name (``samples_written``), a
counter per reason or kind ``<name>:<reason>`` (``excluded:cloud``, ``duplicates:near``,
``format:dicom``), a counter per tile size ``<name>@<size>`` (``tiles_total@64``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple

# plain counters (some also per tile size)
SCENES_READ = "scenes_read"
SCENES_WITHOUT_CLOUD_MASK = "scenes_without_cloud_mask"  # their clouds were not checked
SCENES_SMALLER_THAN_TILE = "scenes_smaller_than_tile"
TILES_TOTAL = "tiles_total"  # tiles cut (also per tile size)
SAMPLES_WRITTEN = "samples_written"  # (also per tile size for scenes)
SAMPLES_UNIQUE = "samples_unique"  # kept tiles that are no duplicate
VOLUMES_READ = "volumes_read"
VOXELS_WRITTEN = "voxels_written"
LABELS_WRITTEN = "labels_written"
VOLUMES_WITH_CLIPPED_HU = "volumes_with_clipped_hu"
VOLUMES_GANTRY_TILT_CORRECTED = "volumes_gantry_tilt_corrected"
VOLUMES_UNEVEN_SLICES_RESAMPLED = "volumes_uneven_slices_resampled"
# counters per reason or kind
EXCLUDED = "excluded"  # tiles excluded, per reason
DUPLICATES = "duplicates"  # samples marked duplicates, per kind (exact, near)
FORMAT = "format"  # CT inputs, per format (nifti, dicom ...)
EXACT, NEAR = "exact", "near"  # the kinds of DUPLICATES

_REASON_SEP, _SIZE_SEP = ":", "@"


def units_done(unit: str) -> str:
    """The counter of the build's inputs (``unit``: scene, case ...) finished: ``scenes_done``."""
    return f"{unit}s_done"


def units_quarantined(unit: str) -> str:
    """The counter of the build's inputs quarantined: ``scenes_quarantined``."""
    return f"{unit}s_quarantined"


class Count(NamedTuple):
    """One counter's key: ``name``, and a reason/kind (``str``) or tile size (``int``)."""

    name: str
    detail: str | int | None = None

    def encode(self) -> str:
        """The flat key in JSON: ``samples_written``, ``excluded:cloud``, ``tiles_total@64``."""
        if self.detail is None:
            return self.name
        sep = _REASON_SEP if isinstance(self.detail, str) else _SIZE_SEP
        return f"{self.name}{sep}{self.detail}"

    @classmethod
    def decode(cls, key: str) -> Count:
        """The key a flat JSON key stands for (the inverse of :meth:`encode`)."""
        name, sep, reason = key.partition(_REASON_SEP)
        if sep:
            return cls(name, reason)
        name, sep, size = key.rpartition(_SIZE_SEP)
        if sep and size.isdigit():
            return cls(name, int(size))
        return cls(key)


class BuildCounts(Counter):
    """A build's (or one part's) counters by :class:`Count`.

    Looking a counter up by its flat JSON key (``counts["parts_done"]``) reads the same
    counter as its :class:`Count`; the keys held are always typed.
    """

    def __missing__(self, key: object) -> int:
        if isinstance(key, str):
            return dict.get(self, Count.decode(key), 0)
        return 0

    def get(self, key: object, default: object = None) -> object:  # type: ignore[override]
        return super().get(Count.decode(key) if isinstance(key, str) else key, default)

    def total(self, name: str | None = None) -> int:  # type: ignore[override]
        """The plain counter ``name`` (0 when never counted); without a name, all counts."""
        if name is None:
            return int(sum(self.values()))
        return int(dict.get(self, Count(name), 0))

    def by_reason(self, name: str) -> dict[str, int]:
        """``name``'s counters by reason, sorted by reason: ``{"cloud": 3, "nodata": 1}``."""
        return dict(
            sorted((k.detail, v) for k, v in self.items() if k.name == name and _is_reason(k))
        )

    def by_size(self, name: str) -> dict[int, int]:
        """``name``'s counters by tile size, sorted by size: ``{64: 120, 128: 30}``."""
        return dict(
            sorted((k.detail, v) for k, v in self.items() if k.name == name and _is_size(k))
        )

    def to_json(self) -> dict[str, int]:
        """The flat JSON form, sorted by key: ``{"excluded:cloud": 3, "tiles_total@64": 9}``."""
        return {k: v for k, v in sorted((key.encode(), int(v)) for key, v in self.items())}

    @classmethod
    def from_json(cls, counts: Mapping[str | Count, int]) -> BuildCounts:
        """The counters of a flat JSON form (a fragment's, ``build.json``'s, or an older
        build's: the format never changed). A key already a :class:`Count` is taken as is, so
        a task or ``finalize`` may hand its counts back in either form."""
        return cls({k if isinstance(k, Count) else Count.decode(k): v for k, v in counts.items()})


def _is_reason(key: Count) -> bool:
    return isinstance(key.detail, str)


def _is_size(key: Count) -> bool:
    return isinstance(key.detail, int)
