"""The reset scorers declare themselves once, in `reset.registry.SCORERS`: a name, the settings
they read with their defaults, a description and a reference, and the code that runs them."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

from rejuv_cli.recipe import ResetSettings
from rejuv_cli.reset.registry import DATA_SCORERS, SCORERS


def test_every_scorer_declares_itself_and_its_code_exists():
    defaults = {f.name: f.default for f in dataclasses.fields(ResetSettings)}
    assert sorted(SCORERS) == ["attribution", "dormant", "drift", "saturated"]
    for name, scorer in SCORERS.items():
        assert scorer.name == name and scorer.summary and scorer.reference
        for param, default in scorer.params.items():  # the same defaults as the settings
            assert defaults[param] == default, (name, param)
        module, func = scorer.entry.split(":")
        assert callable(getattr(importlib.import_module(module), func))
    assert DATA_SCORERS == ("dormant", "saturated", "attribution")
    assert not SCORERS["drift"].params and not SCORERS["drift"].data


def test_the_registry_imports_no_torch():
    code = "import sys, rejuv_cli.reset.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
