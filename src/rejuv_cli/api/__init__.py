"""rejuv from Python: `fuse`, `diagnose` and `sweep`, the functions the commands are shells over.

They take the commands' settings by name (the one declaration of each, settings.SETTINGS),
return typed results instead of printing, and raise rejuv's exception classes
(rejuv_cli.errors) with the CLI's one-line messages. Importing them imports no torch; the
work does.

    import rejuv_cli
    result = rejuv_cli.diagnose("./base", "./sft", calib="builtin:math")
    if result.verdict != "ok":
        sweep = rejuv_cli.sweep("./base", "./sft", alphas=[0.5, 0.7, 0.9], out="./rejuvenated")
"""

from rejuv_cli.api.diagnose import DiagnoseResult, GateError, diagnose
from rejuv_cli.api.fuse import FuseResult, fuse
from rejuv_cli.api.sweep import SweepResult, sweep

__all__ = ["DiagnoseResult", "FuseResult", "GateError", "SweepResult", "diagnose", "fuse",
           "sweep"]  # fmt: skip
