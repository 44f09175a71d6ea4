"""CogView4's size rules and the shipped size presets."""

from __future__ import annotations

import json

import pytest

from glmimage import limits
from glmimage.sizes import SizePreset, largest_legal_side, load_size_presets, size_problem


@pytest.mark.parametrize(
    "width, height", [(512, 512), (1024, 1024), (2048, 1024), (1024, 2048), (1568, 672), (2048, 512), (1440, 1440)]
)
def test_legal_sizes_break_no_rule(width, height):
    assert size_problem(width, height) is None


@pytest.mark.parametrize(
    "width, height, key",
    [
        (480, 512, "error.side_range"),
        (512, 2080, "error.side_range"),
        (0, 512, "error.side_range"),
        (528, 512, "error.side_multiple"),
        (512, 1000, "error.side_multiple"),
        (2048, 2048, "error.too_many_pixels"),
        (1472, 1472, "error.too_many_pixels"),
    ],
)
def test_illegal_sizes_name_the_rule_they_break(width, height, key):
    assert size_problem(width, height) == key


def test_2048_by_1024_is_the_largest_size_2048_wide_and_1440_the_largest_square():
    assert size_problem(2048, 1024) is None
    assert size_problem(2048, 1056) == "error.too_many_pixels"
    assert size_problem(1440, 1440) is None
    assert size_problem(1472, 1472) == "error.too_many_pixels"


@pytest.mark.parametrize("other", [512, 1024, 1184, 1536, 2048])
def test_largest_legal_side_is_legal_and_one_step_more_is_not(other):
    side = largest_legal_side(other)
    assert size_problem(side, other) is None
    assert size_problem(side + limits.SIDE_MULTIPLE, other) is not None


def test_shipped_presets_are_legal_unique_and_include_the_default_and_a_small_one():
    presets = load_size_presets()
    assert all(size_problem(p.width, p.height) is None for p in presets)
    assert len({p.label for p in presets}) == len(presets)
    sizes = {(p.width, p.height) for p in presets}
    assert (limits.DEFAULT_WIDTH, limits.DEFAULT_HEIGHT) in sizes
    assert (512, 512) in sizes


def test_preset_label_shows_ratio_and_size():
    assert SizePreset("16:9", 1536, 864).label == "16:9 · 1536×864"


def test_a_presets_file_with_an_illegal_size_is_refused_naming_the_preset(tmp_path):
    path = tmp_path / "sizes.json"
    path.write_text(
        json.dumps([{"ratio": "1:1", "width": 1024, "height": 1024}, {"ratio": "odd", "width": 1000, "height": 1024}])
    )
    with pytest.raises(ValueError, match="odd · 1000×1024"):
        load_size_presets(path)


def test_a_presets_file_with_duplicates_is_refused(tmp_path):
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps([{"ratio": "1:1", "width": 1024, "height": 1024}] * 2))
    with pytest.raises(ValueError, match="unique"):
        load_size_presets(path)
