"""Where and from what a benchmark result was measured: commit, dirty tree, date, machine, command.

Every bench/results/*.json that the README quotes carries `provenance` (gather()), and its .md
opens with markdown_lines(), which says loudly when the tree had uncommitted changes. The
README's bench blocks (docs/bench_tables.py, which reads the JSON: tests never import bench/)
print it as one line. Stdlib only, and no torch
import (versions come from package metadata), so bench/gpu_bench.py can use it from the
source tree on a bare GPU machine, where git may be missing (the commit is then null).

Fields of gather():

  date            UTC, ISO 8601, when the benchmark started
  commit          full hash of HEAD (null outside a git checkout)
  commit_short    its 7-character form
  commit_date     HEAD's committer date, ISO 8601
  dirty           the working tree differs from HEAD (tracked changes or untracked files not
                  ignored), bench/results/ excepted: the benchmarks write there themselves, so
                  `make bench`'s second benchmark would otherwise see the first one's output
  changed_paths   those paths (at most MAX_PATHS; changed_count has the total)
  command         the command line as run, the interpreter relative to the repository
  machine         cpu (model name from /proc/cpuinfo), cpu_count (os.cpu_count), cpus_usable
                  (the affinity mask: what this process may run on), mem_total_bytes, gpus
                  (nvidia-smi's names; [] when it is absent or sees none), os
                  (platform.platform()), system, python, and the versions of torch,
                  transformers, safetensors and rejuv-cli as installed
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = "bench/results"  # the benchmarks' own output: not a change to what is measured
MAX_PATHS = 50


def _git(*args: str, strip: bool = True) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() if strip else done.stdout


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _usable_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def machine() -> dict:
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": _usable_cpus(),
        "mem_total_bytes": _mem_total_bytes(),
        "gpus": _gpus(),
        "os": platform.platform(),
        "system": platform.system(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "safetensors": _version("safetensors"),
        "rejuv": _version("rejuv-cli"),
    }


def _relative(word: str) -> str:
    """A path inside the repository as seen from its root (the symlink kept: .venv/bin/python)."""
    path = Path(word)
    return str(path.relative_to(REPO)) if path.is_absolute() and path.is_relative_to(REPO) else word


def command(argv: list[str] | None = None) -> str:
    """The command line as run: `.venv/bin/python bench/fuse_bench.py --repeats 5`."""
    argv = list(sys.argv if argv is None else argv)
    return shlex.join([_relative(sys.executable), *(_relative(a) for a in argv[:1]), *argv[1:]])


def gather(argv: list[str] | None = None) -> dict:
    """The provenance record; call it when the benchmark starts, before it writes anything."""
    commit = _git("rev-parse", "HEAD")
    changed: list[str] | None = None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=normal", "--", ".",
                      f":(exclude){RESULTS_DIR}", strip=False)  # fmt: skip
        if status is not None:
            changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "commit_short": commit[:7] if commit else None,
        "commit_date": _git("show", "-s", "--format=%cI", "HEAD") if commit else None,
        "dirty": None if changed is None else bool(changed),
        "changed_count": None if changed is None else len(changed),
        "changed_paths": None if changed is None else changed[:MAX_PATHS],
        "command": command(argv),
        "machine": machine(),
    }


def markdown_lines(p: dict) -> list[str]:
    """The provenance paragraph of a results .md, with a loud warning for a dirty tree."""
    m = p.get("machine") or {}
    ram = f"{m['mem_total_bytes'] / 2**30:.1f} GiB RAM" if m.get("mem_total_bytes") else None
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    cores = f"{m.get('cpu_count')} CPUs ({m.get('cpus_usable')} usable)"
    versions = " · ".join(f"{k} {m[k]}" for k in ("python", "torch", "transformers") if m.get(k))
    lines = [
        f"Commit: `{p.get('commit') or 'unknown (not a git checkout)'}` "
        f"(committed {p.get('commit_date') or 'unknown'}) · measured {p.get('date')} (UTC)",
        "",
        f"Machine: {m.get('cpu')} · {cores} · {ram} · {gpus} · {m.get('os')} · {versions}",
        "",
        f"Command: `{p.get('command')}`",
    ]
    if p.get("dirty"):
        shown = ", ".join(p.get("changed_paths") or [])
        more = p["changed_count"] - len(p.get("changed_paths") or [])
        lines += [
            "",
            f"> **WARNING: uncommitted changes.** The working tree differed from commit "
            f"{p.get('commit_short')} in {p['changed_count']} path(s): {shown}"
            + (f" and {more} more" if more > 0 else "")
            + ". These figures belong to no commit; commit, then rerun `make bench`.",
        ]
    elif p.get("dirty") is None:
        lines += ["", "> **Unknown tree state**: git was not available; the commit is unknown."]
    return lines


def machine_info() -> dict:
    """The older `machine` record, kept for bench/gpu_bench.py's JSON and header line."""
    m = machine()
    return {
        "nproc": m["cpus_usable"],
        "cpu_count": m["cpu_count"],
        "cpu": m["cpu"],
        "mem_total_gb": round(m["mem_total_bytes"] / 1e9, 1) if m["mem_total_bytes"] else None,
        "python": m["python"],
        "platform": m["os"],
        "torch": m["torch"],
        "transformers": m["transformers"],
        "safetensors": m["safetensors"],
        "rejuv": m["rejuv"],
        "git": _git("describe", "--always", "--dirty") or None,
    }
