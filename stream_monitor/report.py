"""The backtest report: one self-contained HTML file, charts as inline SVG drawn here (no script, no CDN).

Per model: a summary, the alerts, per feature the decision statistic against its threshold over the windows
(windows over threshold marked, alert firings as red lines), reference vs window histograms of the worst
windows, and realized vs estimated performance and label coverage over time when labels were given.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any

from .backtest import BacktestResult, Histogram, ModelTrace

__all__ = ["render_report"]

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 180, 48, 12, 14, 26
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px;margin:18px 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px 10px}
.card h4{margin:0 0 4px;font-size:13px}table{border-collapse:collapse;font-size:12px}
td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top}
.firing{color:#c62828;font-weight:600}.resolved{color:#2e7d32}.muted{color:#777}
svg text{font:10px sans-serif;fill:#555}.legend span{display:inline-block;margin-right:12px;font-size:12px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
"""


def _t(x: float) -> str:
    return datetime.fromtimestamp(x, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axes(x0: float, x1: float, y0: float, y1: float, fmt_x=_t) -> str:
    sx, sy = _scale(x0, x1, PAD_L, W - PAD_R), _scale(y0, y1, H - PAD_B, PAD_T)
    parts = [f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#999"/>',
             f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" stroke="#999"/>']
    for k in range(5):
        v = y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="{PAD_L - 4}" y="{sy(v) + 3:.1f}" text-anchor="end">{v:.3g}</text>')
        parts.append(f'<line x1="{PAD_L}" y1="{sy(v):.1f}" x2="{W - PAD_R}" y2="{sy(v):.1f}" stroke="#f0f0f0"/>')
    for k in (0, 2, 4):
        v = x0 + (x1 - x0) * k / 4
        anchor = ("start", "middle", "end")[k // 2]
        parts.append(f'<text x="{sx(v):.1f}" y="{H - 8}" text-anchor="{anchor}">{_e(fmt_x(v))}</text>')
    return "".join(parts)


def _line(points: list[tuple[float, float]], sx, sy, color: str, dash: str = "") -> str:
    d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{extra} points="{d}"/>'


def statistic_chart(name: str, points: list[tuple[float, float, float, bool]], fired: list[float]) -> str:
    """Decision statistic (blue) and threshold (dashed) per window; over-threshold windows as red dots,
    alert firings as red vertical lines."""
    xs = [p[0] for p in points]
    x0, x1 = min(xs), max(xs)
    y1 = max(max(p[1] for p in points), max(p[2] for p in points)) * 1.1 or 1.0
    sx, sy = _scale(x0, x1, PAD_L, W - PAD_R), _scale(0.0, y1, H - PAD_B, PAD_T)
    body = [_axes(x0, x1, 0.0, y1)]
    for t in fired:
        body.append(f'<line class="alert-mark" x1="{sx(t):.1f}" y1="{PAD_T}" x2="{sx(t):.1f}" y2="{H - PAD_B}" '
                    f'stroke="#c62828" stroke-width="1.2" opacity="0.7"/>')
    body.append(_line([(p[0], p[2]) for p in points], sx, sy, "#555", "5,3"))
    body.append(_line([(p[0], p[1]) for p in points], sx, sy, COLORS[0]))
    for p in points:
        if p[3]:
            body.append(f'<circle class="over" cx="{sx(p[0]):.1f}" cy="{sy(p[1]):.1f}" r="3" fill="#c62828"/>')
    return (f'<svg class="chart statistic" data-feature="{_e(name)}" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" role="img" aria-label="{_e(name)}">{"".join(body)}</svg>')


def histogram_chart(h: Histogram) -> str:
    n = len(h.labels)
    y1 = max(max(h.reference, default=0), max(h.window, default=0)) * 1.1 or 1.0
    sy = _scale(0.0, y1, H - PAD_B, PAD_T)
    slot = (W - PAD_L - PAD_R) / max(n, 1)
    body = [_axes(0, 1, 0.0, y1, fmt_x=lambda v: "")]
    for i, (r, c) in enumerate(zip(h.reference, h.window)):
        x = PAD_L + i * slot
        bw = max(slot * 0.4, 1)
        body.append(f'<rect x="{x + slot * 0.1:.1f}" y="{sy(r):.1f}" width="{bw:.1f}" height="{sy(0) - sy(r):.1f}" '
                    f'fill="#9e9e9e"><title>reference {_e(h.labels[i])}: {r:.3f}</title></rect>')
        body.append(f'<rect x="{x + slot * 0.5:.1f}" y="{sy(c):.1f}" width="{bw:.1f}" height="{sy(0) - sy(c):.1f}" '
                    f'fill="{COLORS[1]}"><title>window {_e(h.labels[i])}: {c:.3f}</title></rect>')
        if n <= 6 or i % 2 == 0:  # every other label when they would overlap
            body.append(f'<text x="{x + slot / 2:.1f}" y="{H - 8}" text-anchor="middle">{_e(h.labels[i][:16])}</text>')
    return (f'<svg class="chart histogram" data-feature="{_e(h.feature)}" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" role="img">{"".join(body)}</svg>')


def performance_chart(series: dict[str, list[tuple[float, float]]]) -> str:
    pts = [p for s in series.values() for p in s]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(0.0, min(p[1] for p in pts)), max(1.0, max(p[1] for p in pts))
    sx, sy = _scale(x0, x1, PAD_L, W - PAD_R), _scale(y0, y1, H - PAD_B, PAD_T)
    body = [_axes(x0, x1, y0, y1)]
    for i, (name, s) in enumerate(series.items()):
        body.append(_line(s, sx, sy, COLORS[(i // 2) % len(COLORS)] if "coverage" not in name else "#777",
                          "5,3" if name.startswith("estimated") else ""))
    legend = "".join(f'<span><i class="sw" style="background:{COLORS[(i // 2) % len(COLORS)]}"></i>{_e(n)}</span>'
                     for i, n in enumerate(series))
    return (f'<div class="legend">{legend}</div><svg class="chart performance" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" role="img">{"".join(body)}</svg>')


def _model_section(name: str, tr: ModelTrace, result: BacktestResult) -> str:
    alerts = [a for a in result.alerts if a.model == name]
    out = [f'<section class="model" data-model="{_e(name)}"><h2>Model {_e(name)}</h2>']
    evaluated = sum(1 for w in tr.windows if not w["skipped"])
    out.append(f'<p>{len(tr.windows)} windows ({evaluated} evaluated), '
               f'{sum(a.status == "firing" for a in alerts)} alerts fired, '
               f'{sum(a.status == "resolved" for a in alerts)} resolved.</p>')
    if alerts:
        rows = "".join(f'<tr><td>{_t(a.window["end"])}</td><td class="{a.status}">{a.status}</td><td>{a.severity}</td>'
                       f'<td>{a.kind}</td><td>{_e(a.feature or "-")}</td><td>{_e(a.message)}</td></tr>'
                       for a in alerts)
        out.append('<h3>Alerts</h3><table class="alerts"><tr><th>window end</th><th>status</th><th>severity</th>'
                   f'<th>kind</th><th>feature</th><th>message</th></tr>{rows}</table>')
    fired: dict[tuple[str, str, str], list[float]] = {}
    for a in alerts:
        if a.status == "firing":
            for m in a.features or [{"feature": a.feature, "statistic": a.statistic}]:
                fired.setdefault((a.kind, m.get("feature") or "", m.get("statistic") or ""), []).append(a.window["end"])

    def card(key: tuple[str, str, str], pts: list[tuple[float, float, float, bool]]) -> str:
        kind, feature, stat = key
        return (f'<div class="card feature" data-feature="{_e(feature)}" data-kind="{_e(kind)}"><h4>'
                f'{_e(feature or "-")} · {_e(kind)} · {_e(stat)}</h4>{statistic_chart(feature, pts, fired.get(key, []))}'
                '</div>')

    # drift statistics, and data-quality rates that crossed their threshold, in view; the other rates folded
    shown = {k: v for k, v in tr.series.items() if k[0] != "data_quality" or any(p[3] for p in v)}
    folded = {k: v for k, v in tr.series.items() if k not in shown}
    if shown:
        out.append('<h3>Decision statistic vs threshold per window</h3><p class="legend">'
                   '<span><i class="sw" style="background:#1f77b4"></i>statistic</span>'
                   '<span><i class="sw" style="background:#555"></i>threshold (dashed)</span>'
                   '<span><i class="sw" style="background:#c62828"></i>over threshold (dot), alert fired (line)</span>'
                   '</p><div class="grid">')
        order = {"data_drift": 0, "prediction_drift": 1, "data_quality": 2}
        out += [card(k, v) for k, v in sorted(shown.items(), key=lambda kv: (order.get(kv[0][0], 3), kv[0]))]
        out.append("</div>")
    if folded:
        out.append(f'<details><summary>Data-quality rates that stayed under their thresholds ({len(folded)})'
                   '</summary><div class="grid">')
        out += [card(k, v) for k, v in sorted(folded.items())]
        out.append("</div></details>")
    if tr.worst:
        out.append('<h3>Worst windows: reference (grey) vs window (orange)</h3>')
        for score, _, w, hists in sorted(tr.worst, reverse=True):
            out.append(f'<p class="muted">window {w["index"]}: {_t(w["start"])} .. {_t(w["end"])}, {w["events"]} '
                       f'events, worst statistic / threshold = {score:.2f}</p><div class="grid">')
            for h in hists:
                out.append(f'<div class="card"><h4>{_e(h.feature)}: {_e(h.statistic)} = {h.value:.4g} '
                           f'(threshold {h.threshold:.4g})</h4>{histogram_chart(h)}</div>')
            out.append("</div>")
    reps = [r for r in tr.performance if r.get("metrics")]
    if reps:
        series: dict[str, list[tuple[float, float]]] = {}
        for r in reps:
            for metric, v in r["metrics"].items():
                if v == v and 0 <= v <= 1:
                    series.setdefault(f"realized {metric}", []).append((r["end"], v))
                    e = r["estimated"].get(metric)
                    if e is not None and e == e:
                        series.setdefault(f"estimated {metric}", []).append((r["end"], e))
            series.setdefault("label coverage", []).append((r["end"], r["coverage"]))
        out.append('<h3>Performance: realized (solid) vs estimated (dashed), label coverage (grey)</h3>')
        out.append(f'<div class="card">{performance_chart(series)}</div>')
    out.append("</section>")
    return "".join(out)


def render_report(result: BacktestResult, title: str = "stream-monitor backtest") -> str:
    """The whole report as one HTML string."""
    sections = "".join(_model_section(n, tr, result) for n, tr in result.models.items() if tr.windows)
    summary = "<br>".join(_e(line) for line in result.summary().splitlines())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<style>{CSS}</style></head><body><h1>{_e(title)}</h1><p>{summary}</p>{sections}</body></html>')
