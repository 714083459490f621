"""``build_dataset --modality ct``: flags reach the CT config.

CT config errors are checked with the RS ones in test_build_dataset.py.
"""

from __future__ import annotations

from pathlib import Path

from geomed_mim.build_dataset import parse_config


def test_ct_flags_parse_into_the_ct_config(tmp_path: Path, demo_data: Path) -> None:
    from data_pipelines.ct.config import CTBuildConfig

    cfg, is_demo = parse_config(
        [
            *("--modality", "ct", "--input", "demo:ct", "--output", str(tmp_path / "o")),
            *("--spacing", "[0.8, 0.8, 1.5]", "--crop-foreground", "--codec", "zstd"),
            *("--chunk-size", "48", "--labels", "none"),
        ]
    )
    assert isinstance(cfg, CTBuildConfig)
    assert not is_demo
    assert cfg.input == str(demo_data / "ct")
    assert cfg.spacing == (0.8, 0.8, 1.5)
    assert (cfg.crop_foreground, cfg.codec, cfg.chunk_size, cfg.labels) == (
        True,
        "zstd",
        48,
        "none",
    )


def test_ct_demo_config_is_the_default_for_modality_ct() -> None:
    cfg, is_demo = parse_config(["--modality", "ct"])
    assert is_demo
    assert cfg.output == "geomed_demo_ct"
    assert cfg.spacing == (1.5, 1.5, 1.5)
