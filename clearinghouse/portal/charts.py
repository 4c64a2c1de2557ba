"""The portal's one chart: lines over two axes, drawn as an inline SVG by the server (no JavaScript,
nothing fetched by the browser). A page builds it with `line_chart(...)` from values it has already
scaled to 0..1 along each axis, and renders it with
`{% include "portal/_line_chart.html" with chart=... %}`; the budget's spending and a federated job's
rounds are both drawn this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# One colour per line, in order (the portal's accent, its "bad" red, its "ok" green, then two more).
COLOURS = ("#1f5fbf", "#b3261e", "#1e7a45", "#8a5a00", "#6b3fa0")


@dataclass(frozen=True)
class Line:
    """One series: `points` are (x, y) fractions of the axes, each 0..1 (values outside are drawn on
    the edge); `note` is what the legend says beside its name."""

    name: str
    points: Sequence[tuple[float, float]]
    colour: str = COLOURS[0]
    dashed: bool = False
    markers: bool = False
    note: str = ""


@dataclass(frozen=True)
class AxisTitle:
    text: str
    colour: str = ""


def line_chart(
    *,
    chart_id: str,
    title: str,
    lines: Sequence[Line],
    width: int = 640,
    height: int = 260,
    pad: int = 50,
    left_labels: Sequence[tuple[float, str]] = (),
    right_labels: Sequence[tuple[float, str]] = (),
    x_labels: Sequence[tuple[float, str]] = (),
    gridlines: Sequence[float] = (),
    left_title: AxisTitle | None = None,
    right_title: AxisTitle | None = None,
    x_title: str = "",
) -> dict[str, Any]:
    """What `portal/_line_chart.html` draws: every position in pixels of a `width`×`height` box with
    `pad` pixels of margin on each side (labels are placed at fractions of their axis, like points)."""
    left, right, top, bottom = pad, width - pad, pad, height - pad

    def x(fraction: float) -> float:
        return round(left + min(max(fraction, 0.0), 1.0) * (right - left), 1)

    def y(fraction: float) -> float:
        return round(bottom - min(max(fraction, 0.0), 1.0) * (bottom - top), 1)

    middle = round((top + bottom) / 2, 1)
    drawn = []
    for line in lines:
        points = [(x(px), y(py)) for px, py in line.points]
        drawn.append(
            {
                "name": line.name,
                "colour": line.colour,
                "dash": "6 3" if line.dashed else "",
                "points": " ".join(f"{px},{py}" for px, py in points),
                "markers": points if line.markers else [],
                "note": line.note,
            }
        )
    return {
        "id": chart_id,
        "title": title,
        "width": width,
        "height": height,
        "left": left,
        "right": right,
        "top": top,
        "bottom": bottom,
        "middle": middle,
        "right_axis": bool(right_labels or right_title),
        "left_labels": [(y(at), text) for at, text in left_labels],
        "left_labels_x": left - 6,
        "right_labels": [(y(at), text) for at, text in right_labels],
        "right_labels_x": right + 6,
        "gridlines": [y(at) for at in gridlines],
        "x_labels": [(x(at), text) for at, text in x_labels],
        "tick_end": bottom + 4,
        "tick_labels_y": bottom + 16,
        "left_title": left_title,
        "left_title_x": 14,
        "right_title": right_title,
        "right_title_x": width - 10,
        "x_title": x_title,
        "x_title_y": height - 6,
        "lines": drawn,
    }
