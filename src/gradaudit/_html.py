"""One self-contained HTML page for one or many checks, with heat maps of disagreement.

The page needs nothing but itself: its styles are inline, its heat maps are HTML
tables coloured cell by cell, it runs no script, and a content security policy
forbids it to load anything. It can be attached to a CI run and opened anywhere,
offline, years later.

Stable markers for tools and tests: every check is a `<section class="check">` with
`data-name` and `data-verdict`; its leaves are rows of `<table class="summary">`;
every heat map is a `<figure class="heatmap">` with `data-leaf` and `data-pair`,
whose cells carry `data-index` and one of the classes `agree`, `mismatch`,
`unreliable` or `skipped`.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Iterable, Mapping

from ._report import MAX_MAP_ELEMENTS, ErrorMap, LeafReport, PairResult, Report
from ._taylor import TaylorResult

# A leaf of more than two dimensions shows at most this many 2-d slices per pair.
MAX_SLICES = 12
# A 1-d leaf longer than this wraps onto rows of this many elements.
ROW_LENGTH = 64
# The colour scale spans this many decades on each side of the tolerance.
DECADES = 6
# Heat map cells shrink so that a slice is at most about this wide, in pixels.
SLICE_WIDTH = 640

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin:0 0 8px}h3{font-size:15px;margin:18px 0 6px}
code,.path{font-family:ui-monospace,monospace}
section.check{border:1px solid #ccc;border-radius:6px;padding:16px;margin:20px 0}
.badge{display:inline-block;padding:1px 8px;border-radius:4px;color:#fff;
font-weight:600}
.badge.ok{background:#2e7d32}.badge.mismatch{background:#c62828}
table{border-collapse:collapse;margin:6px 0}
table.info td,table.info th,table.summary td,table.summary th,table.pairs td,
table.pairs th,table.taylor td,table.taylor th
{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}caption{text-align:left;color:#555}
td.ok{color:#2e7d32}td.bad{color:#c62828;font-weight:600}
dl.settings{display:grid;grid-template-columns:max-content auto;gap:2px 14px;
margin:6px 0}
dl.settings dt{color:#555}dl.settings dd{margin:0}
figure.heatmap{display:inline-block;vertical-align:top;margin:6px 18px 6px 0}
figcaption{font-size:13px;margin-bottom:4px}
table.cells{border-collapse:separate}
table.cells td{width:var(--cell);height:var(--cell);padding:0}
td.skipped{background:#fff;box-shadow:inset 0 0 0 1px #ccc}
td.unreliable{background:repeating-linear-gradient(45deg,#777 0 1px,#ddd 1px 3px)}
.slices{display:flex;flex-wrap:wrap;gap:10px}
.slice .label{font-size:11px;color:#555;font-family:ui-monospace,monospace}
.note{color:#555}
.legend{display:flex;flex-wrap:wrap;gap:4px 12px;align-items:center;font-size:12px}
.legend span.swatch{display:inline-block;width:14px;height:14px;margin-right:4px;
vertical-align:middle}
.diagnosis{background:#fff4e5;border-left:4px solid #ef6c00;padding:6px 10px}
"""

_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


def render_html(reports: Mapping[str, Report], title: str = "gradaudit report") -> str:
    """One self-contained HTML document covering every report in `reports`.

    Args:
        reports: the checks to show, keyed by a name such as a test id; the page
            keeps their order.
        title: the page's title and top heading.

    Returns:
        The document as a string. It loads nothing from anywhere (no network, no
        files, no script), so it can be saved and opened as it is.
    """
    sections = [
        _check_section(number, name, report)
        for number, (name, report) in enumerate(reports.items(), start=1)
    ]
    body = [
        f"<h1>{_e(title)}</h1>",
        _overview(reports),
        _contents(list(reports)),
        _legend(),
        *sections,
    ]
    return _document(title, "\n".join(part for part in body if part))


def _e(value: object) -> str:
    """Escape any value as HTML text or as a quoted attribute value."""
    return html.escape(str(value), quote=True)


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _index(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]"


def _verdict_badge(ok: bool) -> str:
    if ok:
        return '<span class="badge ok">OK</span>'
    return '<span class="badge mismatch">MISMATCH</span>'


# -- page level ----------------------------------------------------------------


def _overview(reports: Mapping[str, Report]) -> str:
    total = len(reports)
    if total == 0:
        return '<p class="overview">This report holds no checks.</p>'
    failing = sum(not report.ok for report in reports.values())
    noun = "check" if total == 1 else "checks"
    return (
        f'<p class="overview">{total} {noun}; {failing} with a mismatch,'
        f" {total - failing} OK.</p>"
    )


def _contents(names: list[str]) -> str:
    if len(names) < 2:
        return ""
    items = "".join(
        f'<li><a href="#check-{number}">{_e(name)}</a></li>'
        for number, name in enumerate(names, start=1)
    )
    return f'<nav><ul class="contents">{items}</ul></nav>'


def _legend() -> str:
    """The colour scale of the heat maps, with the two special cell kinds."""
    swatches = [
        f'<span><span class="swatch" style="background:{_colour(10.0**exponent)}">'
        f"</span>{_e(_legend_label(exponent))}</span>"
        for exponent in range(-DECADES, DECADES + 1, 2)
    ]
    swatches += [
        '<span><span class="swatch" style="background:'
        'repeating-linear-gradient(45deg,#777 0 1px,#ddd 1px 3px)"></span>'
        "unreliable (left out of the verdict)</span>",
        '<span><span class="swatch" style="box-shadow:inset 0 0 0 1px #ccc">'
        "</span>not compared</span>",
    ]
    return (
        '<div class="legend"><strong>Heat map colour:</strong> |a - b| divided by'
        " the element's tolerance, on a log scale; green to yellow agrees (at most"
        " 1), orange to red disagrees. " + "".join(swatches) + "</div>"
    )


def _legend_label(exponent: int) -> str:
    if exponent == 0:
        return "1 (the tolerance)"
    label = f"1e{exponent}"
    if exponent == -DECADES:
        return f"{label} or less"
    if exponent == DECADES:
        return f"{label} or more"
    return label


# -- one check -----------------------------------------------------------------


def _check_section(number: int, name: str, report: Report) -> str:
    verdict = "OK" if report.ok else "MISMATCH"
    parts = [
        f'<section class="check" id="check-{number}" data-name="{_e(name)}"'
        f' data-verdict="{verdict}">',
        f'<h2><span class="path">{_e(name)}</span> {_verdict_badge(report.ok)}</h2>',
        f'<p class="headline">{_e(_headline(report))}</p>',
        _settings(report),
        _sources(report),
        _findings(report.findings),
        _summary_table(report.leaves),
        _taylor_table(report.taylor),
        *(_leaf_section(leaf) for leaf in report.leaves),
        "</section>",
    ]
    return "\n".join(part for part in parts if part)


def _headline(report: Report) -> str:
    total = len(report.leaves)
    if report.ok:
        return f"Every pair of sources agrees on all {total} leaves."
    failing = len(report.failing_leaves)
    return f"Mismatch at {failing} of {total} leaves."


def _settings(report: Report) -> str:
    settings = report.settings
    rtols = ", ".join(
        f"{pair} {_number(rtol)}" for pair, rtol in settings.rtol_used.items()
    )
    versions = ", ".join(f"{name} {v}" for name, v in settings.versions.items())
    rows = [
        ("Mode", settings.mode),
        ("Finite differences", f"{settings.method}, step {_number(settings.step)}"),
        ("Seed", settings.seed),
        ("Reference precision", settings.reference_precision),
        ("Loss computed in", settings.loss_precision),
        ("Relative tolerance", rtols),
        ("Absolute tolerance", _number(settings.atol)),
        ("Device", settings.device),
        ("Versions", versions),
    ]
    items = "".join(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in rows)
    return f'<dl class="settings">{items}</dl>'


def _sources(report: Report) -> str:
    rows = "".join(
        f"<tr><td>{_e(name)}</td>"
        f"<td>{'yes' if info.available else 'no'}</td>"
        f"<td>{_e(info.dtype or '-')}</td><td>{_e(info.note)}</td></tr>"
        for name, info in report.sources.items()
    )
    return (
        '<table class="info sources"><tr><th>Source</th><th>Ran</th>'
        f"<th>Precision</th><th>Note</th></tr>{rows}</table>"
    )


def _findings(findings: Iterable[str]) -> str:
    items = "".join(f"<li>{_e(finding)}</li>" for finding in findings)
    return f'<ul class="findings">{items}</ul>' if items else ""


def _taylor_table(results: tuple[TaylorResult, ...]) -> str:
    if not results:
        return ""
    rows = "".join(
        f"<tr><td>{_e(result.source)}</td>"
        f'<td class="path">{_e(result.path)}</td>'
        f"<td>{_e(_number(result.order))}</td><td>{result.directions}</td>"
        + (
            '<td class="ok">consistent</td>'
            if result.ok
            else '<td class="bad">INCONSISTENT (expected order 2)</td>'
        )
        + "</tr>"
        for result in results
    )
    return (
        "<h3>Taylor-remainder test</h3>"
        '<table class="taylor"><tr><th>Source</th><th>Leaf</th><th>Order</th>'
        f"<th>Directions</th><th>Verdict</th></tr>{rows}</table>"
    )


# -- the summary table ---------------------------------------------------------

_SUMMARY_HEADER = (
    "Leaf",
    "Shape",
    "Dtype",
    "Verdict",
    "Worst pair",
    "Max rel. error",
    "Mismatched",
    "Compared",
    "Unreliable",
    "Diagnosis",
)


def _summary_table(leaves: tuple[LeafReport, ...]) -> str:
    header = "".join(f"<th>{name}</th>" for name in _SUMMARY_HEADER)
    rows = "".join(_summary_row(leaf) for leaf in leaves)
    return (
        '<table class="summary"><caption>One row per leaf; the counts and error'
        f" are the worst pair's.</caption><tr>{header}</tr>{rows}</table>"
    )


def _summary_row(leaf: LeafReport) -> str:
    worst = _worst_pair(leaf)
    if worst is None:
        pair_cells = "<td>-</td><td>-</td><td>-</td><td>-</td><td>-</td>"
    else:
        name, result = worst
        pair_cells = (
            f"<td>{_e(name)}</td><td>{_e(_number(result.max_rel_error))}</td>"
            f"<td>{result.mismatched}</td><td>{result.compared}</td>"
            f"<td>{result.unreliable}</td>"
        )
    diagnosis = leaf.diagnosis.summary if leaf.diagnosis is not None else ""
    return (
        f'<tr data-leaf="{_e(leaf.path)}"><td class="path">{_e(leaf.path)}</td>'
        f"<td>{_e(_shape(leaf.shape))}</td><td>{_e(leaf.dtype)}</td>"
        f"{_verdict_cell(leaf)}{pair_cells}<td>{_e(diagnosis)}</td></tr>"
    )


def _verdict_cell(leaf: LeafReport) -> str:
    text, kind = ("ok", "ok") if leaf.ok else ("MISMATCH", "bad")
    return (
        f'<td class="verdict {kind}" data-verdict="{_e(leaf.verdict)}"'
        f' title="{_e(leaf.explanation)}">{text}</td>'
    )


def _shape(shape: tuple[int, ...]) -> str:
    return (
        "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
    )


def _severity(result: PairResult) -> float:
    """How far the pair's worst element is beyond its tolerance (nan counts as inf)."""
    element = result.worst
    if element is None:
        return -math.inf
    ratio = element.abs_error / max(element.tolerance, 1e-300)
    return math.inf if math.isnan(ratio) else ratio


def _worst_pair(leaf: LeafReport) -> tuple[str, PairResult] | None:
    """The failing pair furthest beyond tolerance, else the closest to it."""
    if not leaf.pairs:
        return None
    return max(
        leaf.pairs.items(), key=lambda item: (not item[1].ok, _severity(item[1]))
    )


# -- one leaf ------------------------------------------------------------------


def _leaf_section(leaf: LeafReport) -> str:
    parts = [
        f'<section class="leaf" data-leaf="{_e(leaf.path)}">',
        f'<h3><span class="path">{_e(leaf.path)}</span>: shape'
        f" {_e(_shape(leaf.shape))}, {_e(leaf.dtype)} {_verdict_badge(leaf.ok)}</h3>",
        f'<p class="explanation">{_e(leaf.explanation)}</p>',
        _diagnosis(leaf),
        _pairs_table(leaf),
        f'<p class="note">Finite differences covered {_e(leaf.coverage)}.</p>',
        _kinks(leaf),
        _heatmaps(leaf),
        "</section>",
    ]
    return "\n".join(part for part in parts if part)


def _diagnosis(leaf: LeafReport) -> str:
    if leaf.diagnosis is None:
        return ""
    return (
        f'<p class="diagnosis"><strong>Likely mistake:</strong>'
        f" {_e(leaf.diagnosis.summary)}<br>{_e(leaf.diagnosis.evidence)}</p>"
    )


def _pairs_table(leaf: LeafReport) -> str:
    rows = "".join(_pair_row(name, result) for name, result in leaf.pairs.items())
    return (
        '<table class="pairs"><tr><th>Pair</th><th>Verdict</th><th>Compared</th>'
        "<th>Mismatched</th><th>Unreliable</th><th>Max abs. error</th>"
        f"<th>Max rel. error</th><th>Worst element</th></tr>{rows}</table>"
    )


def _pair_row(name: str, result: PairResult) -> str:
    verdict = '<td class="ok">ok</td>' if result.ok else '<td class="bad">MISMATCH</td>'
    worst = "-"
    if result.worst is not None:
        element = result.worst
        worst = (
            f"{element.location()}: {element.values_text()}; tolerance"
            f" {_number(element.tolerance)}"
        )
    return (
        f'<tr data-pair="{_e(name)}"><td>{_e(name)}</td>{verdict}'
        f"<td>{result.compared}</td><td>{result.mismatched}</td>"
        f"<td>{result.unreliable}</td><td>{_e(_number(result.max_abs_error))}</td>"
        f"<td>{_e(_number(result.max_rel_error))}</td><td>{_e(worst)}</td></tr>"
    )


def _kinks(leaf: LeafReport) -> str:
    if not leaf.kinks:
        return ""
    items = "".join(
        f"<li>{_e(_index(kink.index))}: left slope {_e(_number(kink.left))}, right"
        f" slope {_e(_number(kink.right))}; manual {_e(_number(kink.manual))}"
        f" ({_e(kink.manual_choice)}), autodiff {_e(_number(kink.autodiff))}"
        f" ({_e(kink.autodiff_choice)})</li>"
        for kink in leaf.kinks
    )
    return f'<p class="note">Kinks in the loss on this leaf:</p><ul>{items}</ul>'


def _heatmaps(leaf: LeafReport) -> str:
    size = math.prod(leaf.shape)
    if size == 0:
        return '<p class="no-map">This leaf has no elements, so it has no heat map.</p>'
    if not leaf.error_maps:
        if size > MAX_MAP_ELEMENTS:
            reason = (
                f"it has {size} elements, more than the {MAX_MAP_ELEMENTS} a report"
                " keeps an element-by-element map for"
            )
        else:
            reason = "the report holds no element-by-element map for it"
        return f'<p class="no-map">No heat map for this leaf: {_e(reason)}.</p>'
    figures = "".join(
        _heatmap(leaf, pair, error_map) for pair, error_map in leaf.error_maps.items()
    )
    return f'<div class="heatmaps">{figures}</div>'


# -- heat maps -----------------------------------------------------------------


def _heatmap(leaf: LeafReport, pair: str, error_map: ErrorMap) -> str:
    """One pair's disagreement over one leaf, as one or more 2-d tables."""
    result = leaf.pairs.get(pair)
    counts = f": {result.mismatched} of {result.compared} disagree" if result else ""
    caption = f"<figcaption>{_e(pair)}{_e(counts)}</figcaption>"
    unreliable = frozenset(error_map.unreliable)
    if len(leaf.shape) <= 2:
        rows, cols = _plane(leaf.shape)
        body = _cells_table(leaf.shape, 0, rows, cols, error_map, unreliable)
        if len(leaf.shape) == 1 and rows > 1:
            body = f'<p class="wrapped">Wrapped at {cols} elements per row.</p>{body}'
    else:
        body = _slices(leaf.shape, error_map, unreliable)
    return (
        f'<figure class="heatmap" data-leaf="{_e(leaf.path)}" data-pair="{_e(pair)}">'
        f"{caption}{body}</figure>"
    )


def _plane(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows and columns of one 2-d picture; a long 1-d leaf wraps."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        cols = min(shape[0], ROW_LENGTH)
        return math.ceil(shape[0] / cols), cols
    return shape[-2], shape[-1]


def _slices(
    shape: tuple[int, ...], error_map: ErrorMap, unreliable: frozenset[int]
) -> str:
    """A grid of 2-d slices over the last two axes, mismatching slices first."""
    rows, cols = shape[-2], shape[-1]
    per_slice = rows * cols
    leading = list(itertools.product(*(range(n) for n in shape[:-2])))

    def mismatches(number: int) -> bool:
        start = number * per_slice
        return any(r > 1 for r in error_map.over_tolerance[start : start + per_slice])

    ranked = sorted(range(len(leading)), key=lambda n: (not mismatches(n), n))
    shown = sorted(ranked[:MAX_SLICES])
    parts = []
    if len(leading) > len(shown):
        parts.append(
            f'<p class="capped">Showing {len(shown)} of {len(leading)} slices'
            " (those with mismatches first); the other"
            f" {len(leading) - len(shown)} are left out.</p>"
        )
    parts.append('<div class="slices">')
    for number in shown:
        label = _index(leading[number]).rstrip("]") + ", :, :]"
        table = _cells_table(
            shape, number * per_slice, rows, cols, error_map, unreliable
        )
        parts.append(
            f'<div class="slice" data-slice="{_e(_index(leading[number]))}">'
            f'<div class="label">{_e(label)}</div>{table}</div>'
        )
    parts.append("</div>")
    return "".join(parts)


def _cells_table(
    shape: tuple[int, ...],
    start: int,
    rows: int,
    cols: int,
    error_map: ErrorMap,
    unreliable: frozenset[int],
) -> str:
    """A table of `rows` x `cols` cells for flat indices from `start`, in C order."""
    size = len(error_map.over_tolerance)
    cell = max(3, min(16, SLICE_WIDTH // max(cols, 1)))
    spacing = 1 if cell >= 6 else 0
    lines = [
        f'<table class="cells" style="--cell:{cell}px;border-spacing:{spacing}px">'
    ]
    for row in range(rows):
        flats = range(start + row * cols, min(start + (row + 1) * cols, size))
        cells = "".join(_cell(shape, flat, error_map, unreliable) for flat in flats)
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table>")
    return "".join(lines)


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    index = []
    for extent in reversed(shape):
        flat, position = divmod(flat, extent)
        index.append(position)
    return tuple(reversed(index))


def _cell(
    shape: tuple[int, ...], flat: int, error_map: ErrorMap, unreliable: frozenset[int]
) -> str:
    index = _index(_unravel(flat, shape))
    ratio = error_map.over_tolerance[flat]
    relative = error_map.relative[flat]
    style = ""
    if flat in unreliable:
        state = "unreliable"
        tip = f"{index}: unreliable, left out of the verdict"
    elif math.isnan(ratio):
        state = "skipped"
        tip = f"{index}: not compared"
    else:
        state = "agree" if ratio <= 1 else "mismatch"
        tip = (
            f"{index}: {state}; relative error {_number(relative)},"
            f" {_number(ratio)} x tolerance"
        )
        style = f' style="background:{_colour(ratio)}"'
    return f'<td class="{state}" data-index="{index}" title="{_e(tip)}"{style}></td>'


def _colour(ratio: float) -> str:
    """A log-scale colour for `|a - b| / tolerance`: greens to yellow up to 1, then
    orange to dark red."""
    if ratio <= 0:
        exponent = -float(DECADES)
    elif math.isinf(ratio):
        exponent = float(DECADES)
    else:
        exponent = max(-DECADES, min(DECADES, math.log10(ratio)))
    if ratio <= 1:
        t = (exponent + DECADES) / DECADES
        hue, saturation, lightness = 145 - 85 * t, 55 + 25 * t, 80 - 10 * t
    else:
        t = exponent / DECADES
        hue, saturation, lightness = 35 - 35 * t, 90, 58 - 26 * t
    return f"hsl({hue:.0f},{saturation:.0f}%,{lightness:.0f}%)"
