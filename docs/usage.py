"""The README's usage blocks, generated from the commands' own declarations (`make docs`).

Each block sits between `<!-- usage: COMMAND -->` and `<!-- /usage -->` in README.md and lists
every argument and option of `rejuv COMMAND` as Click parses them (settings.py declares most of
them), so a flag cannot exist in one and not the other: tests/test_readme.py fails when the
README's blocks differ from what this script writes.

    python docs/usage.py            # rewrite the blocks in README.md
    python docs/usage.py --check    # exit 1 and show the first difference
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
WIDTH = 95  # the README's code blocks stay readable on GitHub without scrolling
BLOCK = re.compile(r"(<!-- usage: (\S+) -->\n```bash\n)(.*?)(```\n<!-- /usage -->)", re.S)


def _value(param) -> str:
    """What follows an option's name: its default where it is one short word, else its
    metavar (choices as a|b|c), else its name in capitals."""
    from rejuv_cli.settings import SETTINGS

    setting = SETTINGS.get(param.name)
    choices = param.metavar and param.metavar.startswith("[")
    if choices:
        return param.metavar.strip("[]")
    if setting is not None and setting.default is not None and not setting.metavar:
        return str(setting.default) if not setting.comma_list else ",".join(setting.default)
    if param.default not in (None, False) and not param.metavar:
        return str(param.default)
    return param.metavar or param.name.upper()


def _word(param) -> str:
    """One argument or option as the synopsis shows it: BASE, --out OUT, [--alpha 0.5]."""
    if param.param_type_name == "argument":
        name = param.metavar or param.name.upper()
        return f"{name}..." if param.nargs == -1 else name
    flag = max(param.opts, key=len)  # the long name
    text = flag if param.is_flag else f"{flag} {_value(param)}"
    return text if param.required else f"[{text}]"


def synopsis(command, name: str) -> str:
    """`rejuv NAME ...` with every parameter: the arguments and the main options first, then
    one line per --help panel (fuse's and sweep's "Reset"), wrapped at WIDTH."""
    head = f"rejuv {name}"
    indent = " " * (len(head) + 1)
    groups: dict[str, list[str]] = {}
    for param in command.params:
        if not getattr(param, "hidden", False):
            groups.setdefault(getattr(param, "rich_help_panel", None) or "", []).append(
                _word(param)
            )
    lines: list[str] = []
    for words in groups.values():
        line = head if not lines else indent
        for word in words:
            if len(line) + len(word) + 1 > WIDTH and line.strip() not in ("", head):
                lines.append(line)
                line = indent
            line += word if line == indent else " " + word
        lines.append(line)
    return "\n".join(lines) + "\n"


def commands() -> dict:
    """Every command by name, and the group itself as "rejuv" (`rejuv --version`)."""
    import typer

    from rejuv_cli.cli import app

    group = typer.main.get_command(app)
    return {"rejuv": group, **group.commands}


def group_synopsis(group) -> str:
    options = " ".join(_word(p) for p in group.params)
    return f"rejuv {options} [--help] {{{','.join(group.commands)}}} ...\n"


def render(readme: str) -> str:
    """README text with every usage block rewritten."""
    found = commands()

    def block(m: re.Match) -> str:
        name = m.group(2)
        if name not in found:
            raise SystemExit(f"README.md: usage block for unknown command {name!r}")
        text = group_synopsis(found[name]) if name == "rejuv" else synopsis(found[name], name)
        return m.group(1) + text + m.group(4)

    return BLOCK.sub(block, readme)


def main() -> int:
    from readme_blocks import write_or_check

    text = README.read_text()
    return write_or_check(README, text, render(text), "--check" in sys.argv[1:],
                          "README.md: usage blocks are out of date; run `make docs`")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
