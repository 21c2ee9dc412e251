"""The HTML report in a real headless browser (bench/check_html.py). Needs /usr/bin/chromium."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from rejuv_cli.report.html import render_html

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_report_html import sample_report  # noqa: E402


def _check_module():
    spec = importlib.util.spec_from_file_location("check_html", ROOT / "bench" / "check_html.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


check_html = _check_module()

# Deselected from `make test` by the marker; where it is selected, a missing browser is a
# failure with the install hint, never a silent skip.
pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _chromium():
    assert Path(check_html.CHROMIUM).exists(), (
        f"{check_html.CHROMIUM} missing: apt-get install chromium (or set REJUV_CHROMIUM)"
    )


def test_sample_report_renders_in_chromium(tmp_path, capsys):
    png = tmp_path / "report.png"
    assert check_html.main(["--png", str(png)]) == 0, capsys.readouterr().err
    assert png.stat().st_size > check_html.MIN_PNG_BYTES


def test_weights_only_report_renders_in_chromium(tmp_path, capsys):
    page = tmp_path / "weights-only.html"
    page.write_text(render_html(sample_report(candidate=False, weights_only=True)))
    args = [str(page), "--png", str(tmp_path / "w.png"), "--expect", "drift-heatmap"]
    assert check_html.main([*args, "--expect", "drift-layers"]) == 0, capsys.readouterr().err


def test_check_fails_on_missing_plot(tmp_path, capsys):
    page = tmp_path / "empty.html"
    page.write_text(render_html({"inputs": {"base": "b", "sft": "s"}}))
    assert check_html.main([str(page), "--png", str(tmp_path / "e.png")]) == 1
    assert 'no <svg id="drift-heatmap">' in capsys.readouterr().err
