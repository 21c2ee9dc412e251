"""`rejuv fuse --markdown FILE`: what the fuse did, as markdown for CI. No torch.

Not a second rendering: the sections are the model card's (checkpoint/card.card_sections:
what was done, α and the reset, the inputs with their digests, the recipe and command, the
result), one heading level down, under a heading that names the output.
"""

from __future__ import annotations

from pathlib import Path

from rejuv_cli.checkpoint.card import card_sections
from rejuv_cli.report.markdown import code


def fuse_markdown(provenance: dict, out: Path) -> str:
    """`provenance`: what the card was written from (OUT/rejuv.json)."""
    return f"## rejuv fuse: wrote {code(out)}\n\n{card_sections(provenance, '###')}"
