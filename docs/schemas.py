"""Write or check the JSON Schema files the package ships (src/rejuv_cli/schemas/), generated from
their declaration in src/rejuv_cli/report/json_schemas.py.

    python docs/schemas.py            # rewrite the files (make docs)
    python docs/schemas.py --check    # exit 1 when a file differs from its declaration
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rejuv_cli.report.json_schemas import NAMES, render, schema_file  # noqa: E402

FOLDER = ROOT / "src" / "rejuv_cli" / "schemas"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = []
    for name in NAMES:
        path = FOLDER / schema_file(name)
        text = render(name)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"{', '.join(stale)}: differ from report/json_schemas.py; run "
              "`python docs/schemas.py` (make docs)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
