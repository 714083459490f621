"""Class tables: what a table's ignore index becomes in the store, the remap of label values of
any integer type, and tables that cannot be honoured refused before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_pipelines.classes import ClassTable, load_class_table
from geomed_mim.build_dataset import main


def _table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("ids", "ignore", "dtype", "stored"),
    [
        ((0, 1), -1, np.uint8, 255),  # the flood / land-cover convention
        ((1, 2, 3), 0, np.uint8, 0),  # no-data 0 below the class ids: kept as is
        ((0, 1), 255, np.uint8, 255),
        ((0, 255), -1, np.uint16, 65535),  # 255 is a class: the ignore needs uint16
        ((0, 1), 1000, np.uint16, 1000),  # fits uint16: kept as is
        ((0, 1), -32768, np.uint8, 255),
    ],
)
def test_stored_ignore_index_and_dtype(ids, ignore, dtype, stored) -> None:
    table = ClassTable(ids=ids, names=tuple(f"c{i}" for i in ids), ignore_index=ignore)
    assert table.label_dtype == np.dtype(dtype)
    assert table.stored_ignore_index == stored
    attrs = table.to_attrs()
    assert attrs["ignore_index"] == stored  # the value the store actually holds
    assert attrs.get("source_ignore_index") == (None if stored == ignore else ignore)
    assert ClassTable.from_attrs(attrs) == table


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "uint16", "float32"])
def test_remap_label_values_of_any_type(dtype: str) -> None:
    table = ClassTable(ids=(0, 1, 7), names=("a", "b", "c"), ignore_index=-1)
    raw = np.array([0, 1, 7, 3, 100, -1 if dtype != "uint16" else 65535], dtype=dtype)
    out = table.remap(raw)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 1, 7, 255, 255, 255]


def test_source_ids_remap_through_negative_values() -> None:
    table = ClassTable(ids=(1, 2), names=("a", "b"), ignore_index=-1,
                       source_ids=((-5, 10), (20,)))  # fmt: skip
    assert table.remap(np.array([-5, 10, 20, -1, 0, 11])).tolist() == [1, 1, 2, 255, 255, 255]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ignore_index: 255\nclasses:\n  - {id: -1, name: a}\n", "class id -1 is outside"),
        ("classes:\n  - {id: 70000, name: a}\n", "class id 70000 is outside [0, 65534]"),
        ("ignore_index: 1\nclasses:\n  - {id: 1, name: a}\n", "ignore_index 1 is also a class"),
        ("ignore_index: none\nclasses:\n  - {id: 1, name: a}\n", "ignore_index must be an int"),
        ("classes:\n  - {id: 1.5, name: a}\n", "classes[0].id must be an integer"),
        (
            "ignore_index: -1\nclasses:\n  - {id: 1, name: a, source_ids: [-1, 2]}\n",
            "ignore_index -1 is also a source id",
        ),
    ],
)
def test_tables_that_cannot_be_honoured_are_refused_before_any_work(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _table(tmp_path, text)
    out = tmp_path / "out"
    for flags in (["--labels", "demo:sentinel2_l1c/labels/lulc_mask.tif"], ["--modality", "ct"]):
        rc = main(["--input", "demo:ct" if "ct" in flags else "demo:sentinel2_l1c", *flags,
                   "--classes", str(table), "--output", str(out)])  # fmt: skip
        assert rc == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --classes: ")
        assert message in err
        assert len(err.splitlines()) == 1
        assert not out.exists()
    with pytest.raises(ValueError, match="--classes"):
        load_class_table(table)
