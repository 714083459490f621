"""Class tables of segmentation stores, shared by the RS and CT builds and the loaders.

A class table names the class ids, the value that marks pixels to ignore in loss and metrics,
and optionally which ids of the raw label maps become each class (a remap done at build time).
It is read from YAML/JSON (``--classes``) and recorded as the store's ``classes`` attribute.

**Stored values.** Label arrays are unsigned: uint8 when every class id (and an ignore index
that fits) is at most 255, else uint16. The ignore index is stored as written in the table when
it fits that dtype (0, 255, 1000 ...); an ignore index that does not fit (negative, such as the
-1 of many flood and land-cover sets, or above 65535) is stored as the dtype's largest value
(255 or 65535), which is never a class id. The ``classes`` attribute records the value actually
stored as ``ignore_index`` (what loss, metrics and predictions use) and, when it differs, the
table's own value as ``source_ignore_index``. Every value of a label map that is not a class id
(the ignore index, nodata, ids the table leaves out) is stored as the ignore index.

Class ids are the model's output channels, so they must be in [0, 65534]; a table that cannot be
honoured (negative or too large ids, an ignore index equal to a class id, a source id mapped
twice) is refused when it is read, before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from data_pipelines.errors import LabelError

DEFAULT_IGNORE_INDEX = 255
MAX_CLASS_ID = 65534  # label arrays are at most uint16, and one value is kept for ignoring


@dataclass(frozen=True)
class ClassTable:
    """Class ids and names, and the id that marks pixels to ignore in loss and metrics."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    ignore_index: int = DEFAULT_IGNORE_INDEX
    colors: tuple[tuple[int, int, int], ...] = field(default=())
    # optional, per class: the ids in the *source* label maps that become this class (e.g.
    # TotalSegmentator kidney_right 2 and kidney_left 3 -> one "kidney"); empty: ids pass as is
    source_ids: tuple[tuple[int, ...], ...] = field(default=())

    @property
    def label_dtype(self) -> np.dtype:
        """The dtype of stored label arrays: uint8 when every stored value fits, else uint16."""
        top = max(self.ids)
        if self._ignore_fits:
            top = max(top, self.ignore_index)
        else:  # the ignore index takes the dtype's largest value, which must stay free
            top += 1
        return np.dtype(np.uint8 if top <= 255 else np.uint16)

    @property
    def _ignore_fits(self) -> bool:
        return 0 <= self.ignore_index <= np.iinfo(np.uint16).max

    @property
    def stored_ignore_index(self) -> int:
        """The value stored for ignored pixels (the table's own when it fits the dtype)."""
        if self._ignore_fits:
            return self.ignore_index
        return int(np.iinfo(self.label_dtype).max)

    def to_attrs(self) -> dict[str, Any]:
        """The ``classes`` store attribute: ``ignore_index`` is the value actually stored."""
        attrs: dict[str, Any] = {
            "ids": list(self.ids),
            "names": list(self.names),
            "ignore_index": self.stored_ignore_index,
            "colors": [list(c) for c in self.colors],
        }
        if self.stored_ignore_index != self.ignore_index:
            attrs["source_ignore_index"] = self.ignore_index
        if self.source_ids:
            attrs["source_ids"] = [list(s) for s in self.source_ids]
        return attrs

    def remap(self, labels: np.ndarray) -> np.ndarray:
        """Label-map values (any integer dtype; float from nearest resampling) -> stored class
        ids in ``label_dtype``; every value that is not a class -> ``stored_ignore_index``."""
        values = np.asarray(labels)
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values)
        values = values.astype(np.int64)
        pairs = sorted(
            (s, c)
            for c, src in zip(
                self.ids, self.source_ids or tuple((i,) for i in self.ids), strict=True
            )
            for s in src
        )
        sources = np.array([s for s, _ in pairs], dtype=np.int64)
        targets = np.array([c for _, c in pairs], dtype=np.int64)
        pos = np.clip(np.searchsorted(sources, values), 0, len(sources) - 1)
        hit = sources[pos] == values
        out = np.where(hit, targets[pos], self.stored_ignore_index)
        return out.astype(self.label_dtype)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> ClassTable:
        """The table back from its ``classes`` attribute (with the table's own ignore index)."""
        ignore = attrs.get("source_ignore_index", attrs.get("ignore_index", DEFAULT_IGNORE_INDEX))
        return cls(
            ids=tuple(int(i) for i in attrs["ids"]),
            names=tuple(attrs["names"]),
            ignore_index=int(ignore),
            colors=tuple(tuple(c) for c in attrs.get("colors", [])),
            source_ids=tuple(tuple(int(v) for v in s) for s in attrs.get("source_ids", [])),
        )


def load_class_table(path: str | Path) -> ClassTable:
    """Read a class table: YAML/JSON with ``ignore_index`` and
    ``classes: [{id: 1, name: cultivated, color: [r, g, b]}, ...]``.

    A class may list ``source_ids: [2, 3]``: the ids of the raw label maps that become it (a
    remap done at build time; every other raw id becomes ``ignore_index``). Without any
    ``source_ids`` the raw ids are the class ids."""
    p = Path(path)
    if not p.is_file():
        raise LabelError(f"--classes: {p} does not exist")
    raw = (
        yaml.safe_load(p.read_text())
        if p.suffix in (".yaml", ".yml")
        else json.loads(p.read_text())
    )
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), list) or not raw["classes"]:
        raise LabelError(f"--classes: {p} needs a non-empty 'classes' list of {{id, name}}")
    ids, names, colors, sources = [], [], [], []
    for i, c in enumerate(raw["classes"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise LabelError(f"--classes: {p}: classes[{i}] needs 'id' and 'name'")
        ids.append(_integer(c["id"], p, f"classes[{i}].id"))
        names.append(str(c["name"]))
        if "color" in c:
            colors.append(tuple(int(v) for v in c["color"]))
        if "source_ids" in c:
            src = c["source_ids"]
            src = src if isinstance(src, list) else [src]
            sources.append(tuple(_integer(v, p, f"classes[{i}].source_ids") for v in src))
    ignore = _integer(raw.get("ignore_index", DEFAULT_IGNORE_INDEX), p, "ignore_index")
    check_ids(p, ids, ignore, sources)
    return ClassTable(
        tuple(ids),
        tuple(names),
        ignore,
        tuple(colors) if len(colors) == len(ids) else (),
        tuple(sources),
    )


def _integer(value: Any, path: Path, what: str) -> int:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not float(value).is_integer():
        raise LabelError(f"--classes: {path}: {what} must be an integer (got {value!r})")
    return int(value)


def check_ids(path: Path, ids: list[int], ignore: int, sources: list[tuple[int, ...]]) -> None:
    """LabelError (one line) for a table the store and the model cannot honour."""
    if len(set(ids)) != len(ids):
        raise LabelError(f"--classes: {path}: duplicate class ids")
    bad = [i for i in ids if not 0 <= i <= MAX_CLASS_ID]
    if bad:
        raise LabelError(
            f"--classes: {path}: class id {bad[0]} is outside [0, {MAX_CLASS_ID}] (class ids "
            f"are the model's output channels and are stored as uint8/uint16); renumber the "
            f"classes and map the label map's values to them with source_ids"
        )
    if ignore in ids:
        raise LabelError(f"--classes: {path}: ignore_index {ignore} is also a class id")
    if sources and len(sources) != len(ids):
        raise LabelError(f"--classes: {path}: give source_ids for every class or for none")
    flat = [v for s in sources for v in s]
    if len(set(flat)) != len(flat):
        raise LabelError(f"--classes: {path}: a source id is mapped to two classes")
    if ignore in flat:
        raise LabelError(f"--classes: {path}: ignore_index {ignore} is also a source id of a class")
