"""The portal's charts: drawn by matplotlib on the server as an inline SVG (no JavaScript, nothing
fetched by the browser), from one helper for every page. A page builds a `Chart` with
`line_chart(...)` (lines over time or rounds: the budget's spending, a federated job's rounds) or
`bar_chart(...)` (values per category with their 95% intervals as error bars: a query's answer), and
renders it with `{% include "portal/_chart.html" with chart=... %}`.

The SVG is made fit to inline in a page under a strict Content-Security-Policy: no script, no
`<style>` element and no `style` attribute (matplotlib's inline styles become SVG presentation
attributes, which no CSP governs), no XML prolog, every id prefixed with the chart's own so that two
charts on a page never collide. Text stays text (`svg.fonttype = "none"`) and is written escaped by
the XML serializer, never parsed as mathtext, so a category named `<script>` or `$x$` is shown as
typed. The same input gives the same bytes (fixed `svg.hashsalt`, no date in the metadata), so
the last charts drawn are kept in memory and served again.

matplotlib is used through `matplotlib.figure.Figure` and its SVG canvas only (never `pyplot`
and its global figure registry); the rcParams below are set once at import, and drawing is
serialized by a lock, as matplotlib is not thread-safe.
"""

from __future__ import annotations

import functools
import io
import math
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar, cast

import matplotlib
import matplotlib.dates
from django.utils.safestring import SafeString, mark_safe
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

matplotlib.rcParams.update(
    {
        "svg.fonttype": "none",  # text as <text>, searchable and accessible
        "svg.hashsalt": "clearinghouse-chart",  # deterministic clip-path and marker ids
        "text.parse_math": False,  # "$x$" in a category name is text, not mathtext
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)

# One colour per series, in order (the portal's accent, its "bad" red, its "ok" green, then more).
COLOURS = ("#1f5fbf", "#b3261e", "#1e7a45", "#8a5a00", "#6b3fa0", "#00707a")
ERROR_COLOUR = "#222222"

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", XLINK_NS)

_LOCK = threading.Lock()
_URL_REF = re.compile(r"url\(#([^)]+)\)")
# Characters XML 1.0 cannot hold (C0 controls but tab and newline, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: object) -> str:
    """User text (a category, a column's name) as a label: any character XML cannot hold becomes
    U+FFFD, so that no name can break the SVG; the serializer escapes the rest."""
    return _NOT_XML.sub("\ufffd", str(value)).replace("\t", " ")  # no font draws a tab


@dataclass(frozen=True)
class Line:
    """One series of `line_chart`: (x, y) points, x a number, a date or a datetime; `right` draws
    it against the right-hand axis; `note` is what the page may print beside its name."""

    name: str
    points: Sequence[tuple[Any, float]]
    dashed: bool = False
    markers: bool = False
    right: bool = False
    note: str = ""


@dataclass(frozen=True)
class Bars:
    """One measure of `bar_chart`: a value per category (None: not released) and its 95% interval
    (lo, hi), or None where it has none."""

    name: str
    values: Sequence[float | None]
    intervals: Sequence[tuple[float, float] | None] = ()


@dataclass(frozen=True)
class Chart:
    """What `portal/_chart.html` renders: `svg` is safe markup (see the module's notes)."""

    id: str
    title: str
    svg: SafeString
    series: tuple[tuple[str, str, str], ...] = field(default=())  # (name, colour, note) per series


# --------------------------------------------------------------------------------------------
# the SVG: matplotlib's output made fit to inline


def _attributes_from_style(style: str) -> dict[str, str]:
    """`fill: #fff; stroke-width: 0.8` → {"fill": "#fff", "stroke-width": "0.8"}: matplotlib's SVG
    writer uses only properties that are also SVG presentation attributes (fill, stroke and its
    widths and dashes, opacity, font-size, font-family, font-weight, text-anchor, ...)."""
    attributes: dict[str, str] = {}
    for declaration in style.split(";"):
        name, _, value = declaration.partition(":")
        name, value = name.strip(), value.strip()
        if name and value:
            attributes[name] = value
    return attributes


def _inline_svg(raw: str, *, chart_id: str, title: str, gids: dict[str, str]) -> SafeString:
    root = ET.fromstring(raw)
    for parent in list(root.iter()):
        for child in list(parent):
            if child.tag in {f"{{{SVG_NS}}}metadata", f"{{{SVG_NS}}}style"}:
                parent.remove(child)
    href = f"{{{XLINK_NS}}}href"
    for element in root.iter():
        style = element.attrib.pop("style", None)
        if style:
            for name, value in _attributes_from_style(style).items():
                element.set(name, value)
        old = element.get("id")
        if old is not None:
            if old in gids:
                element.set("data-series", gids[old])
            else:
                element.set("id", f"{chart_id}-{old}")
        for attribute in ("clip-path", "mask", "filter"):
            reference = element.get(attribute)
            if reference:
                element.set(attribute, _URL_REF.sub(lambda m: f"url(#{chart_id}-{m.group(1)})", reference))
        target = element.get(href)
        if target and target.startswith("#"):
            element.set(href, f"#{chart_id}-{target[1:]}")
    # The document's defaults that matplotlib put in its <style> element.
    root.set("stroke-linejoin", "round")
    root.set("stroke-linecap", "butt")
    # Its natural size in CSS pixels (matplotlib writes points); `svg.plot` shrinks it to its container.
    for dimension in ("width", "height"):
        points = float(root.get(dimension, "0pt").removesuffix("pt"))
        root.set(dimension, f"{points * 4 / 3:.0f}")
    root.set("class", "plot")
    root.set("role", "img")
    root.set("aria-labelledby", f"{chart_id}-title")
    root.set("data-testid", chart_id)
    heading = ET.Element(f"{{{SVG_NS}}}title", {"id": f"{chart_id}-title"})
    heading.text = _text(title)
    root.insert(0, heading)
    ET.indent(root, space="")
    markup = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return mark_safe(markup)


def _render(figure: Figure, *, chart_id: str, title: str, gids: dict[str, str]) -> SafeString:
    buffer = io.StringIO()
    FigureCanvasSVG(figure)  # the figure's own canvas: no backend switch, no pyplot
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return _inline_svg(buffer.getvalue(), chart_id=chart_id, title=title, gids=gids)


def _figure(width: float, height: float, rows: int = 1) -> tuple[Figure, list[Any]]:
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, 1, squeeze=False, sharex=True)[:, 0]
    return figure, list(axes)


# The same input draws the same bytes, so the last charts drawn are kept and served again (a result
# page reloaded, the console's history reopened): drawing one takes matplotlib a good part of a second.
CACHE_SIZE = 64
_CACHE: OrderedDict[tuple[str, str], Chart] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_Draw = TypeVar("_Draw", bound=Callable[..., Chart])


def _memoized(draw: _Draw) -> _Draw:
    """Keeps the last `CACHE_SIZE` charts by their exact input (every argument is keyword-only)."""

    @functools.wraps(draw)
    def wrapper(**kwargs: Any) -> Chart:
        key = (draw.__name__, repr(sorted(kwargs.items())))
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
        chart = draw(**kwargs)
        with _CACHE_LOCK:
            _CACHE[key] = chart
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
        return chart

    return cast(_Draw, wrapper)


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text) or "chart"


# --------------------------------------------------------------------------------------------
# the two charts


@_memoized
def line_chart(
    *,
    chart_id: str,
    title: str,
    lines: Sequence[Line],
    x_label: str = "",
    y_label: str = "",
    right_label: str = "",
    y_range: tuple[float, float] | None = None,
    right_range: tuple[float, float] | None = None,
    integer_x: bool = False,
    width: float = 6.4,
    height: float = 2.8,
) -> Chart:
    """Lines over a shared x axis (numbers, dates or datetimes), each on the left axis or, with
    `Line.right`, on a second axis at the right (labelled `right_label`). A legend names them."""
    chart_id = _safe_id(chart_id)
    gids: dict[str, str] = {}
    series = []
    with _LOCK:
        figure, (axes,) = _figure(width, height)
        right_axes = axes.twinx() if any(line.right for line in lines) else None
        handles = []
        for index, line in enumerate(lines):
            colour = COLOURS[index % len(COLOURS)]
            target = right_axes if line.right and right_axes is not None else axes
            xs = [x for x, _ in line.points]
            ys = [math.nan if y is None else y for _, y in line.points]
            (drawn,) = target.plot(
                xs,
                ys,
                color=colour,
                linewidth=2,
                linestyle="--" if line.dashed else "-",
                marker="o" if line.markers else None,
                markersize=4,
                label=_text(line.name),
            )
            gid = f"{chart_id}-line-{index}"
            drawn.set_gid(gid)
            gids[gid] = _text(line.name)
            handles.append(drawn)
            series.append((line.name, colour, line.note))
        points = [x for line in lines for x, _ in line.points]
        if points and all(x == points[0] for x in points):  # one x only: give it some room
            only = points[0]
            if isinstance(only, datetime | date):
                axes.set_xlim(matplotlib.dates.date2num(only) - 1, matplotlib.dates.date2num(only) + 1)
            else:
                axes.set_xlim(only - 1, only + 1)
        if points and isinstance(points[0], datetime | date):
            if isinstance(points[0], datetime):
                locator = matplotlib.dates.AutoDateLocator(maxticks=6)
                axes.xaxis.set_major_locator(locator)
                axes.xaxis.set_major_formatter(matplotlib.dates.ConciseDateFormatter(locator))
            else:  # whole days: a tick per day or per few days, never at noon
                days = (max(points) - min(points)).days
                axes.xaxis.set_major_locator(
                    matplotlib.dates.DayLocator(interval=max(1, math.ceil(days / 5)))
                )
                axes.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%Y-%m-%d"))
        elif integer_x:
            axes.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
        if y_range is not None:
            axes.set_ylim(*y_range)
        if right_axes is not None:
            right_axes.spines["right"].set_visible(True)
            if right_range is not None:
                right_axes.set_ylim(*right_range)
            right_axes.set_ylabel(_text(right_label))
        axes.set_xlabel(_text(x_label))
        axes.set_ylabel(_text(y_label))
        axes.grid(axis="y", color="#dddddd", linestyle=":")
        if handles:
            axes.legend(handles=handles, loc="best", fontsize=8, frameon=False)
        svg = _render(figure, chart_id=chart_id, title=title, gids=gids)
    return Chart(id=chart_id, title=title, svg=svg, series=tuple(series))


@_memoized
def bar_chart(
    *,
    chart_id: str,
    title: str,
    categories: Sequence[str],
    measures: Sequence[Bars],
    value_label: str = "",
    category_label: str = "",
    shared_axis: bool = True,
    width: float = 6.4,
    height: float = 2.8,
) -> Chart:
    """Bars per category with asymmetric error bars from each value's 95% interval. Several measures
    are drawn side by side in each category on one axis (`shared_axis`), or each on its own panel
    with its own scale (for measures of different kinds, e.g. a count and a mean). Each measure's
    bars are a group with `data-series` = its name; its error bars one path per bar that has an
    interval, in a group with `data-series` = "<name> 95% interval"."""
    chart_id = _safe_id(chart_id)
    labels = [_text(c) for c in categories]
    gids: dict[str, str] = {}
    series = []
    panels = 1 if shared_axis else max(1, len(measures))
    with _LOCK:
        figure, axes_list = _figure(width, height if shared_axis else max(height, 1.8 * panels), panels)
        slot = 0.8 / max(1, len(measures)) if shared_axis else 0.6
        positions = list(range(len(labels)))
        for index, measure in enumerate(measures):
            colour = COLOURS[index % len(COLOURS)]
            axes = axes_list[0] if shared_axis else axes_list[index]
            offset = (index - (len(measures) - 1) / 2) * slot if shared_axis else 0.0
            xs = [p + offset for p in positions]
            values = [math.nan if v is None else float(v) for v in measure.values]
            name = _text(measure.name)
            container = axes.bar(xs, values, width=slot * 0.9, color=colour, label=name)
            for number, patch in enumerate(container.patches):
                gid = f"{chart_id}-bar-{index}-{number}"
                patch.set_gid(gid)
                gids[gid] = name
            ex, ey, below, above = [], [], [], []
            for x, value, interval in zip(xs, values, measure.intervals, strict=False):
                if interval is None or math.isnan(value):
                    continue
                lo, hi = interval
                ex.append(x)
                ey.append(value)
                below.append(max(0.0, value - lo))
                above.append(max(0.0, hi - value))
            if ex:
                errorbar = axes.errorbar(
                    ex, ey, yerr=[below, above], fmt="none", ecolor=ERROR_COLOUR, elinewidth=1.2, capsize=3
                )
                error_gid = f"{chart_id}-errors-{index}"
                errorbar.lines[2][0].set_gid(error_gid)
                gids[error_gid] = f"{name} 95% interval"
            series.append((measure.name, colour, ""))
            if not shared_axis:
                axes.set_title(name, fontsize=9, loc="left")
        for axes in axes_list:
            axes.axhline(0, color="#999999", linewidth=0.8)
            axes.grid(axis="y", color="#dddddd", linestyle=":")
            axes.set_axisbelow(True)
        bottom = axes_list[-1]
        slanted = len(labels) > 4 or max(map(len, labels), default=0) > 10
        bottom.set_xticks(
            positions,
            labels,
            rotation=30 if slanted else 0,
            ha="right" if slanted else "center",
            rotation_mode="anchor",
        )
        bottom.set_xlabel(_text(category_label))
        if shared_axis:
            axes_list[0].set_ylabel(_text(value_label))
            if len(measures) > 1:
                axes_list[0].legend(loc="best", fontsize=8, frameon=False)
        svg = _render(figure, chart_id=chart_id, title=title, gids=gids)
    return Chart(id=chart_id, title=title, svg=svg, series=tuple(series))
