"""A run's :class:`~tools.report.collect.ReportData` as one self-contained HTML page: every
picture a ``data:`` URI, styles inline, no external URL; a tiny inline script records each
image's decoded width (``data-natural-width``) so a headless browser test can tell that every
image loaded. Also the README's results section (Markdown) from the same data."""

from __future__ import annotations

import base64
import html
import io
import math
import time
from typing import Any

from tools.report.collect import ReportData, ResultRow

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#4a7fc1;height:12px;display:inline-block;vertical-align:middle}
.skipped{color:#777}.failed,.incomplete{color:#b00}figure{display:inline-block;margin:.5em}
figure img{max-width:100%;image-rendering:pixelated;border:1px solid #eee}
pre{background:#f7f7f7;padding:1em;overflow:auto;max-height:40em}
.meta td:first-child{font-weight:bold}
"""
# Records each image's decoded size once it loaded (0 = broken): the browser test reads it.
SCRIPT = """
function ovsMark(){document.querySelectorAll('img').forEach(function(i){
  i.setAttribute('data-natural-width', i.complete ? i.naturalWidth : 0);});
  document.body.setAttribute('data-images-checked', document.images.length);}
window.addEventListener('load', ovsMark);
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}f}"


def _meta(d: ReportData) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d.started_ms / 1000))
    rows = [
        ("run", f"{d.run_name} ({d.run_id})"),
        ("experiment", d.experiment),
        ("status", d.status),
        ("started", started),
        ("duration", f"{_fmt(d.seconds, 1)} s"),
        ("code", f"{d.commit}{' (dirty)' if d.dirty == 'True' else ''}"),
        ("machine", d.machine),
    ]
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def _timeline(d: ReportData) -> str:
    total = sum(s.seconds or 0 for s in d.stages if s.status == "ran") or 1.0
    rows = []
    for s in d.stages:
        width = 300 * (s.seconds or 0) / total if s.status == "ran" else 0
        counts = ", ".join(f"{k}={v:g}" for k, v in sorted(s.counts.items()))
        resumed = any(k.endswith("resumed") and v for k, v in s.counts.items())
        status = s.status + (" (resumed)" if resumed else "")
        src = f"from run {s.source_run_id[:8]}" if s.source_run_id else ""
        rows.append(
            f'<tr class="stage {_e(s.status)}" data-stage="{_e(s.name)}">'
            f"<td>{_e(s.run_name)}</td><td>{_e(status)} {_e(src)}</td>"
            f'<td class="num">{_fmt(s.seconds, 1)}</td>'
            f'<td><span class="bar" style="width:{width:.0f}px"></span></td>'
            f"<td>{_e(counts)}</td><td>{_e(s.commit[:10])}</td></tr>"
        )
    head = "<tr><th>stage</th><th>status</th><th>s</th><th></th><th>counts</th><th>commit</th></tr>"
    return f'<table id="timeline">{head}{"".join(rows)}</table>'


def _results(rows: list[ResultRow]) -> str:
    if not rows:
        return "<p>No evaluation results in this run.</p>"
    head = (
        "<tr><th>method</th><th>benchmark</th><th>protocol</th><th>mIoU</th>"
        "<th>pixel acc</th><th>mAcc</th><th>images</th></tr>"
    )
    body = "".join(
        f'<tr class="result"><td>{_e(r.method)}</td><td>{_e(r.benchmark)}</td>'
        f'<td>{_e(r.protocol)}</td><td class="num">{_fmt(r.miou)}</td>'
        f'<td class="num">{_fmt(r.pixel_acc)}</td><td class="num">{_fmt(r.macc)}</td>'
        f'<td class="num">{r.num_images}</td></tr>'
        for r in rows
    )
    return f'<table id="results">{head}{body}</table>'


def _per_class(rows: list[ResultRow]) -> str:
    parts = []
    for r in rows:
        if not r.per_class_iou:
            continue
        bars = "".join(
            f'<tr><td>{_e(name)}</td><td class="num">{_fmt(v, 3)}</td>'
            f'<td><span class="bar" style="width:{300 * v if v == v else 0:.0f}px"></span></td></tr>'
            for name, v in r.per_class_iou.items()
        )
        parts.append(
            f"<h3>{_e(r.method)} / {_e(r.protocol)} / {_e(r.benchmark)}</h3>"
            f'<table class="per-class">{bars}</table>'
        )
    return "".join(parts) or "<p>No per-class results.</p>"


def _pictures(d: ReportData, sections: tuple[str, ...], exclude: bool = False) -> str:
    figs = [
        f'<figure><img alt="{_e(p.title)}" src="{data_uri(p.png)}">'
        f"<figcaption>{_e(p.section)}: {_e(p.title)}</figcaption></figure>"
        for p in d.pictures
        if (p.section in sections) != exclude
    ]
    return "".join(figs) or "<p>None logged.</p>"


def curves_png(curves: dict[str, list[tuple[int, float]]]) -> bytes | None:
    """One small line plot per metric (each loss term, lr, img/s, data wait) as a PNG."""
    if not curves:
        return None
    from matplotlib.figure import Figure

    n = len(curves)
    cols = min(4, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), dpi=100)
    for i, (name, points) in enumerate(sorted(curves.items())):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", lw=1)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render(d: ReportData) -> str:
    """The report page (a complete HTML document)."""
    curves = curves_png(d.curves)
    curves_html = (
        f'<figure><img alt="training curves" src="{data_uri(curves)}"></figure>'
        if curves
        else "<p>No training curves.</p>"
    )
    summaries = "".join(
        f'<tr><td>{_e(k)}</td><td class="num">{_fmt(v)}</td></tr>'
        for k, v in sorted(d.metrics.items())
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>ovs report: {_e(d.run_name)}</title><style>{STYLE}</style>
<script>{SCRIPT}</script></head>
<body>
<h1>ovs run report: {_e(d.run_name)}</h1>
{_meta(d)}
<h2 id="stages">Stage timeline</h2>{_timeline(d)}
<h2 id="results-section">Results (method × benchmark × protocol)</h2>{_results(d.results)}
<h2 id="per-class">Per-class IoU</h2>{_per_class(d.results)}
<h2 id="overlays">Overlays and confusion matrices</h2>{_pictures(d, ("evaluate",))}
<h2 id="pseudo-masks">Pseudo-masks</h2>{_pictures(d, ("pseudo_masks",))}
<h2 id="curves">Training curves</h2>{curves_html}
<h2 id="other-pictures">Other stages</h2>{_pictures(d, ("evaluate", "pseudo_masks"), True)}
<h2 id="summaries">Stage summaries (parent run)</h2><table>{summaries}</table>
<h2 id="config">Resolved config</h2><pre>{_e(d.config_yaml)}</pre>
</body></html>
"""


README_METRICS = (  # the parent run's ``<stage>.<metric>`` summaries README lists under the table
    "pseudo_masks.oracle_miou",
    "train.miou_at_init",
    "train.miou",
    "train.steps_done",
    "train.data_wait_fraction",
    "self_train.miou",
    "self_train.steps_done",
    "pairs.pair_precision",
    "pairs.pair_precision_random",
    "pairs.pair_precision_oracle",
)


def results_markdown(d: ReportData) -> str:
    """README's results section: the results table of run ``d`` with where it ran."""
    started = time.strftime("%Y-%m-%d", time.gmtime(d.started_ms / 1000))
    lines = [
        f"Run `{d.run_name}` ({d.run_id[:8]}, experiment `{d.experiment}`, code "
        f"`{d.commit[:10]}`, {started}) on {d.machine}, {_fmt(d.seconds, 0)} s in all.",
        "",
        "| method | benchmark | protocol | mIoU | pixel acc | mAcc | images |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.method} | {r.benchmark} | {r.protocol} | {_fmt(r.miou)} | {_fmt(r.pixel_acc)} "
        f"| {_fmt(r.macc)} | {r.num_images} |"
        for r in d.results
    ]
    for key in README_METRICS:
        if key in d.metrics:
            v = d.metrics[key]
            lines.append(f"\n`{key}` = {int(v) if v >= 1 and v == int(v) else _fmt(v)}")
    return "\n".join(lines) + "\n"
