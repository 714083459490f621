"""A build's counters: typed keys in memory, the same flat string keys in JSON as ever."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipelines.build import BuildTask, collect_fragments
from data_pipelines.counts import (
    DUPLICATES,
    EXCLUDED,
    FORMAT,
    SAMPLES_WRITTEN,
    SCENES_READ,
    TILES_TOTAL,
    BuildCounts,
    Count,
)
from data_pipelines.store.write import write_fragment

# the typed counters of one scene and their flat JSON form, as fragments have always held them
TYPED = BuildCounts(
    {
        Count(SCENES_READ): 1,
        Count(TILES_TOTAL): 7,
        Count(TILES_TOTAL, 64): 4,
        Count(TILES_TOTAL, 128): 3,
        Count(SAMPLES_WRITTEN): 2,
        Count(SAMPLES_WRITTEN, 64): 2,
        Count(SAMPLES_WRITTEN, 128): 0,
        Count(EXCLUDED, "nodata"): 1,
        Count(EXCLUDED, "cloud"): 4,
        Count(DUPLICATES, "near"): 0,
    }
)
OLD_JSON = """{"scenes_read": 1, "tiles_total": 7, "tiles_total@64": 4, "tiles_total@128": 3,
  "samples_written": 2, "samples_written@64": 2, "samples_written@128": 0,
  "excluded:nodata": 1, "excluded:cloud": 4, "duplicates:near": 0}"""


def test_json_round_trip_is_flat_sorted_and_equal() -> None:
    flat = TYPED.to_json()
    assert list(flat) == sorted(flat)  # build.json's counts, sorted by key as always
    assert flat == json.loads(OLD_JSON)
    assert BuildCounts.from_json(json.loads(json.dumps(flat))) == TYPED
    assert all(isinstance(k, Count) for k in BuildCounts.from_json(flat))


@pytest.mark.parametrize(
    ("key", "flat"),
    [
        (Count(SAMPLES_WRITTEN), "samples_written"),
        (Count(EXCLUDED, "cloud_shadow"), "excluded:cloud_shadow"),
        (Count(FORMAT, "dicom"), "format:dicom"),
        (Count(TILES_TOTAL, 64), "tiles_total@64"),
    ],
)
def test_keys_encode_and_decode(key: Count, flat: str) -> None:
    assert key.encode() == flat
    assert Count.decode(flat) == key


def test_readers_use_the_typed_keys() -> None:
    assert TYPED.by_reason(EXCLUDED) == {"cloud": 4, "nodata": 1}
    assert list(TYPED.by_reason(EXCLUDED)) == ["cloud", "nodata"]  # sorted by reason
    assert TYPED.by_reason(DUPLICATES) == {"near": 0}
    assert TYPED.by_reason(FORMAT) == {}
    assert TYPED.by_size(TILES_TOTAL) == {64: 4, 128: 3}
    assert TYPED.by_size(SAMPLES_WRITTEN) == {64: 2, 128: 0}
    assert TYPED.by_size(EXCLUDED) == {}
    assert TYPED.total(TILES_TOTAL) == 7  # the plain counter, not its sizes again
    assert TYPED.total("never_counted") == 0
    # a flat key looks up the same counter
    assert TYPED["tiles_total@64"] == 4 == TYPED.get("tiles_total@64")
    assert TYPED["excluded:cloud"] == 4


def test_counts_add_up_across_parts() -> None:
    both = BuildCounts()
    both.update(TYPED)
    both.update(BuildCounts.from_json(json.loads(OLD_JSON)))
    assert both.total(SAMPLES_WRITTEN) == 4
    assert both.by_size(TILES_TOTAL) == {64: 8, 128: 6}
    assert both.by_reason(EXCLUDED) == {"cloud": 8, "nodata": 2}


def test_a_fragment_of_the_old_string_form_reads_back_typed(tmp_path: Path) -> None:
    # written as a build before the typed keys wrote it: the summary's JSON, literally
    write_fragment(tmp_path, "s0", [], json.loads(f'{{"counts": {OLD_JSON}}}'))
    _, summaries, counts, _ = collect_fragments(tmp_path, [BuildTask("s0", "in/s0", None)])
    assert summaries == [{"counts": json.loads(OLD_JSON)}]
    assert counts == TYPED
    assert all(isinstance(k, Count) for k in counts)
