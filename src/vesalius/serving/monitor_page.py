"""The service's ``/monitor`` page: the drift of every served model version (:mod:`vesalius.serving.drift`) as one
self-contained HTML page, no script, no style sheet or font to fetch, plots drawn here as inline SVG.

Per model version: a table of the current scores, over-threshold rows highlighted, then one plot per feature with a
reference: on the left its score after each request (over the window ending there) with the threshold line, on the
right its values per request against the reference band (centre +- scale) and the window's median (or mean). Every
text from outside (model names, versions, class names, times) is escaped. The page is well-formed XML as well as
HTML, so that tests (and tools) can parse it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vesalius.serving.drift import (
    DEFAULT_MIN_OBSERVATIONS,
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW,
    DriftReference,
    FeatureReference,
    is_output_feature,
    score_history,
)

__all__ = ["ModelDriftView", "render_monitor_page"]

OVER = ' class="over"'
NOTE = '<p class="note">{}</p>'
#: One panel of a plot, in SVG user units, and the margins around its frame.
PANEL_WIDTH, PANEL_HEIGHT = 320, 160
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 22, 30

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #1d232a; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #d0d7de; }
.meta, .note { color: #57606a; } .note { font-style: italic; }
.badge { font-size: .8em; padding: .1em .5em; border-radius: .8em; background: #dafbe1; color: #116329; }
.badge.drift { background: #ffebe9; color: #a40e26; } .badge.waiting { background: #eaeef2; color: #57606a; }
table { border-collapse: collapse; margin: 1em 0; } th, td { padding: .25em .7em; border-bottom: 1px solid #eaeef2; }
th { text-align: left; background: #f6f8fa; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.over td { background: #ffebe9; } tr.over td.score { font-weight: bold; color: #a40e26; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; } figcaption { font-weight: 600; }
svg text { font: 11px system-ui, sans-serif; fill: #57606a; } svg .frame { fill: #fff; stroke: #d0d7de; }
svg .score { fill: none; stroke: #0969da; stroke-width: 1.5; } svg circle.score { fill: #0969da; }
svg .threshold { stroke: #cf222e; stroke-dasharray: 4 3; }
svg .band { fill: #0969da; fill-opacity: .12; } svg .centre { stroke: #0969da; stroke-opacity: .6; }
svg .value { fill: #1d232a; fill-opacity: .7; } svg .window { stroke: #bf8700; stroke-width: 2; }
"""


@dataclass(frozen=True)
class ModelDriftView:
    """What the page shows of one model version.

    Attributes:
        name, version: the model and its version, as the registry names them.
        reference: its drift reference.
        observations: ``(time as ISO 8601, features)`` of its recent requests, oldest first (more than one window:
            the plots show how the score moved).
        scores: the current scores (:func:`vesalius.serving.drift.drift_scores` of the last ``window``).
        threshold, window, min_observations: as the service scores.
    """

    name: str
    version: str | int
    reference: DriftReference
    observations: Sequence[tuple[str, Mapping[str, float]]]
    scores: Mapping[str, float]
    threshold: float = DEFAULT_THRESHOLD
    window: int = DEFAULT_WINDOW
    min_observations: int = DEFAULT_MIN_OBSERVATIONS


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _number(value: float | None, style: str = ".4g") -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, style)


def render_monitor_page(models: Sequence[ModelDriftView], *, title: str = "Vesalius drift monitor") -> str:
    """The ``/monitor`` page of the model versions ``models`` (module docstring), as one HTML document."""
    sections = [_section(i, view) for i, view in enumerate(models)]
    contents = "".join(
        f'<li><a href="#model-{i}">{_e(view.name)} {_e(view.version)}</a></li>' for i, view in enumerate(models)
    )
    explanation = (
        '<p class="meta">Score of a feature: how far the median of its last requests lies from the training (or, for '
        "outputs, the validation) reference, in reference standard deviations; for probabilities, how far their mean "
        "lies in standard errors. A score above the threshold is drift. Plots: on the left the score after each "
        "request, the threshold dashed; on the right each request's value (dots) against the reference centre +- "
        "scale (band) and the median, or mean, of the window (line).</p>"
    )
    body = (
        (f"<ul>{contents}</ul>" + "".join(sections))
        if models
        else '<p class="note">No model version has been served yet.</p>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1>{explanation}{body}</body></html>\n"
    )


def _section(index: int, view: ModelDriftView) -> str:
    reference = view.reference
    features = [f for _, f in view.observations]
    window = features[-view.window :]
    over = [name for name, score in view.scores.items() if score > view.threshold]
    if over:
        badge = f'<span class="badge drift">drift in {len(over)} feature(s)</span>'
    elif view.scores:
        badge = '<span class="badge">no drift</span>'
    else:
        badge = f'<span class="badge waiting">waiting for {view.min_observations} requests</span>'
    meta = (
        f'<p class="meta">{_e(reference.task)}; {len(view.observations)} request(s) shown, scored over the last '
        f"{view.window} (at least {view.min_observations}); threshold {_number(view.threshold)}.</p>"
    )
    notes = []
    if not reference.has_outputs:
        notes.append("Output drift unavailable: the package has no validation outputs (reference_outputs.json).")
    if not any(not is_output_feature(name) for name in reference.features):
        notes.append("Input drift unavailable: the package has no training fingerprint (fingerprint.json).")
    if reference.channels:
        names = ", ".join(f"{i} = {c}" for i, c in enumerate(reference.channels))
        notes.append(f"Channels: {names}.")
    rows = []
    ordered = sorted(reference.features.items(), key=lambda item: is_output_feature(item[0]))
    for name, feature in ordered:
        values = [v for v in (f.get(name) for f in window) if _finite(v)]
        score = view.scores.get(name)
        over_row = score is not None and score > view.threshold
        rows.append(
            f"<tr{OVER if over_row else ''}><td>{_e(name)}</td>"
            f"<td>{'output' if is_output_feature(name) else 'input'}</td>"
            f'<td class="number score">{_number(score, ".2f")}</td>'
            f'<td class="number">{_number(feature.window_statistic(values) if values else None)}</td>'
            f'<td class="number">{_number(feature.centre)}</td><td class="number">{_number(feature.scale)}</td>'
            f'<td>{_e(feature.statistic)}</td><td class="number">{feature.cases or "pooled"}</td></tr>'
        )
    table = (
        "<table><thead><tr><th>Feature</th><th>Kind</th><th>Score</th><th>Window</th><th>Reference centre</th>"
        f"<th>Reference scale</th><th>Statistic</th><th>Reference cases</th></tr></thead><tbody>{''.join(rows)}"
        "</tbody></table>"
    )
    history = score_history(reference, features, window=view.window, min_observations=view.min_observations)
    times = [t for t, _ in view.observations]
    plots = [
        _plot(name, feature, [f.get(name) for f in features], history[name], times, view)
        for name, feature in ordered
        if any(_finite(f.get(name)) for f in features)
    ]
    return (
        f'<section id="model-{index}"><h2>{_e(view.name)} <small>version {_e(view.version)}</small> {badge}</h2>'
        f"{meta}{''.join(NOTE.format(_e(n)) for n in notes)}{table}"
        f'<div class="plots">{"".join(plots)}</div></section>'
    )


def _plot(
    name: str,
    feature: FeatureReference,
    values: list[float | None],
    scores: list[float | None],
    times: list[str],
    view: ModelDriftView,
) -> str:
    """One feature's figure: an SVG of two panels, the score and the values against the reference band."""
    finite_scores = [s for s in scores if s is not None]
    score_top = max([view.threshold * 1.25, *(s * 1.05 for s in finite_scores)])
    score_panel = _Panel(0, 0.0, score_top, len(scores), times)
    parts = [score_panel.frame("score"), score_panel.hline(view.threshold, "threshold", "threshold")]
    run: list[str] = []
    for i, score in enumerate([*scores, None]):
        if score is not None:
            run.append(score_panel.point(i, score))
        elif run:
            parts.append(_polyline(run))
            run = []
    points = [(i, float(v)) for i, v in enumerate(values) if _finite(v)]
    low, high = feature.centre - feature.scale, feature.centre + feature.scale
    window = [v for i, v in points if i >= len(values) - view.window]
    statistic = feature.window_statistic(window) if window else None
    shown = [low, high, *(v for _, v in points), *([statistic] if statistic is not None else [])]
    pad = (max(shown) - min(shown)) * 0.05 or 1.0
    value_panel = _Panel(PANEL_WIDTH, min(shown) - pad, max(shown) + pad, len(values), times)
    parts += [value_panel.frame(f"values ({feature.statistic} vs reference)"), value_panel.band(low, high)]
    parts.append(value_panel.hline(feature.centre, "centre", "reference"))
    parts += [
        f'<circle class="value" cx="{x:.1f}" cy="{y:.1f}" r="2.2"/>'
        for x, y in (value_panel.xy(i, v) for i, v in points)
    ]
    if statistic is not None:
        start = max(0, len(values) - view.window)
        (x0, y), (x1, _) = value_panel.xy(start, statistic), value_panel.xy(len(values) - 1, statistic)
        parts.append(f'<line class="window" x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}"/>')
    current = view.scores.get(name)
    label = f"{name}: score {_number(current, '.2f')}, threshold {_number(view.threshold)}"
    width, height = 2 * PANEL_WIDTH, PANEL_HEIGHT
    return (
        f"<figure><figcaption>{_e(name)} — score {_number(current, '.2f')}</figcaption>"
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{_e(label)}">'
        f"<title>{_e(label)}</title>{''.join(parts)}</svg></figure>"
    )


def _polyline(points: list[str]) -> str:
    if len(points) == 1:
        x, y = points[0].split(",")
        return f'<circle class="score" cx="{x}" cy="{y}" r="2"/>'
    return f'<polyline class="score" points="{" ".join(points)}"/>'


class _Panel:
    """A plot panel at horizontal offset ``left`` of the SVG: ``count`` observations along x, ``low`` to ``high``
    along y; the first and last of ``times`` label the x axis."""

    def __init__(self, left: int, low: float, high: float, count: int, times: list[str]) -> None:
        self.x0, self.x1 = left + LEFT, left + PANEL_WIDTH - RIGHT
        self.y0, self.y1 = PANEL_HEIGHT - BOTTOM, TOP  # bottom and top of the frame
        self.low, self.high, self.count, self.times = low, high if high > low else low + 1.0, count, times

    def xy(self, index: int, value: float) -> tuple[float, float]:
        """The position of observation ``index`` with ``value``."""
        fraction = index / (self.count - 1) if self.count > 1 else 0.5
        x = self.x0 + fraction * (self.x1 - self.x0)
        y = self.y0 + (value - self.low) / (self.high - self.low) * (self.y1 - self.y0)
        return x, y

    def point(self, index: int, value: float) -> str:
        x, y = self.xy(index, value)
        return f"{x:.1f},{y:.1f}"

    def frame(self, title: str) -> str:
        first, last = (_short(self.times[0]), _short(self.times[-1])) if self.times else ("", "")
        width, height = self.x1 - self.x0, self.y0 - self.y1
        return (
            f'<rect class="frame" x="{self.x0}" y="{self.y1}" width="{width}" height="{height}"/>'
            f'<text x="{self.x0}" y="{self.y1 - 7}">{_e(title)}</text>'
            f'<text x="{self.x0 - 4}" y="{self.y1 + 4}" text-anchor="end">{_number(self.high)}</text>'
            f'<text x="{self.x0 - 4}" y="{self.y0 + 4}" text-anchor="end">{_number(self.low)}</text>'
            f'<text x="{self.x0}" y="{self.y0 + 16}">{_e(first)}</text>'
            f'<text x="{self.x1}" y="{self.y0 + 16}" text-anchor="end">{_e(last)}</text>'
        )

    def hline(self, value: float, css: str, label: str) -> str:
        _, y = self.xy(0, value)
        return (
            f'<line class="{css}" x1="{self.x0}" y1="{y:.1f}" x2="{self.x1}" y2="{y:.1f}"/>'
            f'<text x="{self.x1 - 2}" y="{y - 3:.1f}" text-anchor="end">{_e(label)}</text>'
        )

    def band(self, low: float, high: float) -> str:
        (_, top), (_, bottom) = self.xy(0, high), self.xy(0, low)
        width, height = self.x1 - self.x0, bottom - top
        return f'<rect class="band" x="{self.x0}" y="{top:.1f}" width="{width}" height="{height:.1f}"/>'


def _short(time: str) -> str:
    """``2025-01-02T03:04:05.678+00:00`` -> ``2025-01-02 03:04``."""
    return time[:16].replace("T", " ")
