"""Build settings: every field documents itself, and that text is what --help prints."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest

from data_pipelines.config import BuildConfig, field_help
from data_pipelines.ct.config import CTBuildConfig
from data_pipelines.rs.config import RSBuildConfig


@pytest.mark.parametrize("config_class", [BuildConfig, RSBuildConfig, CTBuildConfig])
def test_every_field_has_a_help_text(config_class: type) -> None:
    helps = field_help(config_class)
    missing = [f.name for f in fields(config_class) if not helps.get(f.name)]
    assert not missing, f"add a docstring below these fields: {missing}"


def test_field_help_reads_the_string_below_each_field_and_lets_a_subclass_win() -> None:
    @dataclass
    class Base:
        a: int = 1
        """First
        line."""
        b: int = 2  # a comment is not help

    @dataclass
    class Child(Base):
        a: int = 3
        """Overridden."""
        c: str = "x"
        """Third."""

    assert field_help(Base) == {"a": "First line."}
    assert field_help(Child) == {"a": "Overridden.", "c": "Third."}
