"""The comparison table (``ovs.eval.comparison``) from harness results, its Markdown and chart,
and README's regenerated section (``tools.report.readme``, section ``comparison``)."""

from __future__ import annotations

import pytest

from ovs.eval.comparison import COLUMNS, comparison_chart, comparison_table, markdown, rows
from ovs.eval.visualize import figure_to_png
from tools.report.readme import SECTIONS, splice

README_START, README_END = SECTIONS["comparison"]

RESULTS = [
    {"method": "sseg", "dataset": "world", "protocol": "tiny", "miou": 0.5, "acc": 0.8},
    {"method": "clip", "dataset": "world", "protocol": "tiny", "miou": 0.125, "acc": 0.25},
    {"method": "sseg", "dataset": "voc21", "protocol": "tiny", "miou": 0.3, "acc": 0.6},
]


def test_table_has_one_row_per_result_in_order() -> None:
    table = comparison_table(RESULTS)
    assert tuple(table) == COLUMNS
    assert table["method"] == ["sseg", "clip", "sseg"]
    assert table["benchmark"] == ["world", "world", "voc21"]
    assert table["miou"] == [0.5, 0.125, 0.3] and table["pixel_acc"] == [0.8, 0.25, 0.6]
    assert rows(table)[1] == {
        "method": "clip",
        "benchmark": "world",
        "protocol": "tiny",
        "miou": 0.125,
        "pixel_acc": 0.25,
    }


def test_markdown_lines_per_method_and_missing_cells_empty() -> None:
    md = markdown(comparison_table(RESULTS)).splitlines()
    assert md[0] == (
        "| method | world / tiny mIoU | voc21 / tiny mIoU | world / tiny pixel acc. "
        "| voc21 / tiny pixel acc. |"
    )
    assert md[2] == "| S-Seg | 50.0 | 30.0 | 80.0 | 60.0 |"
    assert md[3] == "| CLIP | 12.5 |  | 25.0 |  |"
    assert len(md) == 4


def test_chart_renders() -> None:
    png = figure_to_png(comparison_chart(comparison_table(RESULTS)))
    assert png.startswith(b"\x89PNG")


def test_readme_section_is_replaced_between_markers() -> None:
    text = f"intro\n{README_START}\nold numbers\n{README_END}\nrest\n"
    section = markdown(comparison_table(RESULTS[:1]))
    new = splice(text, section, "comparison")
    assert new.startswith("intro\n") and new.endswith(f"{README_END}\nrest\n")
    assert "old numbers" not in new and "| S-Seg | 50.0 | 80.0 |" in new
    assert splice(new, section, "comparison") == new  # idempotent
    with pytest.raises(ValueError, match="comparison"):
        splice("no markers", section, "comparison")
