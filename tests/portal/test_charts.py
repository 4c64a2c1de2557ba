"""The portal's one chart helper (`portal.charts`), drawn by matplotlib: well-formed SVG that inlines in
a page (no prolog, no script, no style), the same bytes for the same input, user text escaped, error
bars one per bar with an interval, and ids unique per chart."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from datetime import date

import pytest
from django.template.loader import render_to_string

from clearinghouse.portal.charts import Bars, Line, bar_chart, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    assert not svg.lstrip().startswith("<?xml") and "<!DOCTYPE" not in svg
    return ET.fromstring(svg)


def _series(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("data-series") == name]


def _grouped(categories=("north", "south", "east"), *, draw=bar_chart) -> object:
    return draw(
        chart_id="answer",
        title="count and mean by region",
        categories=list(categories),
        measures=[
            Bars("count", [120, 80, None], [(110.0, 130.0), (70.0, 90.0), None]),
            Bars("avg_age", [41.5, 38.0, 45.0], [(39.0, 44.0), (35.5, 41.0), (40.0, 50.0)]),
        ],
        value_label="value",
    )


def test_bar_chart_is_well_formed_inline_svg_with_a_title_and_no_script_or_style():
    chart = _grouped()
    root = _parse(chart.svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img" and root.get("aria-labelledby") == "answer-title"
    assert root.get("data-testid") == "answer" and root.get("viewBox")
    title = root.find(f"{SVG}title")
    assert (
        title is not None and title.text == "count and mean by region" and title.get("id") == "answer-title"
    )
    tags = {element.tag for element in root.iter()}
    assert f"{SVG}script" not in tags and f"{SVG}style" not in tags and f"{SVG}metadata" not in tags
    # matplotlib's inline styles became presentation attributes: nothing for a CSP to refuse.
    assert not any("style" in element.attrib for element in root.iter())
    assert not any(a.startswith("on") for element in root.iter() for a in element.attrib)
    # Text stays text: the labels are there to read and to search.
    texts = {element.text for element in root.iter(f"{SVG}text")}
    assert {"north", "south", "east", "count", "avg_age", "value"} <= texts


def test_error_bars_are_one_segment_per_bar_with_an_interval():
    root = _parse(_grouped().svg)
    count_bars, mean_bars = _series(root, "count"), _series(root, "avg_age")
    assert len(count_bars) == 3 and len(mean_bars) == 3  # one per category, even the unreleased one
    count_errors = _series(root, "count 95% interval")
    mean_errors = _series(root, "avg_age 95% interval")
    assert len(count_errors) == len(mean_errors) == 1
    # One vertical segment per bar that has an interval (count has none for "east").
    assert len(count_errors[0].findall(f"{SVG}path")) == 2
    assert len(mean_errors[0].findall(f"{SVG}path")) == len(mean_bars) == 3


def _ys(path: ET.Element) -> list[float]:
    """The y coordinates of an SVG path made of M/L/z commands, as matplotlib writes them."""
    numbers = [float(v) for v in path.get("d").replace("M", " ").replace("L", " ").replace("z", " ").split()]
    return numbers[1::2]


def test_error_bars_are_asymmetric_from_the_interval():
    """A bar of 10 with interval [8, 16]: its error bar reaches three times as far above as below."""
    chart = bar_chart(
        chart_id="asym", title="t", categories=["only"], measures=[Bars("m", [10.0], [(8.0, 16.0)])]
    )
    root = _parse(chart.svg)
    (errors,) = _series(root, "m 95% interval")
    (segment,) = errors.findall(f"{SVG}path")
    (bar,) = _series(root, "m")
    top_of_bar = min(_ys(bar.find(f"{SVG}path")))
    below, above = max(_ys(segment)) - top_of_bar, top_of_bar - min(_ys(segment))  # SVG y grows downwards
    assert below > 0 and above == pytest.approx(3 * below, rel=0.01)


def test_same_input_same_bytes_and_different_input_different_bytes():
    # Drawn twice for real (past the cache), the bytes are the same.
    fresh = bar_chart.__wrapped__
    assert str(_grouped(draw=fresh).svg) == str(_grouped(draw=fresh).svg)
    assert str(_grouped(draw=fresh).svg) != str(_grouped(("north", "south", "west"), draw=fresh).svg)
    # ... so the helper keeps the last ones drawn and serves them again.
    assert _grouped() is _grouped() and str(_grouped().svg) == str(_grouped(draw=fresh).svg)
    lines = [Line("org-b", [(date(2026, 1, 1), 0.0), (date(2026, 1, 3), 0.2)], markers=True)]
    first = line_chart.__wrapped__(chart_id="spend", title="Spending", lines=lines)
    assert str(first.svg) == str(line_chart.__wrapped__(chart_id="spend", title="Spending", lines=lines).svg)


def test_user_text_is_escaped_and_never_mathtext():
    evil = "<script>alert(1)</script>"
    chart = bar_chart(
        chart_id="x",
        title=f"by {evil}",
        categories=[evil, "$\\frac{1}{0}$", 'a"b&c'],
        measures=[Bars(evil, [1, 2, 3], [(0, 2), (1, 3), (2, 4)])],
    )
    svg = str(chart.svg)
    assert "<script" not in svg and "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    root = _parse(svg)
    texts = {element.text for element in root.iter(f"{SVG}text")}
    assert evil in texts and "$\\frac{1}{0}$" in texts and 'a"b&c' in texts
    assert root.find(f"{SVG}title").text == f"by {evil}"
    assert len(_series(root, evil)) == 3  # the measure's name reaches an attribute escaped, too
    # Rendered through the one include, the markup is not escaped a second time.
    page = render_to_string("portal/_chart.html", {"chart": chart})
    assert page.count("<svg") == 1 and "&amp;lt;script" not in page


def test_two_charts_on_one_page_share_no_id():
    first = _parse(
        bar_chart(chart_id="a", title="a", categories=["x"], measures=[Bars("m", [1], [(0, 2)])]).svg
    )
    second = _parse(
        bar_chart(chart_id="b", title="b", categories=["x"], measures=[Bars("m", [1], [(0, 2)])]).svg
    )
    ids_a = {e.get("id") for e in first.iter() if e.get("id")}
    ids_b = {e.get("id") for e in second.iter() if e.get("id")}
    assert ids_a and ids_b and not ids_a & ids_b
    assert all(i.startswith("a-") for i in ids_a)
    # Every local reference points at an id of the same chart.
    for element in first.iter():
        for value in element.attrib.values():
            if "url(#" in value:
                assert value.split("url(#", 1)[1].rstrip(")") in ids_a


def test_panels_for_measures_of_different_kinds():
    chart = bar_chart(
        chart_id="p",
        title="t",
        categories=["a", "b"],
        measures=[
            Bars("count", [100, 200], [(90, 110), (190, 210)]),
            Bars("mean", [0.5, 0.6], [(0.4, 0.6), (0.5, 0.7)]),
        ],
        shared_axis=False,
    )
    root = _parse(chart.svg)
    axes = [e for e in root.iter() if (e.get("id") or "").startswith("p-axes_")]
    assert len(axes) == 2
    assert len(_series(root, "count")) == 2 and len(_series(root, "mean")) == 2


def test_line_chart_draws_dated_lines_and_a_right_axis():
    chart = line_chart(
        chart_id="rounds",
        title="Accuracy and loss per round",
        lines=[
            Line("accuracy", [(1, 0.6), (2, 0.7), (3, 0.8)], markers=True),
            Line("loss", [(1, 0.9), (2, 0.5), (3, 0.3)], dashed=True, right=True),
        ],
        x_label="round",
        y_label="accuracy",
        right_label="loss",
        y_range=(0.0, 1.0),
        integer_x=True,
    )
    root = _parse(chart.svg)
    (accuracy,) = _series(root, "accuracy")
    (loss,) = _series(root, "loss")
    assert loss.find(f"{SVG}path").get("stroke-dasharray")  # dashed
    assert accuracy.find(f"{SVG}path").get("stroke-dasharray") is None
    texts = [element.text for element in root.iter(f"{SVG}text")]
    assert {"round", "accuracy", "loss"} <= set(texts)
    assert chart.series[0][0] == "accuracy" and chart.series[1][0] == "loss"
    # One day only: still drawn (a single x is given room instead of an empty axis).
    single = line_chart(
        chart_id="one", title="t", lines=[Line("org", [(date(2026, 1, 1), 0.0), (date(2026, 1, 1), 0.2)])]
    )
    assert _series(_parse(single.svg), "org")


def test_charts_drawn_from_several_threads_at_once_are_identical():
    expected = str(_grouped(draw=bar_chart.__wrapped__).svg)
    outputs: list[str] = []

    def draw() -> None:
        outputs.append(str(_grouped(draw=bar_chart.__wrapped__).svg))  # each drawn, none cached

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outputs == [expected] * 4


def test_characters_xml_cannot_hold_do_not_break_the_chart():
    chart = bar_chart(
        chart_id="ctl",
        title="t\x00",
        categories=["bell\x07", "tab\tok"],
        measures=[Bars("m\x1b", [1, 2], [(0, 2), (1, 3)])],
    )
    root = _parse(chart.svg)
    texts = {element.text for element in root.iter(f"{SVG}text")}
    assert "bell\ufffd" in texts and len(_series(root, "m\ufffd")) == 2
    assert root.find(f"{SVG}title").text == "t\ufffd"
