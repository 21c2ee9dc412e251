"""The GPU check kit: device choice, figures, comparison helpers, and the `make test-gpu` runner.

    make test-gpu                  # on a CUDA machine: tests/test_gpu.py, CUDA against CPU
    DRY_RUN=1 make test-gpu        # anywhere: the same test bodies, the CPU standing in for CUDA
    PYTHON=/path/python make test-gpu

Run as a script (what `make test-gpu` does, with PYTHONPATH=src: no install), this module checks
that the interpreter has the packages and, unless DRY_RUN=1, CUDA (else one line and exit 2);
runs pytest in-process on tests/test_gpu.py only; then writes bench/results/gpu_tests.txt (a
header, the pytest output, one row of figures per comparison, and which third-party packages
were imported) plus .json and a JUnit .xml next to it. A dry run writes gpu_tests-dry-run.* so
it never overwrites the results of a real GPU run.

Environment read by the tests (tests/test_gpu.py):
  REJUV_TEST_GPU_DEVICE  cuda | cuda:N | cpu. cpu is the dry run: the "device" side runs on the
                         CPU. Unset: cuda when torch has it, else the tests are skipped.
  REJUV_TEST_GPU_BF16    dry run only, default 1: load the device side's models in bfloat16, as
                         CUDA does (calib/models.py `model_dtype`), so forward-pass comparisons
                         meet real bf16-vs-float32 differences and the tolerances are exercised.
                         0: float32 on both sides (every difference is then zero).

Only the standard library is imported at module level, plus numpy and torch inside functions:
the fast suite imports this module through tests/test_gpu.py, and the runner must be able to
say "no torch here" in one line.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ENV_DEVICE = "REJUV_TEST_GPU_DEVICE"
ENV_BF16 = "REJUV_TEST_GPU_BF16"
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TEST_FILE = "tests/test_gpu.py"

# What the kit may import (distribution names), besides the standard library and what these
# require themselves (their requirement closure, computed from the installed metadata).
ALLOWED = (
    "torch",
    "transformers",
    "safetensors",
    "accelerate",
    "typer",
    "rich",
    "huggingface-hub",
    "pyyaml",
    "xxhash",
    "peft",
    "pytest",
    "numpy",
)
# Optional packages an allowed package imports by itself whenever they are installed, whatever
# rejuv does: transformers' chat-template utilities import pillow (`is_vision_available`). Not
# required on the device machine; allowed when present (a venv with `make handoff`'s
# matplotlib has it).
OPTIONAL_BY_ALLOWED = ("pillow",)
# Import names of the packages the runner checks for up front (peft: allowed, not needed).
NEEDED = {
    "torch": "torch",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "accelerate": "accelerate",
    "typer": "typer",
    "rich": "rich",
    "huggingface_hub": "huggingface_hub",
    "yaml": "pyyaml",
    "xxhash": "xxhash",
    "pytest": "pytest",
    "numpy": "numpy",
}

FIGURES: list[dict] = []  # one row per comparison, appended by `Recorder`, read by the runner


# --- device ------------------------------------------------------------------------------------


def requested_device() -> tuple[str | None, str]:
    """(device string, why) from REJUV_TEST_GPU_DEVICE and torch; None: skip the GPU tests."""
    import torch

    forced = os.environ.get(ENV_DEVICE, "").strip()
    if forced == "cpu":
        return "cpu", f"dry run ({ENV_DEVICE}=cpu): the CPU stands in for the GPU"
    if forced:
        if not forced.startswith("cuda"):
            raise ValueError(f"{ENV_DEVICE}={forced!r}: use cuda, cuda:N or cpu (dry run)")
        return forced, f"{ENV_DEVICE}={forced}"
    if torch.cuda.is_available():
        return "cuda", "CUDA is available"
    return None, f"no CUDA device (set {ENV_DEVICE}=cpu, or DRY_RUN=1 make test-gpu, to dry-run)"


@dataclass(frozen=True)
class Kit:
    """The device side of every comparison. The reference side is always the CPU."""

    device: str  # "cuda", "cuda:N", or "cpu" in a dry run
    bf16: bool  # dry run: the device side's models load in bfloat16 (as on CUDA)

    @property
    def dry_run(self) -> bool:
        return self.device == "cpu"

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    @property
    def forward_dtype(self):
        """The dtype the device side's forward passes run in (bfloat16 on CUDA)."""
        import torch

        return torch.bfloat16 if (not self.dry_run or self.bf16) else torch.float32

    @contextmanager
    def side(self):
        """Inside: models load as on the device. Only a dry run with bf16 emulation changes
        anything (rejuv_cli.calib.models.model_dtype -> bfloat16); on CUDA it is a no-op."""
        if not (self.dry_run and self.bf16):
            yield
            return
        import torch

        import rejuv_cli.calib.models as models

        original = models.model_dtype
        models.model_dtype = lambda device: torch.bfloat16
        try:
            yield
        finally:
            models.model_dtype = original


def make_kit(device: str) -> Kit:
    bf16 = device == "cpu" and os.environ.get(ENV_BF16, "1").strip() not in ("0", "", "no")
    return Kit(device, bf16)


# --- figures -----------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Records one row per comparison (what, value, limit) into FIGURES and asserts it."""

    test: str
    rows: list[dict] = field(default_factory=list)

    def note(self, what: str, value, limit=None, ok: bool | None = None) -> None:
        row = {"test": self.test, "what": what, "value": _plain(value), "limit": _plain(limit),
               "ok": ok}  # fmt: skip
        FIGURES.append(row)
        self.rows.append(row)

    def at_most(self, what: str, value: float, limit: float) -> None:
        """Record value ≤ limit and assert it."""
        ok = bool(value <= limit)
        self.note(what, value, limit, ok)
        assert ok, f"{what}: {value:.6g} > limit {limit:.6g}"

    def at_least(self, what: str, value: float, limit: float) -> None:
        ok = bool(value >= limit)
        self.note(what, value, f">= {limit}", ok)
        assert ok, f"{what}: {value:.6g} < limit {limit:.6g}"

    def equal(self, what: str, got, want) -> None:
        ok = got == want
        self.note(what, got if ok else f"{got!r} != {want!r}", "equal", ok)
        assert ok, f"{what}: {got!r} != {want!r}"

    def close(self, what: str, got: float | None, want: float | None, rtol: float,
              atol: float = 0.0, ref: str = "cpu") -> None:  # fmt: skip
        """|got − want| ≤ atol + rtol·|want| for two scalars (None: both not measured); `ref`
        names the reference side in the figure."""
        if got is None or want is None:
            self.equal(what, got, want)
            return
        diff = abs(got - want)
        limit = atol + rtol * abs(want)
        ok = bool(diff <= limit)
        self.note(f"{what} |Δ| ({ref} {want:.6g})", diff, limit, ok)
        assert ok, f"{what}: {got!r} vs {ref} {want!r}: |Δ| {diff:.3g} > {limit:.3g}"


def _plain(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
    except ImportError:  # pragma: no cover - numpy comes with torch
        pass
    return x


def figures_table(rows: Iterable[dict]) -> list[str]:
    """Fixed-width lines: test, comparison, value, limit, ok."""

    def fmt(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows = list(rows)
    if not rows:
        return ["(no figures: every comparison was skipped or failed before recording)"]
    head = ("test", "comparison", "value", "limit", "ok")
    body = [(r["test"], r["what"], fmt(r["value"]), fmt(r["limit"]),
             {True: "yes", False: "NO", None: ""}[r["ok"]]) for r in rows]  # fmt: skip
    widths = [min(max(len(x[i]) for x in [head, *body]), cap)
              for i, cap in enumerate((52, 64, 14, 22, 3))]  # fmt: skip
    lines = []
    for row in [head, *body]:
        cells = [c.ljust(w) if len(c) <= w else c for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


# --- comparisons -------------------------------------------------------------------------------


def differing_files(a: Path, b: Path, skip: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """(names of files that differ or exist on one side only, files compared) of two output
    directories; `skip` names files that legitimately differ (timings, the command line)."""
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    bad = []
    compared = 0
    for name in names:
        if name in skip:
            continue
        pa, pb = a / name, b / name
        if not (pa.is_file() and pb.is_file()) or pa.read_bytes() != pb.read_bytes():
            bad.append(name)
        compared += 1
    return bad, compared


def ordered_bits(t) -> object:
    """A float tensor's bit patterns as int64 numpy, ordered like the values (so the difference
    of two is a distance in ulps; −0.0 and +0.0 both map to 0)."""
    import numpy as np
    import torch

    size = t.element_size()
    view = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    raw = t.contiguous().view(view).numpy().astype(np.int64)
    magnitude = raw & ((1 << (8 * size - 1)) - 1)
    return np.where(raw < 0, -magnitude, magnitude)


def ulp_distance(a, b):
    """Elementwise distance in units in the last place of two same-dtype float tensors."""
    import numpy as np

    return np.abs(ordered_bits(a) - ordered_bits(b)).reshape(a.shape)


def normalised_errors(ref: list, got: list) -> tuple[float, float]:
    """Per module instance, max |got − ref| / max |ref|; returns (worst over instances, worst
    per-unit relative error). NaN (not measured) must sit at the same units on both sides."""
    import numpy as np

    worst_norm, worst_rel = 0.0, 0.0
    for r, g in zip(ref, got, strict=True):
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        nan = np.isnan(r)
        assert np.array_equal(nan, np.isnan(g)), "not-measured (NaN) units differ"
        r, g = r[~nan], g[~nan]
        if not r.size:
            continue
        scale = float(np.abs(r).max())
        diff = np.abs(g - r)
        if scale > 0:
            worst_norm = max(worst_norm, float(diff.max()) / scale)
        worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(r), 1e-30)).max()))
    return worst_norm, worst_rel


def mask_swaps(ref_scores: list, ref_masks: list, got_masks: list, tol: float) -> tuple[int, float]:
    """How two selections of the same size differ: (units selected on one side only, the worst
    swap as a share of what rounding allows; ≤ 1 is a legitimate tie-break).

    Units that leave the selection are paired, in score order, with the units that enter it.
    A score may be off by `tol` × the largest |score| of its module instance (the tolerance
    the scores themselves are held to), so a pair whose reference scores lie within the sum of
    their two allowances can swap places: near the global boundary, or at a module's cap
    (max_per_module), where a unit trades places with a neighbour of its own module.
    """
    import numpy as np

    scores = np.concatenate([np.asarray(s, np.float64) for s in ref_scores])
    scales = np.concatenate([
        np.full(len(s), np.nanmax(np.abs(s)) if np.isfinite(s).any() else 0.0)
        for s in (np.asarray(x, np.float64) for x in ref_scores)
    ])  # fmt: skip
    ref = np.concatenate([np.asarray(m, bool) for m in ref_masks])
    got = np.concatenate([np.asarray(m, bool) for m in got_masks])
    leave, enter = np.flatnonzero(ref & ~got), np.flatnonzero(got & ~ref)
    swapped = len(leave) + len(enter)
    if not swapped:
        return 0, 0.0
    if len(leave) != len(enter) or not np.isfinite(scores[enter]).all():
        return swapped, math.inf
    leave = leave[np.argsort(scores[leave])]
    enter = enter[np.argsort(scores[enter])]
    allowed = tol * (scales[leave] + scales[enter])
    gap = np.abs(scores[leave] - scores[enter])
    return swapped, float(np.max(gap / np.maximum(allowed, 1e-300)))


# --- the runner (make test-gpu) ----------------------------------------------------------------


class _Tee:
    """sys.stdout stand-in that also appends everything to a file (pytest's own output)."""

    def __init__(self, stream, path: Path):
        self.stream = stream
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.file.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def isatty(self) -> bool:  # no colour codes in the results file
        return False

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")

    def close(self) -> None:
        self.file.close()


def _canon(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_closure() -> set[str]:
    """ALLOWED plus everything they require (installed metadata, extras excluded, markers
    evaluated for this interpreter), as canonical distribution names."""
    import importlib.metadata as md

    from packaging.requirements import Requirement  # transformers and pytest require it

    seen: set[str] = set()
    todo = [_canon(n) for n in ALLOWED]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(_canon(req.name))
    return seen


def imported_distributions(before: set[str]) -> tuple[dict[str, set[str]], list[str]]:
    """Third-party modules imported since `before` (a sys.modules snapshot): ({distribution:
    top-level modules}, [modules that belong to no distribution and are not this repo's])."""
    import importlib.metadata as md
    import sysconfig

    owners = md.packages_distributions()
    stdlib = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")})
    by_dist: dict[str, set[str]] = {}
    unknown = []
    for top in sorted({m.split(".")[0] for m in set(sys.modules) - before}):
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            continue
        if top.startswith("__"):  # __main__, __mp_main__ (multiprocessing's alias of it)
            continue
        dists = [d for d in owners.get(top, []) if _canon(d) != "rejuv-cli"]  # this project
        if top == "rejuv_cli":
            continue
        if dists:
            for d in dists:
                by_dist.setdefault(_canon(d), set()).add(top)
            continue
        module = sys.modules.get(top)
        where = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])]
        where = [str(p) for p in where if p]
        if not where:
            continue  # made at run time (Cython's _cython_3_x / cython_runtime, torch.jit)
        if any(p.startswith((str(REPO), *stdlib)) for p in where):
            continue  # rejuv_cli from src/, conftest, test_gpu, gpu_helpers; _sysconfigdata_*
        unknown.append(top)
    return by_dist, unknown


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "transformers", "accelerate", "safetensors", "numpy", "pytest"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _git() -> str:
    import subprocess

    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        return done.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main() -> int:
    import datetime
    import importlib.util
    import json
    import platform
    import time

    before = set(sys.modules)
    dry = os.environ.get("DRY_RUN", "").strip().lower() in ("1", "yes", "true", "on")
    who = f"make test-gpu ({sys.executable})"
    missing = [pkg for mod, pkg in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"{who}: missing {', '.join(missing)}; use PYTHON=/path/to/python with torch, "
              "transformers, safetensors, accelerate, typer, rich, huggingface_hub, pyyaml, "
              "xxhash and pytest", file=sys.stderr)  # fmt: skip
        return 2
    import torch

    if not dry and not torch.cuda.is_available():
        build = f"CUDA build {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(
            f"{who}: torch {torch.__version__} ({build}) sees no CUDA device; run it on the "
            "GPU machine, or DRY_RUN=1 make test-gpu to dry-run on the CPU",
            file=sys.stderr,
        )
        return 2
    if str(REPO / "src") not in [str(Path(p).resolve()) for p in sys.path if p]:
        sys.path.insert(0, str(REPO / "src"))  # what PYTHONPATH=src does, if it was not set
    chosen = os.environ.get(ENV_DEVICE, "").strip()
    os.environ[ENV_DEVICE] = "cpu" if dry else chosen if chosen.startswith("cuda") else "cuda"
    os.environ.setdefault("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # only pytest's own plugins
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine is offline; nothing to fetch
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.chdir(REPO)

    import gpu_helpers as helpers  # the module object the tests import (FIGURES)
    import pytest

    import rejuv_cli

    stem = "gpu_tests-dry-run" if dry else "gpu_tests"
    RESULTS.mkdir(parents=True, exist_ok=True)
    txt, log = RESULTS / f"{stem}.txt", RESULTS / f".{stem}.pytest.log"
    if dry:
        bf16 = make_kit("cpu").bf16
        device_line = (f"cpu (dry run: the CPU stands in for the GPU; device-side forward passes "
                       f"in {'bfloat16, as on CUDA' if bf16 else 'float32'})")  # fmt: skip
    else:
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        device_line = (
            f"{torch.cuda.get_device_name(index)} ({props.total_memory / 2**30:.0f} "
            f"GiB, CUDA {torch.version.cuda}, cudnn {torch.backends.cudnn.version()})"
        )
    versions = _versions()
    header = [
        "# rejuv GPU checks: `make test-gpu`" + (" (DRY_RUN=1)" if dry else ""),
        f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"device: {device_line}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"python: {platform.python_version()} ({sys.executable}); host {platform.node()}, "
        f"{os.cpu_count()} CPUs",
        f"rejuv_cli: {Path(rejuv_cli.__file__).parent} (git {_git()})",
    ]
    print("\n".join(header), flush=True)
    args = [TEST_FILE, "-p", "no:cacheprovider", "-o", "addopts=", "-v", "-rfEsxX",
            "--tb=short", "--durations=8", f"--junitxml={RESULTS / (stem + '.xml')}",
            "-W", "ignore::DeprecationWarning"]  # fmt: skip
    t0 = time.perf_counter()
    tee = _Tee(sys.stdout, log)
    sys.stdout = tee
    try:
        code = int(pytest.main(args))
    finally:
        sys.stdout = tee.stream
        tee.close()
    seconds = time.perf_counter() - t0

    closure = allowed_closure()
    by_dist, unknown = imported_distributions(before)
    outside = sorted(d for d in by_dist if d not in closure and d not in OPTIONAL_BY_ALLOWED)
    listed = [d if d in closure else f"{d} ({', '.join(sorted(by_dist[d]))})" for d in by_dist]
    imports = ["third-party distributions imported: " + ", ".join(sorted(listed))]
    if outside or unknown:
        named = outside + [f"{m} (no distribution)" for m in unknown]
        imports.append("NOT ALLOWED: " + ", ".join(named))
        if dry and code == 0:
            code = 1  # the dry run is where the "only these packages" promise is checked
    else:
        imports.append(f"all within {', '.join(ALLOWED)} and their requirements")
    status = {0: "PASSED"}.get(code, "FAILED" if code == 1 else f"pytest exit code {code}")
    figures = helpers.FIGURES
    lines = [
        *header,
        "",
        "== pytest " + " ".join(args),
        log.read_text(encoding="utf-8").rstrip(),
        "",
        "== figures: one row per comparison, device vs CPU (value within limit => ok)",
        *figures_table(figures),
        "",
        "== imports",
        *imports,
        "",
        f"== result: {status} in {seconds:.1f} s",
    ]
    txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.unlink(missing_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({
        "header": header, "status": status, "exit_code": code, "seconds": round(seconds, 2),
        "figures": figures, "imports": {d: sorted(m) for d, m in sorted(by_dist.items())},
        "not_allowed": outside + unknown,
    }, indent=1, default=str) + "\n")  # fmt: skip
    print("\n".join(["", *imports, f"results: {txt.relative_to(REPO)} ({status}, "
                     f"{len(figures)} figures, {seconds:.1f} s)"]))  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
