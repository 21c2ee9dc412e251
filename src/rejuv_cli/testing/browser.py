"""Headless-browser check of a `rejuv diagnose --html` report.

    python bench/check_html.py [REPORT.html] [--png OUT.png]   (a thin wrapper of this module)

With no REPORT, renders rejuv_cli.testing.sample_report into a temp file.
Loads the page in headless Chromium (/usr/bin/chromium, offline: background networking off),
checks the rendered DOM has the expected SVG plots, takes a 1280×2400 screenshot and checks it
is a real picture (> 20 KB, many distinct colours, some saturated colour from the plots).
Exit status 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

CHROMIUM = os.environ.get("REJUV_CHROMIUM", "/usr/bin/chromium")
REQUIRED_IDS = ("drift-heatmap", "drift-layers")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--hide-scrollbars",
)
MIN_PNG_BYTES = 20_000
TIMEOUT_S = 120


def sample_page(path: Path, candidate: bool = True) -> None:
    from rejuv_cli.report.html import render_html
    from rejuv_cli.testing.sample_report import sample_report

    path.write_text(render_html(sample_report(candidate=candidate)), encoding="utf-8")


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows, channels): the pixels of an 8-bit RGB / RGBA non-interlaced PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, hdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if hdr is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, color, _, _, interlace = hdr
    channels = {2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {color}, interlace)")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows, channels


def pixel_stats(png: Path) -> dict:
    """Distinct colours and share of saturated (plot-coloured) pixels on a sampled grid."""
    width, height, rows, ch = png_pixels(png.read_bytes())
    colours, saturated, total = set(), 0, 0
    for y in range(0, height, 3):
        row = rows[y]
        for x in range(0, width, 3):
            r, g, b = row[x * ch], row[x * ch + 1], row[x * ch + 2]
            colours.add((r, g, b))
            total += 1
            if max(r, g, b) - min(r, g, b) > 80:
                saturated += 1
    return {
        "width": width,
        "height": height,
        "colours": len(colours),
        "saturated_share": saturated / max(total, 1),
    }


def check(page: Path, png: Path, expect_ids: tuple[str, ...]) -> list[str]:
    """Problems found (empty when the page renders as expected)."""
    problems = []
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="rejuv-chromium-") as profile:
        dom = chromium(["--dump-dom", url], Path(profile) / "dom")
        if dom.returncode != 0 or "<body" not in dom.stdout:
            tail = (dom.stderr or "").strip().splitlines()[-5:]
            return [f"--dump-dom failed (rc {dom.returncode}): " + " | ".join(tail)]
        for id_ in expect_ids:
            if f'id="{id_}"' not in dom.stdout:
                problems.append(f'rendered DOM has no <svg id="{id_}">')
        if "<script" in dom.stdout.lower():
            problems.append("rendered DOM contains a <script>")
        png.unlink(missing_ok=True)
        shot = chromium(
            [f"--screenshot={png}", "--window-size=1280,2400", url], Path(profile) / "shot"
        )
        if shot.returncode != 0 or not png.exists():
            tail = (shot.stderr or "").strip().splitlines()[-5:]
            return [*problems, f"--screenshot failed (rc {shot.returncode}): " + " | ".join(tail)]
    size = png.stat().st_size
    if size <= MIN_PNG_BYTES:
        problems.append(f"screenshot is only {size} bytes (expected > {MIN_PNG_BYTES})")
    try:
        stats = pixel_stats(png)
    except (ValueError, zlib.error) as e:
        problems.append(f"cannot read the screenshot: {e}")
        return problems
    if stats["colours"] < 64:
        problems.append(f"screenshot has only {stats['colours']} distinct colours (flat page?)")
    if stats["saturated_share"] < 0.005:
        problems.append(
            f"only {stats['saturated_share']:.2%} of the screenshot is coloured (plots missing?)"
        )
    print(
        f"screenshot {png}: {stats['width']}×{stats['height']}, {size:,} bytes, "
        f"{stats['colours']} colours on a 1/9 sample, {stats['saturated_share']:.1%} coloured"
    )
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", nargs="?", type=Path, help="report to check (default: sample)")
    ap.add_argument("--png", type=Path, help="where to keep the screenshot (default: temp)")
    ap.add_argument(
        "--expect",
        action="append",
        help="svg id that must be present (repeatable; default: the plots the page should have)",
    )
    args = ap.parse_args(argv)

    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        print(
            f"FAIL: {CHROMIUM} not found. Install it (Debian/Ubuntu: `apt-get install chromium`) "
            "or point REJUV_CHROMIUM at a Chromium/Chrome binary.",
            file=sys.stderr,
        )
        return 1
    with tempfile.TemporaryDirectory(prefix="rejuv-html-") as tmp:
        page = args.html
        expect = tuple(args.expect or ())
        if page is None:
            page = Path(tmp) / "report.html"
            sample_page(page)
            expect = expect or (*REQUIRED_IDS, "drift-heatmap-candidate", "entropy-histogram")
        elif not page.is_file():
            print(f"FAIL: {page} is not a file", file=sys.stderr)
            return 1
        png = args.png or Path(tmp) / "report.png"
        try:
            problems = check(page, png, expect or REQUIRED_IDS)
        except subprocess.TimeoutExpired:
            problems = [f"chromium did not finish within {TIMEOUT_S} s"]
    if problems:
        for p in problems:
            print(f"FAIL: {p}", file=sys.stderr)
        return 1
    shown = args.html or "the sample report"
    print(f"OK: {shown} renders in headless Chromium with svg {', '.join(expect or REQUIRED_IDS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
