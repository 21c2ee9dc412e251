"""The `rejuv diagnose --html` report: one self-contained HTML file.

Inline CSS and inline SVG drawn here (no JavaScript, no external URLs, fonts or images), so the
page opens offline and can be attached to an issue or a run log. Stdlib only: never imports
torch or numpy. Every string taken from the report (paths, tensor names, messages) is escaped.
Every number shown carries its `--fail-on` gate path: beside its label (row and column heads
show their part of it) and on the cell itself (`data-path`, and the tooltip).

Modules: cells (formatting, table cells), charts (colour scale, heatmap), bars (bar charts,
entropy histogram), style (CSS), and one module per group of page sections (routing: the
mixture-of-experts routing section).
"""

from __future__ import annotations

from rejuv_cli.report.html.cells import FOOTER, esc, fmt
from rejuv_cli.report.html.routing import _routing
from rejuv_cli.report.html.style import CSS
from rejuv_cli.report.html.summary import _comparison, _header, _output, _verdict
from rejuv_cli.report.html.units import _sharpness, _units
from rejuv_cli.report.html.weights import _weights

__all__ = ["fmt", "render_html"]


def render_html(report: dict) -> str:
    """The whole report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    inputs = report.get("inputs") or {}
    name = str(inputs.get("sft") or "").rstrip("/").split("/")[-1]
    title = "rejuv diagnose" + (f" · {name}" if name else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        _header(report),
        _verdict(report),
        _comparison(report),
        _output(report),
        _weights(report),
        _units(report),
        _routing(report),
        _sharpness(report),
        f"<footer>{esc(FOOTER)}</footer>",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
