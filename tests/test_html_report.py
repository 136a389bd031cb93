"""compress report: the HTML page of real runs (a prune job on a model whose path holds markup, with one gate
passed and one breached; a recipe that factorizes, calibrates Double Sparsity and evaluates with it). Checked:
markup is escaped, two runs give two columns, the tables' numbers equal report.json (recomputed where they are
derived) to the printed precision, bad input is one line and exit 2 with nothing written, an existing file is
replaced only with --force and only if compress wrote it; each chart's matplotlib figure plots report.json's values
(recomputed from its raw results: a layer's sparsity from its Linears' zero counts); the page is the same bytes
twice, with unique ids; and, in headless Chromium, every chart renders with bar heights proportional to those
values and nothing is fetched."""
from __future__ import annotations

import html
import json
import math
import re
import xml.etree.ElementTree as ET
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from compress.cli import app
from compress.html_report.browser import missing as browser_missing
from tests.conftest import TEXT, save_tiny_model

runner = CliRunner()
MARKUP = '<script>alert(1)<script><img src=x onerror=alert(2)>&amp;"m"'  # a folder name: no slash
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "em", "section",
                "table", "thead", "tbody", "tr", "th", "td", "div", "figure", "figcaption", "details", "summary", "pre",
                # matplotlib's SVG
                "svg", "defs", "g", "path", "use", "clippath", "rect", "text"}
NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
MARK = re.compile(r"-(bar|cell)-(\d+)-(\d+)$")  # a bar's or heatmap cell's gid, after its chart's prefix


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    text = root / "text.txt"
    text.write_text(TEXT)
    model = save_tiny_model(root / MARKUP)
    evaluation = ["--eval", "--eval-text", text, "--eval-tokens", 256, "--eval-context", 64]
    pruned = root / "pruned"
    result = invoke("prune", model, "--text", text, "--nsamples", 2, "--seqlen", 32, *evaluation, "--out", pruned,
                    "-q", "--gate", "ppl_ratio<=1000", "--gate", "ppl<=1")
    assert result.exit_code == 3, result.output  # the second gate is breached; everything is written anyway
    recipe = root / "factorize-ds.yaml"
    recipe.write_text(f"model: {save_tiny_model(root / 'plain')}\n"
                      f"calibrate: {{text: {text}, nsamples: 2, seqlen: 64}}\n"
                      "stages:\n  - factorize: {experts: 4, top_k: 2, steps: 5}\n"
                      f"  - attention: {{channel_file: {root / 'channels.json'}}}\n"
                      f"  - eval: {{text: {text}, tokens: 256, context: 64, double_sparsity: "
                      f"{{channel_file: {root / 'channels.json'}, tokens: '1/4', dense_layers: 0}}}}\n"
                      "gates: [ppl_ratio<=1000]\n")
    factorized = root / "factorized"
    result = invoke("run", recipe, "--out", factorized, "-q")
    assert result.exit_code == 0, result.output
    return [pruned, factorized]


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def stage(report: dict, kind: str) -> dict:
    return next(s for s in report["stages"] if s["kind"] == kind)


class Page(HTMLParser):
    """Every tag and attribute, and each table's rows as cell texts (header row first)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.tables = set(), [], {}
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += attrs
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs)["id"], [])
        elif tag == "tr":
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def agrees(text: str, value: float, scale: float = 1.0) -> bool:
    """`text` is `value` × scale rounded to the digits printed (half a unit in the last place)."""
    text = text.strip().removesuffix("%")
    value *= scale
    if not math.isfinite(value):
        return text == ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    printed = Decimal(text)
    half_unit = Decimal(1).scaleb(printed.as_tuple().exponent) / 2
    return abs(Decimal(repr(value)) - printed) <= half_unit * Decimal("1.000001")


def expected_numbers(report: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """{(table, row label): (value, scale)} recomputed from report.json's raw results."""
    expected = {("summary-table", "seed"): (report["seed"], 1),
                ("summary-table", "total seconds"): (report["seconds_total"], 1),
                ("timings-table", "whole job"): (report["seconds_total"], 1)}
    for s in report["stages"]:
        expected[("timings-table", f"{s['name']} ({s['kind']})")] = (s["seconds"], 1)
    for name, value in report["metrics"].items():
        expected[("named-metrics-table", name)] = (value, 1)
    for g in report["gates"]:
        expected[("gates-table", f"{g['metric']} {g['op']} {g['limit']:g}")] = (g["measured"], 1)
    ev = stage(report, "eval")["result"]
    before, after = ev["before"]["perplexity"], ev["after"]["perplexity"]
    expected.update({("metrics-table", "eval · perplexity before"): (before, 1),
                     ("metrics-table", "eval · perplexity after"): (after, 1),
                     ("metrics-table", "eval · perplexity after / before"): (after / before, 1)})
    if "kept_share" in ev["after"]:
        expected[("metrics-table", "eval · kept share of visible tokens")] = (ev["after"]["kept_share"], 100)
        expected[("metrics-table", "eval · tokens kept per query")] = (ev["after"]["kept_per_query"], 1)
    for kind in ("prune", "factorize"):
        if any(s["kind"] == kind for s in report["stages"]):
            layers = stage(report, kind)["result"]["layers"]
            mean = sum(layer["relative_error"] for layer in layers) / len(layers)
            expected[("metrics-table", f"{kind} · mean relative error per layer")] = (mean, 1)
            expected[("metrics-table", f"{kind} · layers")] = (len(layers), 1)
    if any(s["kind"] == "prune" for s in report["stages"]):
        linears = stage(report, "prune")["result"]["linears"].values()
        zeros = sum(x["zeros"] for x in linears) / sum(x["numel"] for x in linears)
        expected[("metrics-table", "prune · sparsity of pruned Linears")] = (zeros, 100)
    return expected


def check_numbers(tables: dict[str, list[list[str]]], reports: list[dict]) -> int:
    """Each expected number is in its row, in its run's column, to the printed precision; returns how many."""
    checked = 0
    by_label = {table: {row[0]: row[1:] for row in rows[1:]} for table, rows in tables.items()}
    for column, report in enumerate(reports):
        for (table, label), (value, scale) in expected_numbers(report).items():
            cell = by_label[table][label][column].split()[0]  # a gate's cell: "measured pass|breach"
            assert agrees(cell, value, scale), (table, label, column, cell, value)
            checked += 1
    return checked


def write_report(runs, out: Path, *extra) -> str:
    result = invoke("report", *runs, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {out}"
    return out.read_text()


def test_markup_in_the_model_name_is_escaped(runs, tmp_path):
    text = write_report(runs[:1], tmp_path / "report.html")
    model = report_of(runs[0])["model"]
    assert MARKUP in model and "<script" not in text.lower() and "<img" not in text.lower()
    assert html.escape(model) in text
    page = Page(text)
    assert page.tags <= ALLOWED_TAGS, page.tags - ALLOWED_TAGS  # markup in the name made no element
    summary = {row[0]: row[1:] for row in page.tables["summary-table"]}
    assert summary["model"] == [model]  # shown as the very text it is
    # self-contained: nothing to load (the only URLs are the SVG namespaces; links point inside the page)
    assert not [a for a in page.attrs if a[0] in ("src", "href")]
    assert all(v.startswith("#") for k, v in page.attrs if k == "xlink:href")
    assert {v for _, v in page.attrs if v and "://" in v} == NAMESPACES


def test_markup_and_dollar_signs_in_a_run_name_stay_text_in_the_charts(runs):
    from compress.html_report import render_html

    name = MARKUP + " $x$"  # a `$` pair would be math to matplotlib
    text = render_html([report_of(run) for run in runs], [name, "b"])
    assert Page(text).tags <= ALLOWED_TAGS and "<script" not in text.lower()
    legend = "…" + name[-47:]  # shortened from the start: a path's end tells runs apart
    assert len(re.findall(f"<text[^>]*>{re.escape(html.escape(legend, quote=False))}</text>", text)) >= 4
    assert f"<title>{html.escape(name, quote=False)} · stage prune: " in text  # the tooltip names it in full


def test_two_runs_side_by_side_have_two_columns_with_their_numbers(runs, tmp_path):
    page = Page(write_report(runs, tmp_path / "both.html"))
    reports = [report_of(run) for run in runs]
    assert set(page.tables) == {"summary-table", "metrics-table", "gates-table", "named-metrics-table",
                                "timings-table"}
    for rows in page.tables.values():
        assert rows[0] == ["", str(runs[0]), str(runs[1])]  # one column per DIR, as given
        assert all(len(row) == 3 for row in rows)
    metrics = {row[0]: row[1:] for row in page.tables["metrics-table"]}
    assert metrics["prune · method"] == ["wanda 2:4", ""] and metrics["factorize · experts"][0] == ""
    gates = {row[0]: row[1:] for row in page.tables["gates-table"]}
    assert gates["ppl <= 1"][0].endswith(" breach") and gates["ppl <= 1"][1] == ""
    assert gates["ppl_ratio <= 1000"][0].endswith(" pass") and gates["ppl_ratio <= 1000"][1].endswith(" pass")
    assert check_numbers(page.tables, reports) >= 40


@pytest.mark.parametrize("case", ["no report", "no such folder", "not json", "not a report", "schema", "newer"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, case):
    bad = tmp_path / "run"
    document = report_of(runs[0])
    if case != "no such folder":
        bad.mkdir()
    if case == "not json":
        (bad / "report.json").write_text("{ not json")
    elif case == "not a report":
        (bad / "report.json").write_text(json.dumps({"results": {}}))
    elif case == "schema":
        document["stages"][0]["result"]["layers"] = 3
        (bad / "report.json").write_text(json.dumps(document))
    elif case == "newer":
        (bad / "report.json").write_text(json.dumps({**document, "schema_version": 2}))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("report", runs[0], bad, "--out", tmp_path / "report.html")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {bad}"), result.output
    needle = {"no report": "no report.json", "no such folder": "no such folder", "not json": "not JSON",
              "not a report": "not a compress report", "schema": "$.stages[0].result.layers",
              "newer": "schema_version 2"}[case]
    assert needle in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_existing_file_is_replaced_only_with_force_and_only_if_ours(runs, tmp_path):
    theirs = tmp_path / "theirs.html"
    theirs.write_text("<html><body>someone's page</body></html>")
    for extra in ([], ["--force"]):
        result = invoke("report", runs[0], "--out", theirs, *extra)
        assert result.exit_code == 2 and "not a report compress wrote" in result.output
    assert theirs.read_text() == "<html><body>someone's page</body></html>"

    ours = tmp_path / "ours.html"
    first = write_report(runs[:1], ours)
    result = invoke("report", *runs, "--out", ours)
    assert result.exit_code == 2 and "--force replaces it" in result.output and ours.read_text() == first
    assert Page(write_report(runs, ours, "--force")).tables["summary-table"][0] == ["", *map(str, runs)]
    for out, needle in [(tmp_path, "is a directory"), (tmp_path / "r.json", "ending in .html"),
                        (tmp_path / "no" / "r.html", "does not exist")]:
        result = invoke("report", runs[0], "--out", out)
        assert result.exit_code == 2 and needle in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.html", "theirs.html"]


def test_the_marker_counts_only_in_the_head(tmp_path):
    from compress.export.marker import HTML_META, is_ours

    head, body = tmp_path / "head.html", tmp_path / "body.html"
    head.write_text(f"<!DOCTYPE html><html><head>{HTML_META}</head><body></body></html>")
    body.write_text(f"<!DOCTYPE html><html><head></head><body>{HTML_META}</body></html>")
    assert is_ours(head) and not is_ours(body)
    (tmp_path / "link.html").symlink_to(head)
    assert not is_ours(tmp_path / "link.html")


def expected_marks(reports: list[dict], labels: list[str]) -> dict[str, dict[tuple[str, int, int], float]]:
    """{chart heading: {(bar|cell, series or column, category or row): value}}, recomputed from report.json's raw
    results: a layer's sparsity from its Linears' zero counts, the rest as recorded. Series are the runs holding
    the stage, in order; categories the layers (or stages) in order."""
    expected = {}
    stage_names = list(dict.fromkeys(s["name"] for r in reports for s in r["stages"]))
    expected["seconds per stage"] = {("bar", run, c): s["seconds"] for run, r in enumerate(reports)
                                     for c, name in enumerate(stage_names) for s in r["stages"] if s["name"] == name}
    for kind in ("prune", "factorize"):
        holding = [(r, label) for r, label in zip(reports, labels) if any(s["kind"] == kind for s in r["stages"])]
        for s, (report, label) in enumerate(holding):
            result = stage(report, kind)["result"]
            for c, layer in enumerate(sorted(result["layers"], key=lambda layer: layer["index"])):
                for key, title in (("relative_error", "reconstruction error"),
                                   ("token_error", "per-token reconstruction error")):
                    expected.setdefault(f"{kind} ({kind}): {title} per layer", {})[("bar", s, c)] = layer[key]
                if kind == "prune":
                    mine = [x for name, x in result["linears"].items() if name.startswith(layer["name"] + ".")]
                    zeros = sum(x["zeros"] for x in mine) / sum(x["numel"] for x in mine)
                    expected.setdefault("prune (prune): sparsity per layer", {})[("bar", s, c)] = zeros
                else:
                    load = layer["info"]["load"]
                    assert math.isclose(sum(load), 1, rel_tol=1e-5)  # shares of the routed tokens
                    expected.setdefault(f"factorize (factorize): expert load per layer · {label}", {}).update(
                        {("cell", c, e): share for e, share in enumerate(load)})
    kept = [stage(r, "eval")["result"]["after"].get("kept_share") for r in reports]
    expected["Double Sparsity: kept share of visible tokens"] = {
        ("bar", s, 0): share for s, share in enumerate(v for v in kept if v is not None)}
    return expected


def drawn_marks(chart) -> dict[tuple[str, int, int], object]:
    """The chart's figure: each mark's gid parsed, to its matplotlib patch."""
    patches = [p for axes in chart.figure.axes for p in axes.patches if p.get_gid()]
    return {(found[1], int(found[2]), int(found[3])): p for p in patches
            if (found := MARK.search("-" + p.get_gid()))}


def all_charts(reports, labels):
    from compress.html_report.plots import kept_token_chart, layer_charts, timing_chart

    return timing_chart(reports, labels) + layer_charts(reports, labels) + kept_token_chart(reports, labels)


def test_each_chart_plots_the_values_of_report_json(runs):
    import matplotlib
    from matplotlib.colors import to_hex

    reports, labels = [report_of(run) for run in runs], [str(run) for run in runs]
    charts = {chart.heading: chart for chart in all_charts(reports, labels)}
    expected = expected_marks(reports, labels)
    assert set(charts) == set(expected)
    layers = [str(layer["index"]) for layer in stage(reports[0], "prune")["result"]["layers"]]
    categories = {"seconds per stage": ["prune", "eval", "export", "factorize", "attention"],
                  "Double Sparsity: kept share of visible tokens": ["eval"]}
    for heading, values in expected.items():
        marks = drawn_marks(charts[heading])
        assert set(marks) == set(values), heading
        if heading.startswith("factorize (factorize): expert load"):  # colour encodes share / largest share
            largest = max(values.values())
            for key, patch in marks.items():
                assert to_hex(patch.get_facecolor()) == to_hex(matplotlib.colormaps["viridis"](values[key] / largest))
                assert (patch.get_x() + 0.5, patch.get_y() + 0.5) == key[1:]  # column = layer, row = expert
            continue
        for key, patch in marks.items():
            assert patch.get_height() == values[key] and patch.get_y() == 0, (heading, key)
        axes = charts[heading].figure.axes[0]
        assert axes.get_ylim()[0] == 0 and axes.get_ylim()[1] >= max(values.values())  # every bar in view
        assert [t.get_text() for t in axes.get_xticklabels()] == categories.get(heading, layers)  # under their bars


def test_the_page_is_the_same_bytes_twice_and_every_id_is_unique(runs):
    from compress.html_report import render_html

    reports = [report_of(run) for run in runs]
    text = render_html(reports, [str(run) for run in runs])
    assert text == render_html(reports, [str(run) for run in runs])
    ids = re.findall(r'<[^>]*\sid="([^"]*)"', text)
    assert len(ids) == len(set(ids)) and len([i for i in ids if MARK.search(i)]) > 20
    references = set(re.findall(r'(?:url\(#|href="#)([^")]*)', text))
    assert references and references <= set(ids)  # each clip path and marker resolves


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.just(0.0), st.floats(1e-30, 1e6)), min_size=3, max_size=3),
                min_size=1, max_size=4))
def test_bar_heights_in_the_svg_are_proportional_to_the_values(columns):
    from compress.html_report.figures import Series, bar_figure

    chart = bar_figure(["0", "1", "2"], [Series(f"run{i}", values, i) for i, values in enumerate(columns)], "y")
    svg = ET.fromstring(chart.svg("t-"))
    drawn = {}
    for group in svg.iter("{http://www.w3.org/2000/svg}g"):
        if found := MARK.search(group.get("id", "")):
            path = group.find("{http://www.w3.org/2000/svg}path")
            ys = [float(y) for y in re.findall(r"[ML] [-\d.e]+ ([-\d.e]+)", path.get("d"))]
            drawn[int(found[2]), int(found[3])] = (min(ys), max(ys))  # SVG's y grows downwards
            assert group.find("{http://www.w3.org/2000/svg}title").text.endswith(f": {columns[int(found[2])][int(found[3])]:.4g}")
    assert sorted(drawn) == [(s, c) for s in range(len(columns)) for c in range(3) if columns[s][c] is not None]
    assert len({round(bottom, 3) for _, bottom in drawn.values()}) <= 1  # one baseline
    positive = [(columns[s][c], bottom - top) for (s, c), (top, bottom) in drawn.items() if columns[s][c] > 0]
    if positive:
        top_value, top_height = max(positive)
        assert all(math.isclose(h / top_height, v / top_value, rel_tol=1e-3, abs_tol=1e-5) for v, h in positive)


def test_without_matplotlib_the_report_is_one_line_naming_the_extra(runs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    result = invoke("report", runs[0], "--out", tmp_path / "report.html")
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: compress report draws its charts with matplotlib: pip install 'compress[report]'"]
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(browser_missing() is not None, reason=f"no headless browser to drive: {browser_missing()}; "
                    "CI (.ci/run) installs Debian's chromium, chromium-driver and selenium")
def test_in_a_real_headless_browser_every_chart_renders_and_the_numbers_match(runs, tmp_path):
    from compress.html_report.browser import headless_chromium

    out = tmp_path / "report.html"
    write_report(runs, out)
    reports = [report_of(run) for run in runs]
    with headless_chromium() as driver:
        driver.get(out.resolve().as_uri())
        assert driver.title == "compress report"
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        assert driver.execute_script("return [...document.images].filter(i => !(i.naturalWidth > 0)).length") == 0
        charts = driver.execute_script("""return [...document.querySelectorAll('figure')].map(f => {
            const svg = f.querySelector('svg'), box = svg.getBoundingClientRect();
            return {label: f.getAttribute('aria-label'), width: box.width, height: box.height,
                    marks: [...svg.querySelectorAll('g[id]')].map(g => {
                        const r = g.getBoundingClientRect();
                        return {id: g.id, height: g.getBBox().height, width: g.getBBox().width,
                                inside: r.left >= box.left - 1 && r.right <= box.right + 1 &&
                                        r.top >= box.top - 1 && r.bottom <= box.bottom + 1};
                    }),
                    texts: [...svg.querySelectorAll('text')].filter(t => t.getBBox().width > 0).length};
            });""")
        tables = driver.execute_script("""const found = {};
            for (const t of document.querySelectorAll('table'))
                found[t.id] = [...t.rows].map(r => [...r.cells].map(c => c.innerText));
            return found;""")
        driver.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert check_numbers(tables, reports) >= 40

    expected = expected_marks(reports, [str(run) for run in runs])
    assert {c["label"] for c in charts} == set(expected) == {
        "seconds per stage", "prune (prune): sparsity per layer", "prune (prune): reconstruction error per layer",
        "prune (prune): per-token reconstruction error per layer",
        "factorize (factorize): reconstruction error per layer",
        "factorize (factorize): per-token reconstruction error per layer",
        f"factorize (factorize): expert load per layer · {runs[1]}", "Double Sparsity: kept share of visible tokens"}
    for chart in charts:  # rendered: a real box with text, every mark in it, each positive one with an area
        values = expected[chart["label"]]
        marks = {(m[1], int(m[2]), int(m[3])): mark for mark in chart["marks"] if (m := MARK.search(mark["id"]))}
        assert chart["width"] > 300 and chart["height"] > 100 and chart["texts"] >= 4, chart["label"]
        assert set(marks) == set(values) and all(mark["inside"] for mark in marks.values()), chart["label"]
        assert all(m["height"] > 0 and m["width"] > 0 for key, m in marks.items() if values[key] > 0), chart["label"]
        bars = [(values[key], mark["height"]) for key, mark in marks.items() if key[0] == "bar" and values[key] > 0]
        if bars:  # laid out to scale by the browser
            ratio = bars[0][1] / bars[0][0]
            assert all(math.isclose(height, value * ratio, rel_tol=1e-3, abs_tol=0.01) for value, height in bars)


def test_zero_shot_accuracy_and_recovery_are_shown_per_task(runs):
    from compress.html_report import render_html
    from compress.pipeline.metrics import measured_metrics

    report = report_of(runs[0])
    evaluation = stage(report, "eval")["result"]
    evaluation["zero_shot_before"] = {"results": {"austen_next": {"acc,none": 0.5, "alias": "<b>x</b>"}}}
    evaluation["zero_shot"] = {"results": {"austen_next": {"acc,none": 0.4375}}}
    report["metrics"] = measured_metrics(report["stages"])
    metrics = {row[0]: row[1:] for row in Page(render_html([report], ["run"])).tables["metrics-table"]}
    assert metrics["eval · austen_next accuracy before"] == ["0.5000"]
    assert metrics["eval · austen_next accuracy after"] == ["0.4375"]
    assert agrees(metrics["eval · austen_next recovery (after / before)"][0], 0.4375 / 0.5)
