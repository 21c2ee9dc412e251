"""Write or check generated README blocks: the one step docs/usage.py and docs/bench_tables.py
share once each has rendered the README's new text."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path


def write_or_check(path: Path, text: str, new: str, check: bool, stale: str) -> int:
    """With `check`: 0 when `new` equals `text`, else the first 40 lines of the diff and the
    `stale` message on stderr, and 1. Without: write `new` to `path` if it differs; 0."""
    if check:
        if new == text:
            return 0
        diff = difflib.unified_diff(text.splitlines(), new.splitlines(), path.name, "generated",
                                    lineterm="", n=1)  # fmt: skip
        print("\n".join(list(diff)[:40]), file=sys.stderr)
        print(stale, file=sys.stderr)
        return 1
    if new != text:
        path.write_text(new)
    return 0
