"""compress report: the HTML page of real runs (a prune job on a model whose path holds markup, with one gate
passed and one breached; a recipe that factorizes, calibrates Double Sparsity and evaluates with it). Checked:
markup is escaped, two runs give two columns, the tables' numbers equal report.json (recomputed where they are
derived) to the printed precision, bad input is one line and exit 2 with nothing written, an existing file is
replaced only with --force and only if compress wrote it, and, in headless Chromium, every chart renders with bar
heights proportional to the values and nothing is fetched."""
from __future__ import annotations

import html
import json
import math
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
                "table", "thead", "tbody", "tr", "th", "td", "div", "figure", "svg", "text", "rect", "line", "details",
                "summary", "pre"}


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
    # self-contained: nothing to load (the only URL is the SVG namespace)
    assert not [a for a in page.attrs if a[0] in ("src", "href")]
    assert {v for _, v in page.attrs if v and "://" in v} == {"http://www.w3.org/2000/svg"}


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


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e12))
def test_axis_top_is_a_round_number_just_above_the_largest_value(largest):
    from compress.html_report.svg import nice_top

    top, step = nice_top(largest)
    mantissa = Decimal(repr(step)).normalize().as_tuple()
    assert top >= largest * (1 - 1e-9) and round(top / step) <= 5 and math.isclose(top / step, round(top / step))
    assert "".join(map(str, mantissa.digits)) in ("1", "2", "25", "5")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.just(0.0), st.floats(1e-30, 1e6)), min_size=3, max_size=3),
                min_size=1, max_size=4))
def test_bar_heights_are_proportional_to_the_values(columns):
    import xml.etree.ElementTree as ET

    from compress.html_report.svg import Series, bar_chart

    series = [Series(f"run{i}", values, i) for i, values in enumerate(columns)]
    svg = ET.fromstring(bar_chart("t", ["0", "1", "2"], series, "y"))
    bars = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect") if e.get("class") == "bar"]
    drawn = [(int(b.get("data-series")), int(b.get("data-category")), float(b.get("data-value")),
              float(b.get("height")), float(b.get("y"))) for b in bars]
    assert sorted((s, c) for s, c, *_ in drawn) == [(s, c) for s in range(len(columns)) for c in range(3)
                                                    if columns[s][c] is not None]
    assert all(value == columns[s][c] for s, c, value, _, _ in drawn)
    positive = [(value, height) for _, _, value, height, _ in drawn if value > 0]
    if positive:
        top_value, top_height = max(positive)
        assert all(math.isclose(h / top_height, v / top_value, rel_tol=1e-3, abs_tol=2e-5) for v, h in positive)
    assert len({round(y + h, 2) for *_, h, y in drawn}) <= 1  # every bar stands on the same baseline


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
                    marks: [...svg.querySelectorAll('rect.bar, rect.cell')].map(r => ({
                        value: Number(r.dataset.value), series: r.dataset.series, category: r.dataset.category,
                        row: r.dataset.row, height: r.getBBox().height, width: r.getBBox().width}))};
            });""")
        tables = driver.execute_script("""const found = {};
            for (const t of document.querySelectorAll('table'))
                found[t.id] = [...t.rows].map(r => [...r.cells].map(c => c.innerText));
            return found;""")
        driver.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert check_numbers(tables, reports) >= 40

    by_label = {c["label"]: c for c in charts}
    expected = {"seconds per stage", "prune (prune): sparsity per layer", "prune (prune): reconstruction error per layer",
                "prune (prune): per-token reconstruction error per layer",
                "factorize (factorize): reconstruction error per layer",
                "factorize (factorize): per-token reconstruction error per layer",
                f"factorize (factorize): expert load per layer · {runs[1]}",
                "Double Sparsity: kept share of visible tokens"}
    assert set(by_label) == expected
    for chart in charts:  # rendered: a real box, and every mark of a positive value has a height
        assert chart["width"] > 100 and chart["height"] > 50 and chart["marks"], chart["label"]
        assert all(m["height"] > 0 and m["width"] > 0 for m in chart["marks"] if m["value"] > 0), chart["label"]
        bars = [m for m in chart["marks"] if m["series"] is not None and m["value"] > 0]
        if bars:  # laid out to scale by the browser
            ratio = bars[0]["height"] / bars[0]["value"]
            assert all(math.isclose(b["height"], b["value"] * ratio, rel_tol=1e-3, abs_tol=0.01) for b in bars)

    prune_layers = stage(reports[0], "prune")["result"]["layers"]
    sparsity = by_label["prune (prune): sparsity per layer"]["marks"]
    assert [m["value"] for m in sparsity] == [layer["info"]["sparsity"] for layer in prune_layers]
    errors = by_label["prune (prune): reconstruction error per layer"]["marks"]
    assert [m["value"] for m in errors] == [layer["relative_error"] for layer in prune_layers]
    load = by_label[f"factorize (factorize): expert load per layer · {runs[1]}"]["marks"]
    factorize_layers = stage(reports[1], "factorize")["result"]["layers"]
    assert [m["value"] for m in load] == [v for layer in factorize_layers for v in layer["info"]["load"]]
    kept = by_label["Double Sparsity: kept share of visible tokens"]["marks"]
    assert [m["value"] for m in kept] == [stage(reports[1], "eval")["result"]["after"]["kept_share"]]


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
