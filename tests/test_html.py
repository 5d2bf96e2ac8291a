"""The HTML report: its structure, its escaping, and what Chromium makes of it."""

from __future__ import annotations

import colorsys
import dataclasses
import itertools
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import gradaudit
from gradaudit import Report
from gradaudit._html import MAX_SLICES, ROW_LENGTH, render_html

PAIRS = ("manual-autodiff", "manual-fd", "autodiff-fd")
BUGGY_ROW = 2
CELL_STATES = {"agree", "mismatch", "unreliable", "skipped"}

# -- a small DOM, built with the standard library's parser ----------------------

VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})


@dataclasses.dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = dataclasses.field(default_factory=list)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        """Descendants with this tag whose attributes include `attrs`; `data_leaf`
        stands for `data-leaf`, and `class_` matches one class among several."""
        wanted = {
            key.rstrip("_").replace("_", "-"): value for key, value in attrs.items()
        }
        return [
            node
            for node in self.walk()
            if node.tag == tag
            and all(
                value in node.classes
                if key == "class"
                else node.attrs.get(key) == value
                for key, value in wanted.items()
            )
        ]

    def find(self, tag: str, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    @property
    def text(self) -> str:
        return "".join(
            child if isinstance(child, str) else child.text for child in self.children
        )


class _TreeBuilder(HTMLParser):
    """Builds a `Node` tree, insisting that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {key: value or "" for key, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(document: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(document)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def cells(figure: Node) -> dict[str, str]:
    """Every heat map cell of a figure: its `data-index` and its state class."""
    found = {}
    for cell in figure.find_all("td"):
        (state,) = CELL_STATES.intersection(cell.classes)
        found[cell.attrs["data-index"]] = state
    return found


# -- real reports ----------------------------------------------------------------


def _dense_loss(params: dict[str, Any], x: Any) -> Any:
    return jnp.sum(jnp.tanh(x @ params["W"] + params["b"]) ** 2)


def _dense_grad(params: dict[str, Any], x: np.ndarray) -> dict[str, np.ndarray]:
    hidden = np.tanh(x @ params["W"] + params["b"])
    upstream = 2 * hidden * (1 - hidden**2)
    return {"W": x.T @ upstream, "b": upstream.sum(axis=0)}


def _dense_grad_buggy_row(
    params: dict[str, Any], x: np.ndarray
) -> dict[str, np.ndarray]:
    grads = _dense_grad(params, x)
    grads["W"][BUGGY_ROW] *= 1.5
    return grads


def _dense(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    params = {"W": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    return params, rng.normal(size=(5, 4))


def dense_check(rng: np.random.Generator, buggy: bool, **options: Any) -> Report:
    params, x = _dense(rng)
    grad = _dense_grad_buggy_row if buggy else _dense_grad
    return gradaudit.check(_dense_loss, params, x, grad=grad, **options)


# The two dense-layer reports are shared by many tests, so they are built once per
# module, from a generator of their own (the `rng` fixture is per test).
@pytest.fixture(scope="module")
def buggy() -> Report:
    return dense_check(np.random.default_rng(11), buggy=True, taylor=True)


@pytest.fixture(scope="module")
def correct() -> Report:
    return dense_check(np.random.default_rng(12), buggy=False)


# -- structure -------------------------------------------------------------------


def test_buggy_row_cells_are_mismatches_and_all_others_agree(buggy: Report) -> None:
    page = parse(render_html({"dense": buggy}))
    section = page.find("section", class_="check", data_name="dense")
    assert section.attrs["data-verdict"] == "MISMATCH"

    every = {f"[{i}, {j}]" for i in range(4) for j in range(3)}
    in_buggy_row = {f"[{BUGGY_ROW}, {j}]" for j in range(3)}
    for pair in ("manual-autodiff", "manual-fd"):
        found = cells(section.find("figure", data_leaf="['W']", data_pair=pair))
        assert set(found) == every
        assert {i for i, state in found.items() if state == "mismatch"} == in_buggy_row
        assert {i for i, state in found.items() if state == "agree"} == (
            every - in_buggy_row
        )
    # jax.grad and finite differences agree everywhere, and `b` is right.
    autodiff_fd = cells(
        section.find("figure", data_leaf="['W']", data_pair="autodiff-fd")
    )
    assert set(autodiff_fd.values()) == {"agree"}
    for pair in PAIRS:
        b_cells = cells(section.find("figure", data_leaf="['b']", data_pair=pair))
        assert b_cells == {"[0]": "agree", "[1]": "agree", "[2]": "agree"}


def test_cells_carry_a_tooltip_and_a_colour_on_the_right_side_of_the_scale(
    buggy: Report,
) -> None:
    page = parse(render_html({"dense": buggy}))
    figure = page.find("figure", data_leaf="['W']", data_pair="manual-autodiff")
    for cell in figure.find_all("td"):
        title = cell.attrs["title"]
        assert title.startswith(cell.attrs["data-index"] + ": ")
        assert "relative error" in title and "x tolerance" in title
        hue, _, _ = _hsl(cell.attrs["style"])
        if "mismatch" in cell.classes:
            assert hue <= 35, "mismatch colours run from orange to red"
        else:
            assert hue >= 60, "agreement colours run from green to yellow"


def test_summary_table_has_one_row_per_leaf_with_its_verdict(buggy: Report) -> None:
    page = parse(render_html({"dense": buggy}))
    table = page.find("table", class_="summary")
    header = [cell.text for cell in table.find_all("th")]
    rows = {row.attrs["data-leaf"]: row for row in table.find_all("tr") if row.attrs}
    assert list(rows) == ["['W']", "['b']"]

    w = dict(
        zip(header, (cell.text for cell in rows["['W']"].find_all("td")), strict=True)
    )
    assert w["Shape"] == "(4, 3)" and w["Dtype"] == "float64"
    assert w["Verdict"] == "MISMATCH"
    assert w["Worst pair"] in {"manual-autodiff", "manual-fd"}
    assert (w["Mismatched"], w["Compared"], w["Unreliable"]) == ("3", "12", "0")
    diagnosis = buggy.leaf("['W']").diagnosis
    assert w["Diagnosis"] == (diagnosis.summary if diagnosis is not None else "")
    b = dict(
        zip(header, (cell.text for cell in rows["['b']"].find_all("td")), strict=True)
    )
    assert b["Verdict"] == "ok" and b["Mismatched"] == "0"


def test_settings_sources_findings_and_taylor_results_are_shown(buggy: Report) -> None:
    page = parse(render_html({"dense": buggy}))
    settings = page.find("dl", class_="settings")
    shown = dict(
        zip(
            (dt.text for dt in settings.find_all("dt")),
            (dd.text for dd in settings.find_all("dd")),
            strict=True,
        )
    )
    assert shown["Mode"] == buggy.settings.mode
    assert shown["Seed"] == str(buggy.settings.seed)
    assert shown["Reference precision"] == buggy.settings.reference_precision
    assert shown["Device"] == buggy.settings.device
    assert buggy.settings.method in shown["Finite differences"]

    sources = page.find("table", class_="sources")
    assert [row.find_all("td")[0].text for row in sources.find_all("tr")[1:]] == list(
        buggy.sources
    )
    assert buggy.findings, "the Taylor test adds a finding on the buggy leaf"
    findings = page.find("ul", class_="findings")
    assert [item.text for item in findings.find_all("li")] == list(buggy.findings)

    taylor = page.find("table", class_="taylor")
    verdicts = {
        (row.find_all("td")[0].text, row.find_all("td")[1].text): row.find_all("td")[4]
        for row in taylor.find_all("tr")[1:]
    }
    assert verdicts[("manual", "['W']")].text.startswith("INCONSISTENT")
    assert verdicts[("autodiff", "['W']")].text == "consistent"


def test_one_document_holds_many_checks_in_order(
    correct: Report, buggy: Report
) -> None:
    document = render_html({"test_ok": correct, "test_bug": buggy}, title="CI run")
    page = parse(document)
    assert page.find("title").text == "CI run"
    sections = page.find_all("section", class_="check")
    assert [(s.attrs["data-name"], s.attrs["data-verdict"]) for s in sections] == [
        ("test_ok", "OK"),
        ("test_bug", "MISMATCH"),
    ]
    links = page.find("ul", class_="contents").find_all("a")
    assert [(a.attrs["href"], a.text) for a in links] == [
        ("#check-1", "test_ok"),
        ("#check-2", "test_bug"),
    ]
    assert [s.attrs["id"] for s in sections] == ["check-1", "check-2"]
    ok_states = {
        state
        for figure in sections[0].find_all("figure", class_="heatmap")
        for state in cells(figure).values()
    }
    assert ok_states == {"agree"}
    assert page.find("p", class_="overview").text == (
        "2 checks; 1 with a mismatch, 1 OK."
    )


def test_an_empty_mapping_gives_a_page_that_says_so() -> None:
    page = parse(render_html({}))
    assert page.find_all("section", class_="check") == []
    assert page.find("p", class_="overview").text == "This report holds no checks."


def test_all_text_is_escaped(rng: np.random.Generator) -> None:
    key = "<b>&\"x'"

    def loss(params: dict[str, Any]) -> Any:
        return jnp.sum(params[key] ** 3)

    report = gradaudit.check(
        loss, {key: rng.normal(size=2)}, grad=lambda p: {key: 3 * p[key] ** 2}
    )
    (path,) = (leaf.path for leaf in report.leaves)
    name = "test_x[<script>alert(1)</script>]"
    document = render_html({name: report}, title="<i>title</i> & more")

    assert "<script" not in document and "<b>" not in document and "<i>" not in document
    page = parse(document)
    assert {node.tag for node in page.walk()}.isdisjoint({"script", "b", "i"})
    assert page.find("title").text == "<i>title</i> & more"
    assert page.find("section", class_="check").attrs["data-name"] == name
    assert page.find("tr", data_leaf=path).find_all("td")[0].text == path
    assert len(page.find_all("figure", class_="heatmap", data_leaf=path)) == 3


def test_page_loads_nothing_from_outside(buggy: Report) -> None:
    document = render_html({"dense": buggy})
    for outside in (
        "http://",
        "https://",
        "src=",
        "url(",
        "@import",
        "<link",
        "<script",
    ):
        assert outside not in document
    policy = parse(document).find("meta", http_equiv="Content-Security-Policy")
    assert "default-src 'none'" in policy.attrs["content"]


def _kernel_loss(params: dict[str, Any]) -> Any:
    return (
        jnp.sum(jnp.sin(params["kernel"]))
        + jnp.sum(params["long"] ** 2)
        + jnp.maximum(params["gate"], 0.0)
    )


def _kernel_grad(params: dict[str, Any]) -> dict[str, np.ndarray]:
    kernel = np.cos(params["kernel"])
    kernel[1, 3, 0, 2] *= 1.01
    # At gate == 0 the loss has a kink; 1 (the right slope) is a valid choice.
    return {"kernel": kernel, "long": 2 * params["long"], "gate": np.array(1.0)}


def test_leaves_of_every_rank_are_laid_out_and_slices_capped(
    rng: np.random.Generator,
) -> None:
    params = {
        "kernel": rng.normal(size=(2, 7, 2, 3)),
        "long": rng.normal(size=ROW_LENGTH + 6),
        "gate": np.array(0.0),
    }
    report = gradaudit.check(_kernel_loss, params, grad=_kernel_grad)
    page = parse(render_html({"ranks": report}))

    # Four dimensions: a grid of 2 x 3 slices, mismatching slices first, capped.
    figure = page.find("figure", data_leaf="['kernel']", data_pair="manual-autodiff")
    slices = figure.find_all("div", class_="slice")
    assert len(slices) == MAX_SLICES < 14
    assert "Showing 12 of 14 slices" in figure.find("p", class_="capped").text
    shown = [s.attrs["data-slice"] for s in slices]
    assert "[1, 3]" in shown and shown == sorted(shown)
    for piece in slices:
        assert len(piece.find_all("tr")) == 2
        assert all(len(row.find_all("td")) == 3 for row in piece.find_all("tr"))
    found = cells(figure)
    assert {i for i, state in found.items() if state == "mismatch"} == {"[1, 3, 0, 2]"}
    assert len(found) == MAX_SLICES * 6

    # One dimension, longer than a row: wrapped, with every index once.
    figure = page.find("figure", data_leaf="['long']", data_pair="manual-fd")
    rows = figure.find_all("tr")
    assert [len(row.find_all("td")) for row in rows] == [ROW_LENGTH, 6]
    assert figure.find("p", class_="wrapped").text == (
        f"Wrapped at {ROW_LENGTH} elements per row."
    )
    assert list(cells(figure)) == [f"[{i}]" for i in range(ROW_LENGTH + 6)]

    # Zero dimensions, at a kink: one cell, marked as left out of the verdict.
    for pair in PAIRS:
        figure = page.find("figure", data_leaf="['gate']", data_pair=pair)
        assert cells(figure) == {"[]": "unreliable"}


def test_a_leaf_too_large_for_an_error_map_says_so(rng: np.random.Generator) -> None:
    weights = rng.normal(size=(129, 128))
    report = gradaudit.check(lambda w: jnp.sum(jnp.sin(w)), weights, grad=np.cos)
    (leaf,) = report.leaves
    assert leaf.error_maps == {}

    page = parse(render_html({"large": report}))
    assert page.find_all("figure", class_="heatmap") == []
    sentence = page.find("p", class_="no-map").text
    assert "16512 elements" in sentence and "16384" in sentence


# -- rendered by a real browser ------------------------------------------------------

INSTALL_HINT = (
    "Chromium is needed to render the HTML report; install Debian's `chromium`"
    " package (`apt-get install --no-install-recommends chromium`)."
)


def find_chromium(default: str = "/usr/bin/chromium") -> str:
    """Chromium's path; skips the test without it, or fails when CI requires it."""
    found = shutil.which("chromium") or (
        default if os.access(default, os.X_OK) else None
    )
    if found is not None:
        return found
    if os.environ.get("GRADAUDIT_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"GRADAUDIT_REQUIRE_CHROMIUM=1 but no Chromium. {INSTALL_HINT}")
    pytest.skip(f"No `chromium` on PATH or at {default}. {INSTALL_HINT}")


@pytest.fixture
def chromium() -> str:
    return find_chromium()


@pytest.mark.parametrize(
    ("required", "outcome"), [("1", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_chromium_skips_unless_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, required: str, outcome: Any
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("GRADAUDIT_REQUIRE_CHROMIUM", required)
    with pytest.raises(outcome, match="install Debian's `chromium` package"):
        find_chromium(default=str(tmp_path / "chromium"))


def _run_chromium(chromium: str, tmp_path: Path, *flags: str, page: Path) -> str:
    completed = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            *flags,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def test_chromium_renders_the_leaf_path_and_verdict(
    chromium: str, tmp_path: Path, buggy: Report
) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html({"test_dense": buggy}), encoding="utf-8")
    dom = parse(_run_chromium(chromium, tmp_path, "--dump-dom", page=page))

    section = dom.find("section", class_="check", data_name="test_dense")
    assert "MISMATCH" in section.find("h2").text
    heading = section.find("section", class_="leaf", data_leaf="['W']").find_all("h3")
    assert "['W']" in heading[0].text and "MISMATCH" in heading[0].text
    figure = section.find("figure", data_leaf="['W']", data_pair="manual-autodiff")
    assert len(figure.find_all("td", class_="mismatch")) == 3


def test_chromium_screenshot_shows_the_heat_map_colours(
    chromium: str, tmp_path: Path, buggy: Report
) -> None:
    document = render_html({"test_dense": buggy})
    page = tmp_path / "report.html"
    page.write_text(document, encoding="utf-8")
    shot = tmp_path / "report.png"
    _run_chromium(
        chromium,
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1200,2400",
        "--hide-scrollbars",
        page=page,
    )

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    width, rows = decode_png(data)
    assert (width, len(rows)) == (1200, 2400)
    sampled = {row[x : x + 3] for row in rows[::7] for x in range(0, len(row), 3)}
    assert len(sampled) > 20, "the screenshot is (nearly) one colour"

    # Each heat map colour in the page covers at least one 16 x 16 pixel cell.
    figure = parse(document).find(
        "figure", data_leaf="['W']", data_pair="manual-autodiff"
    )
    for state in ("mismatch", "agree"):
        style = figure.find_all("td", class_=state)[0].attrs["style"]
        expected = _rgb(*_hsl(style))
        assert _pixels_near(rows, expected) >= 16 * 16, (
            f"no {state} cells of colour {tuple(expected)} on screen"
        )


def _pixels_near(rows: list[bytes], colour: bytes) -> int:
    """How many pixels are within 1 of `colour` in every channel (rounding)."""
    candidates = {
        bytes(channel + offset for channel, offset in zip(colour, offsets, strict=True))
        for offsets in itertools.product((-1, 0, 1), repeat=3)
        if all(0 <= c + o <= 255 for c, o in zip(colour, offsets, strict=True))
    }
    return sum(row.count(candidate) for row in rows for candidate in candidates)


def _hsl(style: str) -> tuple[float, float, float]:
    match = re.search(r"hsl\((\d+),(\d+)%,(\d+)%\)", style)
    assert match is not None, style
    hue, saturation, lightness = (float(group) for group in match.groups())
    return hue, saturation, lightness


def _rgb(hue: float, saturation: float, lightness: float) -> bytes:
    red, green, blue = colorsys.hls_to_rgb(hue / 360, lightness / 100, saturation / 100)
    return bytes(round(channel * 255) for channel in (red, green, blue))


# -- a minimal PNG decoder: 8-bit RGB or RGBA, not interlaced ------------------------


def decode_png(data: bytes) -> tuple[int, list[bytes]]:
    """The width, and every row of pixels as RGB bytes."""
    position, chunks, compressed = 8, {}, bytearray()
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(
            ">I", data[position + 8 + length : position + 12 + length]
        )
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IDAT":
            compressed += body
        chunks[kind] = body
        position += 12 + length
    assert b"IEND" in chunks
    width, height, depth, colour, _, _, interlace = struct.unpack(
        ">IIBBBBB", chunks[b"IHDR"]
    )
    assert depth == 8 and colour in (2, 6) and interlace == 0, "unsupported PNG"
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(compressed))
    stride = width * channels
    assert len(raw) == height * (stride + 1)

    rows, previous = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = bytearray(raw[start + 1 : start + 1 + stride])
        row = _unfilter(raw[start], row, previous, channels)
        if channels == 4:
            rgb = bytearray(width * 3)
            for channel in range(3):
                rgb[channel::3] = row[channel::4]
            rows.append(bytes(rgb))
        else:
            rows.append(bytes(row))
        previous = row
    return width, rows


def _unfilter(kind: int, row: bytearray, above: bytearray, step: int) -> bytearray:
    if kind == 0:
        return row
    if kind == 2:
        return bytearray((a + b) & 255 for a, b in zip(row, above, strict=True))
    for i in range(len(row)):
        left = row[i - step] if i >= step else 0
        up_left = above[i - step] if i >= step else 0
        if kind == 1:
            predicted = left
        elif kind == 3:
            predicted = (left + above[i]) // 2
        else:
            assert kind == 4, f"unknown PNG filter {kind}"
            guess = left + above[i] - up_left
            distances = (abs(guess - left), abs(guess - above[i]), abs(guess - up_left))
            predicted = (left, above[i], up_left)[distances.index(min(distances))]
        row[i] = (row[i] + predicted) & 255
    return row


def test_report_to_html_is_the_one_check_page(buggy: Report) -> None:
    page = buggy.to_html(title="One check")
    assert page == render_html({"check": buggy}, "One check")
    assert "<title>One check</title>" in page
