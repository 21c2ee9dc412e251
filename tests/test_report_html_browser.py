"""The HTML report in a real headless browser (rejuv_cli.testing.browser, also run as
bench/check_html.py). Needs /usr/bin/chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from rejuv_cli.report.html import render_html
from rejuv_cli.testing import browser as check_html
from rejuv_cli.testing.sample_report import sample_report

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
