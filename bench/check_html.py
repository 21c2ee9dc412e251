"""Headless-browser check of a `rejuv diagnose --html` report (rejuv_cli.testing.browser).

python bench/check_html.py [REPORT.html] [--png OUT.png]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # from a source tree

from rejuv_cli.testing.browser import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
