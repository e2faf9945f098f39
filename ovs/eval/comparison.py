"""The method comparison of one evaluation: a method x benchmark x protocol table (mIoU and
pixel accuracy), its grouped bar chart and its Markdown form (README's comparison section is
regenerated from it by ``python -m tools.report --readme``; no hand-copied numbers).

A table is column lists, ``{"method", "benchmark", "protocol", "miou", "pixel_acc"}``, in the
order the rows were given (the evaluate stage's method order): what ``mlflow``'s table
artifacts and :func:`ovs.stage.Tracker.log_table` take.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

COLUMNS = ("method", "benchmark", "protocol", "miou", "pixel_acc")

# Names shown for the evaluation rows of the trained methods (others: their row name).
DISPLAY = {
    "sseg": "S-Seg",
    "sseg_plus": "S-Seg+",
    "clip": "CLIP",
    "maskclip": "MaskCLIP",
    "pm_clip": "Baseline 1 (pseudo-mask + CLIP)",
    "pacl": "PACL",
    "pmvit": "Baseline 2 (pseudo-mask ViT)",
    "groupvit": "GroupViT",
    "ovsegmentor": "OVSegmentor",
}


def comparison_table(results: Iterable[Mapping[str, Any]]) -> dict[str, list]:
    """Column lists of ``results``: each a result dict of the harness (``method``, ``dataset``,
    ``protocol``, ``miou``, ``acc``), one table row each."""
    table: dict[str, list] = {c: [] for c in COLUMNS}
    for r in results:
        table["method"].append(str(r["method"]))
        table["benchmark"].append(str(r["dataset"]))
        table["protocol"].append(str(r["protocol"]))
        table["miou"].append(float(r["miou"]))
        table["pixel_acc"].append(float(r["acc"]))
    return table


def rows(table: Mapping[str, list]) -> list[dict[str, Any]]:
    """The table as one dict per row."""
    n = len(table["method"])
    return [{c: table[c][i] for c in COLUMNS} for i in range(n)]


def comparison_chart(table: Mapping[str, list], title: str = "zero-shot mIoU"):
    """Grouped bar chart (matplotlib ``Figure``): one group per benchmark / protocol, one bar per
    method, mIoU in %."""
    from matplotlib.figure import Figure

    rs = rows(table)
    groups = list(dict.fromkeys(f"{r['benchmark']} / {r['protocol']}" for r in rs))
    methods = list(dict.fromkeys(r["method"] for r in rs))
    value = {(f"{r['benchmark']} / {r['protocol']}", r["method"]): r["miou"] for r in rs}
    fig = Figure(figsize=(max(4.0, 1.2 + 0.5 * len(groups) * len(methods)), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(groups))]
        ys = [100.0 * value.get((g, m), float("nan")) for g in groups]
        bars = ax.bar(xs, ys, width, label=DISPLAY.get(m, m))
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def markdown(table: Mapping[str, list]) -> str:
    """A Markdown table: one line per method, one mIoU / pixel-accuracy column pair per
    benchmark / protocol, in %."""
    rs = rows(table)
    groups = list(dict.fromkeys((r["benchmark"], r["protocol"]) for r in rs))
    methods = list(dict.fromkeys(r["method"] for r in rs))
    cell = {(r["method"], r["benchmark"], r["protocol"]): r for r in rs}
    head = ["method"] + [f"{b} / {p} mIoU" for b, p in groups]
    head += [f"{b} / {p} pixel acc." for b, p in groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        got = [cell.get((m, b, p)) for b, p in groups]
        vals = [f"{100 * g['miou']:.1f}" if g else "" for g in got]
        vals += [f"{100 * g['pixel_acc']:.1f}" if g else "" for g in got]
        lines.append("| " + " | ".join([DISPLAY.get(m, m), *vals]) + " |")
    return "\n".join(lines) + "\n"
