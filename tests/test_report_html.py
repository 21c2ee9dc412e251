"""The self-contained HTML report (rejuv_cli.report.html): pure Python, no torch.

The sample report comes from rejuv_cli.testing.sample_report (also used by the browser check).
"""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser

import pytest

from rejuv_cli.report.html import fmt, render_html
from rejuv_cli.testing.sample_report import EVIL, LAYERS, MODULES, sample_report

# --------------------------------------------------------------------------------------------
# a small DOM: balanced-tag checking plus the svg elements we assert on

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text = ""

    def iter(self, tag: str | None = None):
        for c in self.children:
            if tag is None or c.tag == tag:
                yield c
            yield from c.iter(tag)

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class Dom(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root
        self.errors: list[str] = []
        self.feed(text)
        self.close()
        if self.cur is not self.root:
            self.errors.append(f"unclosed <{self.cur.tag}>")

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if self.cur.tag != tag:
            self.errors.append(f"</{tag}> closes <{self.cur.tag}>")
            return
        self.cur = self.cur.parent

    def handle_data(self, data):
        self.cur.text += data

    def by_id(self, id_: str) -> Node:
        found = [n for n in self.root.iter() if n.attrs.get("id") == id_]
        assert len(found) == 1, (id_, len(found))
        return found[0]

    def svg_ids(self) -> list[str]:
        return [n.attrs.get("id") for n in self.root.iter("svg")]


def parse(report: dict) -> tuple[str, Dom]:
    page = render_html(report)
    dom = Dom(page)
    assert not dom.errors, dom.errors[:5]
    return page, dom


def rgb(fill: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"rgb\((\d+),(\d+),(\d+)\)", fill)
    assert m, fill
    return tuple(int(x) for x in m.groups())


def luminance(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


@pytest.fixture
def report():
    return sample_report(candidate=True)


# --------------------------------------------------------------------------------------------


def test_full_page_has_all_plots_in_order(report):
    page, dom = parse(report)
    assert dom.svg_ids() == [
        "entropy-histogram",
        "drift-heatmap",
        "drift-heatmap-candidate",
        "drift-layers",
    ]
    assert page.startswith("<!DOCTYPE html>")
    text = dom.root.all_text()
    order = [
        "rejuv diagnose",
        "Verdict",
        "Before / after",
        "Output space",
        "Weight space",
        "Unit activity",
        "Sharpness",
        "Verdicts are heuristics: no single metric",
    ]
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions)
    assert "rejuv 0.1.0" in text and "builtin:math" in text and "/models/Qwen2.5-Math-7B" in text


def test_without_candidate_has_one_heatmap(report):
    _, dom = parse(sample_report(candidate=False))
    assert dom.svg_ids() == ["entropy-histogram", "drift-heatmap", "drift-layers"]
    assert "Before / after" not in dom.root.all_text()


def test_weights_only_page(report):
    page, dom = parse(sample_report(candidate=False, weights_only=True))
    assert dom.svg_ids() == ["drift-heatmap", "drift-layers"]
    assert "not measured (--weights-only)" in page
    text = dom.root.all_text()
    assert "Unit activity" not in text and "Sharpness" not in text
    label = next(n for n in dom.root.iter("span") if "verdict-label" in n.attrs.get("class", ""))
    assert label.attrs["data-label"] == "ok"


def test_heatmap_cells_and_tooltips(report):
    _, dom = parse(report)
    for svg_id, w in (
        ("drift-heatmap", report["weights"]),
        ("drift-heatmap-candidate", report["weights"]["candidate"]),
    ):
        cells = [n for n in dom.by_id(svg_id).iter("rect") if n.attrs.get("class") == "cell"]
        assert len(cells) == LAYERS * len(MODULES) == len(w["layer_modules"])
        seen = set()
        for c in cells:
            layer, module = c.attrs["data-layer"], c.attrs["data-module"]
            seen.add((layer, module))
            drift = w["layer_modules"][f"{layer}.{module}"]["rel_drift"]
            (title,) = list(c.iter("title"))
            assert title.text == f"layer {layer} · module {module} · rel_drift {fmt(drift)}"
        assert seen == {(str(la), m) for la in range(LAYERS) for m in MODULES}
    # columns in canonical order, rows in numeric layer order
    cells = [n for n in dom.by_id("drift-heatmap").iter("rect") if n.attrs.get("class") == "cell"]
    first_row = sorted(
        (float(c.attrs["x"]), c.attrs["data-module"]) for c in cells if c.attrs["data-layer"] == "0"
    )
    assert [m for _, m in first_row] == list(MODULES)
    ys = {c.attrs["data-layer"]: float(c.attrs["y"]) for c in cells}
    assert [ys[str(la)] for la in range(LAYERS)] == sorted(ys.values())


def test_heatmap_colour_is_monotone_and_shared(report):
    _, dom = parse(report)
    pairs = []
    for svg_id, w in (
        ("drift-heatmap", report["weights"]),
        ("drift-heatmap-candidate", report["weights"]["candidate"]),
    ):
        for c in dom.by_id(svg_id).iter("rect"):
            if c.attrs.get("class") == "cell":
                key = f"{c.attrs['data-layer']}.{c.attrs['data-module']}"
                pairs.append((w["layer_modules"][key]["rel_drift"], rgb(c.attrs["fill"])))
    pairs.sort()
    lum = [luminance(c) for _, c in pairs]
    # one scale over both maps: higher drift never lighter, and the extremes differ clearly
    assert all(a >= b - 1e-9 for a, b in zip(lum, lum[1:], strict=False))
    assert lum[0] - lum[-1] > 100
    lo, hi = pairs[0][1], pairs[-1][1]
    assert hi[0] - hi[2] > lo[0] - lo[2] - 1e-9 or hi[1] < lo[1]  # toward red, darker
    # the legend shows the shared min and max
    svg = dom.by_id("drift-heatmap-candidate")
    texts = {n.attrs.get("class"): n.text for n in svg.iter("text") if n.attrs.get("class")}
    assert texts["legend-min"] == fmt(pairs[0][0]) and texts["legend-max"] == fmt(pairs[-1][0])


def test_histogram_bars_proportional_to_counts(report):
    _, dom = parse(report)
    bars = [n for n in dom.by_id("entropy-histogram").iter("rect") if n.attrs.get("class") == "bar"]
    hists = {
        "base": report["output"]["base"]["entropy_hist"],
        "sft": report["output"]["entropy_hist"],
        "candidate": report["output"]["candidate"]["entropy_hist"],
    }
    assert {b.attrs["data-series"] for b in bars} == set(hists)
    for name, h in hists.items():
        mine = sorted(
            (b for b in bars if b.attrs["data-series"] == name),
            key=lambda b: int(b.attrs["data-index"]),
        )
        assert len(mine) == len(h["counts"])
        total = sum(h["counts"])
        heights = [float(b.attrs["height"]) for b in mine]
        k = max(heights) / (max(h["counts"]) / total)
        for b, hgt, count in zip(mine, heights, h["counts"], strict=True):
            assert hgt == pytest.approx(k * count / total, abs=2e-3)
            # bars stand on a common baseline
            assert float(b.attrs["y"]) + hgt == pytest.approx(
                float(mine[0].attrs["y"]) + heights[0], abs=2e-3
            )

    # the sft histogram peaks at lower entropy than the base one
    def argmax(series):
        ms = [b for b in bars if b.attrs["data-series"] == series]
        return int(max(ms, key=lambda b: float(b.attrs["height"])).attrs["data-index"])

    assert argmax("sft") < argmax("base")
    text = dom.by_id("entropy-histogram").all_text()
    assert "entropy (nats)" in text and "share of tokens" in text
    for name in hists:  # legend
        assert name in text


def test_layer_bars(report):
    _, dom = parse(report)
    bars = [n for n in dom.by_id("drift-layers").iter("rect") if n.attrs.get("class") == "bar"]
    sft = sorted(
        (b for b in bars if b.attrs["data-series"] == "sft"),
        key=lambda b: int(b.attrs["data-index"]),
    )
    drifts = [report["weights"]["layers"][str(i)]["rel_drift"] for i in range(LAYERS)]
    heights = [float(b.attrs["height"]) for b in sft]
    assert len(sft) == LAYERS
    for h, d in zip(heights, drifts, strict=True):
        assert h / heights[-1] == pytest.approx(d / drifts[-1], rel=1e-3)
    assert len(bars) == 2 * LAYERS  # with the candidate's


def test_no_external_references_or_scripts(report):
    for r in (report, sample_report(False), sample_report(False, True)):
        page, dom = parse(r)
        lower = page.lower()
        for bad in ("http://", "https://", "src=", "<script", "@import", "url(http", "//cdn"):
            assert bad not in lower, bad
        hrefs = [n.attrs.get("href") for n in dom.root.iter() if "href" in n.attrs]
        assert all(h.startswith("#") for h in hrefs), hrefs


def test_strings_escaped(report):
    page, dom = parse(report)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "/runs/sft-&lt;v2&gt;&amp;final" in page
    names = [n.text for n in dom.root.iter("td") if "name" in n.attrs.get("class", "")]
    assert EVIL in names and names[0] == EVIL  # the largest drift comes first
    assert len(names) == 20


def test_tables(report):
    _, dom = parse(report)
    text = dom.root.all_text()
    reasons = [n for n in dom.root.iter("table") if "reasons" in n.attrs.get("class", "")]
    assert len(reasons) == 2  # sft and candidate
    assert "low_entropy" in reasons[0].all_text() and "0.18" in reasons[0].all_text()
    assert "entropy_ratio" in reasons[1].all_text()
    assert "rejuv fuse /models/Qwen2.5-Math-7B" in next(dom.root.iter("pre")).text
    labels = [n.attrs["data-label"] for n in dom.root.iter("span") if "data-label" in n.attrs]
    assert labels == ["rigid", "watch"]
    comparison = next(n for n in dom.root.iter("table") if "comparison" in n.attrs.get("class", ""))
    # the terminal's words (report/numbers.change): better, worse or no change
    changes = [n.text for n in comparison.iter("span") if "path" not in n.attrs.get("class", "")]
    assert changes == ["better", "worse"]
    output = next(n for n in dom.root.iter("table") if "output" in n.attrs.get("class", ""))
    rows = [r.all_text() for r in output.iter("tr")][1:]
    assert [r.split("0")[0].strip() for r in rows][0].startswith("base")
    assert len(rows) == 3 and rows[1].startswith("sft") and rows[2].startswith("candidate")
    units = next(n for n in dom.root.iter("table") if "units-layers" in n.attrs.get("class", ""))
    assert len(list(units.iter("tr"))) == 1 + 2 * LAYERS
    assert "dormant ≤0.025" in text and "2.878" in text


def test_missing_optional_parts_degrade_gracefully(report):
    r = copy.deepcopy(report)
    r["output"]["entropy_hist"] = None
    r["output"]["base"]["entropy_mean"] = float("nan")
    r["weights"]["layers"]["1"]["rel_drift"] = None
    r["weights"]["layer_modules"]["2.q"]["rel_drift"] = float("nan")
    del r["weights"]["units"], r["inputs"]["max_tokens"], r["tool"]
    r["verdict"]["suggested_command"] = None
    _, dom = parse(r)
    assert "entropy-histogram" in dom.svg_ids()  # base and candidate still drawn
    assert "–" in dom.root.all_text()
    minimal = {
        "schema_version": 1,
        "inputs": {"base": "b", "sft": "s"},
        "verdict": None,
        "weights": None,
        "output": None,
    }
    _, dom = parse(minimal)
    assert dom.svg_ids() == []


def test_fmt():
    assert fmt(None) == "–" and fmt(float("nan")) == "–"
    assert fmt(0.123456) == "0.1235" and fmt(12345.678) == "1.235e+04" and fmt(64) == "64"
    assert fmt(3_000_000) == "3,000,000" and fmt(True) == "yes" and fmt("<a>") == "&lt;a&gt;"


def test_no_heavy_imports():
    import subprocess
    import sys

    code = (
        "import sys, rejuv_cli.report.html as h; h.render_html({}); "
        "print(sorted(m for m in ('torch', 'numpy', 'rich', 'typer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
