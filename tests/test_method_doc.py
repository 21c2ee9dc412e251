"""docs/method.md against the code: every "docs/method.md section N" reference resolves to an
anchor, the defaults, constants and verdict thresholds it lists are the code's, and the help
of fuse, diagnose and sweep points to it."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from rejuv_cli.settings import SETTINGS

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "method.md"
TEXT = DOC.read_text()
ANCHORS = set(re.findall(r'<a id="([^"]+)"></a>', TEXT))
# "docs/method.md section 3", "docs/method.md sections 3, 5", "docs/method.md sections 2-4"
REFERENCE = re.compile(r"docs/method\.md,?\s+sections?\s+(\d+)(?:\s*([-–,])\s*(\d+))?")


def _sources() -> list[Path]:
    files = [*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py"),
             *(REPO / "bench").rglob("*.py"), *(REPO / "docs").glob("*.md"),
             REPO / "CHANGELOG.md", REPO / "Makefile"]  # fmt: skip
    return [f for f in files if f.is_file()]


def test_numbered_sections_keep_their_numbers_and_anchors():
    numbered = re.findall(r'<a id="section-(\d+)"></a>\n\n## (\d+)\. ', TEXT)
    assert numbered == [(str(n), str(n)) for n in range(1, 7)]
    assert '<a id="choosing-alpha"></a>\n\n## Choosing α' in TEXT
    links = set(re.findall(r"\]\(#([\w-]+)\)", TEXT))
    assert links <= ANCHORS, links - ANCHORS  # every in-document link has its anchor


def test_every_reference_in_the_code_names_an_existing_section():
    found = 0
    for path in _sources():
        for m in REFERENCE.finditer(path.read_text()):
            first, sep, last = m.groups()
            numbers = [int(first)]
            if last is not None:
                numbers += range(int(first) + 1, int(last) + 1) if sep != "," else [int(last)]
            for n in numbers:
                assert f"section-{n}" in ANCHORS, f"{path.relative_to(REPO)}: {m.group(0)!r}"
            found += 1
    assert found >= 20  # the code cites the document throughout


def test_the_external_draft_is_cited_nowhere():
    draft = "METHOD" + ".md"  # the team's draft outside the repository, replaced by docs/method.md
    cited = [str(p.relative_to(REPO)) for p in _sources() if draft in p.read_text()]
    assert not cited


def test_defaults_table_is_the_code_s():
    rows = re.findall(r"^\| [^|]+ \| `(--[a-z-]+)` \| (?:`([a-z_.]+)`|–) \| `([^`]*)` \|", TEXT,
                      re.MULTILINE)  # fmt: skip
    by_flag = {s.flag: s for s in SETTINGS.values()}
    for flag, key, default in rows:
        s = by_flag[flag]
        assert default == s.default_text(), flag
        assert (key or None) == s.key, flag
    method = {"alpha", "fraction", "select", "modules", "max_per_module", "protect", "mode",
              "omega", "noise", "seed", "calib", "samples", "max_tokens", "sharpness_draws",
              "sharpness_sigma", "min_skill", "min_learnable", "alphas", "group_size",
              "max_new_tokens"}  # fmt: skip
    assert {by_flag[flag].name for flag, _, _ in rows} == method


def test_constants_table_is_the_code_s():
    rows = re.findall(r"^\| [^|]+ \| `([^`]+)` \| `(rejuv_cli\.[\w.]+)` \|$", TEXT, re.MULTILINE)
    assert len(rows) == 12
    for value, path in rows:
        module, name = path.rsplit(".", 1)
        assert str(getattr(importlib.import_module(module), name)) == value, path


def test_attribution_position_budget_is_the_code_s():
    from rejuv_cli.reset.attribution import select_positions

    params = inspect.signature(select_positions).parameters
    assert params["top_share"].default == 0.05 and params["max_per_example"].default == 32
    assert "the top 5% of all response positions, at most 32 per\nexample" in TEXT


def test_verdict_table_is_the_code_s():
    from rejuv_cli.diagnostics.verdict import RULES

    rows = re.findall(r"^\| `(\w+)` \| (rigid|watch) \| `([\w.]+) ([<>]) ([\d.]+)` \|", TEXT,
                      re.MULTILINE)  # fmt: skip
    assert sorted(rows) == sorted((r.id, r.level, r.metric, r.op, f"{r.threshold:g}")
                                  for r in RULES)  # fmt: skip


def test_every_scorer_is_described_with_its_source():
    from rejuv_cli.reset.registry import SCORERS

    for name in SCORERS:
        assert f"scorer-{name}" in ANCHORS, name
    assert "| `attribution` | **paper**" in TEXT
    for name in ("drift", "dormant", "saturated"):
        assert re.search(rf"^\| `{name}`[^|]* \| \*\*ours\*\*", TEXT, re.MULTILINE), name


def test_help_of_fuse_diagnose_and_sweep_points_to_the_document():
    from rejuv_cli.commands import diagnose, fuse, sweep

    for command in (fuse, diagnose, sweep):
        lines = [line for line in command.HELP.splitlines() if "docs/method.md" in line]
        # one line of its own paragraph, short enough to stay one line in an 80-column --help
        assert len(lines) == 1 and len(lines[0]) <= 78, command.__name__
        assert f"\n\n{lines[0]}\n\n" in command.HELP or command.HELP.endswith(f"{lines[0]}\n")
