"""Class tables of segmentation stores, shared by the RS and CT builds and the loaders.

A class table names the class ids, the id that marks pixels to ignore in loss and metrics, and
optionally which ids of the raw label maps become each class (a remap done at build time). It is
read from YAML/JSON (``--classes``) and recorded as the store's ``classes`` attribute.
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

    def to_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "ids": list(self.ids),
            "names": list(self.names),
            "ignore_index": self.ignore_index,
            "colors": [list(c) for c in self.colors],
        }
        if self.source_ids:
            attrs["source_ids"] = [list(s) for s in self.source_ids]
        return attrs

    def lookup_table(self, max_source_id: int) -> np.ndarray:
        """``lut[source id] -> class id`` for ids 0..max_source_id; unknown ids -> ignore_index."""
        lut = np.full(max(max_source_id, *self.ids) + 1, self.ignore_index, dtype=np.int64)
        sources = self.source_ids or tuple((i,) for i in self.ids)
        for class_id, src in zip(self.ids, sources, strict=True):
            for s in src:
                if s <= max_source_id:
                    lut[s] = class_id
        return lut

    def remap(self, labels: np.ndarray) -> np.ndarray:
        """Source label ids -> class ids (int64); ids not in the table -> ignore_index."""
        ids = np.rint(labels).astype(np.int64)  # resampled label maps arrive as float
        if ids.size == 0:
            return ids
        if ids.min() < 0:
            raise LabelError(f"negative label id {int(ids.min())}")
        return self.lookup_table(int(ids.max()))[ids]

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> ClassTable:
        return cls(
            ids=tuple(int(i) for i in attrs["ids"]),
            names=tuple(attrs["names"]),
            ignore_index=int(attrs.get("ignore_index", DEFAULT_IGNORE_INDEX)),
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
        ids.append(int(c["id"]))
        names.append(str(c["name"]))
        if "color" in c:
            colors.append(tuple(int(v) for v in c["color"]))
        if "source_ids" in c:
            src = c["source_ids"]
            sources.append(tuple(int(v) for v in (src if isinstance(src, list) else [src])))
    if len(set(ids)) != len(ids):
        raise LabelError(f"--classes: {p}: duplicate class ids")
    ignore = int(raw.get("ignore_index", DEFAULT_IGNORE_INDEX))
    if ignore in ids:
        raise LabelError(f"--classes: {p}: ignore_index {ignore} is also a class id")
    if sources and len(sources) != len(ids):
        raise LabelError(f"--classes: {p}: give source_ids for every class or for none")
    flat = [v for s in sources for v in s]
    if len(set(flat)) != len(flat):
        raise LabelError(f"--classes: {p}: a source id is mapped to two classes")
    return ClassTable(
        tuple(ids),
        tuple(names),
        ignore,
        tuple(colors) if len(colors) == len(ids) else (),
        tuple(sources),
    )
