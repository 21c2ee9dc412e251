"""rejuv: checkpoint surgery between SFT and RL (base-anchored fusion + targeted neuron reset).

`rejuv_cli.fuse`, `rejuv_cli.diagnose` and `rejuv_cli.sweep` are the Python API (rejuv_cli/api/),
loaded on first use so that `import rejuv_cli` stays light (no torch).
"""

__version__ = "0.1.0"

_API = ("fuse", "diagnose", "sweep", "FuseResult", "DiagnoseResult", "SweepResult", "GateError")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from rejuv_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'rejuv_cli' has no attribute {name!r}")
