"""Where outputs may go: never over, into or around an input or another output, never inside
OUT, never lost; and every OS error on an output is one line naming the path, nothing left.

Inputs are built the way they arise: the tiny llama checkpoints, a Hub cache written by
huggingface_hub (snapshot files are links to ../../blobs), recipe, mask and calibration files.
Filesystem faults are real: tmpfs and bind mounts (root, as in CI; skipped where mounting is not
allowed), permission bits enforced by running rejuv as root without CAP_DAC_OVERRIDE (a real
EACCES from the kernel), closed and broken stdout of a real process. Errors that the checks
made before any work would catch are also provoked at write time, by running with the check
switched off (in-process monkeypatch or a wrapper script: the product has no test hooks).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import edit_checkpoint, fails, read_json, run_cli
from hub_cache import rejuv_offline

import rejuv_cli.checkpoint.preflight as preflight
from rejuv_cli.checkpoint.reader import Checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHARD = "model-00001-of-00003.safetensors"
WEIGHTS = ("--weights-only", "-q")


def one_line(result, *fragments: str) -> str:
    return fails(result, 1, *fragments, one_line=True)


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under `roots` (links followed), by path: to prove nothing changed."""
    files = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")] if root.is_dir() else [root]):
            if p.is_file():
                files[str(p)] = p.read_bytes()
    return files


def hidden(directory: Path) -> list[str]:
    """Temporary files, lock files and other dot-entries rejuv may have left in `directory`."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the command opens a checkpoint: the refusal must come before any work."""

    def opened(*args, **kwargs):
        pytest.fail(f"a checkpoint was opened before the refusal: {args}")

    monkeypatch.setattr(Checkpoint, "open", opened)


@pytest.fixture
def files(llama_copy, tmp_path):
    """A writable llama pair plus a recipe, a calibration file and a saved mask."""
    base, sft = llama_copy
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("fuse:\n  alpha: 0.4\n")
    calib = tmp_path / "calib.jsonl"
    calib.write_text('{"prompt": "1 + 1 =", "response": " 2"}\n' * 4)
    mask = tmp_path / "units.safetensors"
    r = run_cli("fuse", base, sft, "-o", tmp_path / "unused", "--dry-run", "--save-mask", mask)
    assert r.exit_code == 0, r.stderr
    return {"base": base, "sft": sft, "recipe": recipe, "calib": calib, "mask": mask}


# ---- point 1: an output never overwrites an input -----------------------------------------------
def test_save_mask_onto_an_sft_shard_is_refused_before_any_work(files, tmp_path, monkeypatch):
    base, sft = files["base"], files["sft"]
    before = snapshot(base, sft)
    monkeypatch.setattr(Checkpoint, "open", lambda *a: pytest.fail("work started"))
    for extra in ([], ["--dry-run"]):
        line = one_line(run_cli("fuse", base, sft, "-o", tmp_path / "o", "--save-mask",
                                sft / SHARD, *extra))  # fmt: skip
        assert line == (f"rejuv: error: --save-mask {sft / SHARD} would replace {SHARD} in "
                        f"SFT ({sft}); choose a path outside it")  # fmt: skip
    assert snapshot(base, sft) == before  # the 2 KB mask did not replace the shard
    assert not (tmp_path / "o").exists() and hidden(tmp_path) == [] and hidden(sft) == []


@pytest.mark.parametrize(
    "case",
    ["fuse-mask=recipe", "fuse-mask=calib", "fuse-mask=base-config", "fuse-mask-in-base",
     "fuse-out-holds-recipe", "fuse-out-holds-mask", "diag-json=sft-shard", "diag-html=calib",
     "diag-json-in-candidate", "diag-html=candidate-index"],
)  # fmt: skip
def test_every_output_against_every_kind_of_input(files, tmp_path, no_work, case):
    f = files
    base, sft = f["base"], f["sft"]
    cand = tmp_path / "cand"
    shutil.copytree(sft, cand)
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    held = outdir / "held.yaml"
    held.write_text("fuse:\n  alpha: 0.3\n")
    held_mask = outdir / "held.safetensors"
    shutil.copy(f["mask"], held_mask)
    fuse = ["fuse", base, sft, "-o", tmp_path / "o", "--reset", "0.05"]
    calib = ["--select", "dormant", "--calib", f["calib"]]
    diag = ["diagnose", base, sft, "--calib", f["calib"], "--candidate", cand, "-q"]
    cases = {  # args, fragment of the one error line
        "fuse-mask=recipe": ([*fuse, "-r", f["recipe"], "--save-mask", f["recipe"]],
                             f"--save-mask {f['recipe']} is --recipe ({f['recipe']}); writing"),
        "fuse-mask=calib": ([*fuse, *calib, "--save-mask", f["calib"]],
                            f"is --calib ({f['calib']}); writing it would destroy the input"),
        "fuse-mask=base-config": ([*fuse, "--save-mask", base / "config.json"],
                                  f"would replace config.json in BASE ({base})"),
        "fuse-mask-in-base": ([*fuse, "--save-mask", base / "new" / "m.safetensors"],
                              f"is inside BASE ({base}); choose a path outside it"),
        "fuse-out-holds-recipe": (["fuse", base, sft, "-o", outdir, "--overwrite", "-r", held],
                                  f"--recipe ({held}) is inside --out {outdir}; writing there"),
        "fuse-out-holds-mask": (["fuse", base, sft, "-o", outdir, "--overwrite", "--mask",
                                 held_mask], f"--mask ({held_mask}) is inside --out {outdir}"),
        "diag-json=sft-shard": ([*diag, "--json", sft / SHARD], f"would replace {SHARD} in SFT"),
        "diag-html=calib": ([*diag, "--html", f["calib"]], f"--html {f['calib']} is --calib"),
        "diag-json-in-candidate": ([*diag, "--json", cand / "r.json"],
                                   f"is inside CANDIDATE ({cand}); choose a path outside it"),
        "diag-html=candidate-index": ([*diag, "--html", cand / "model.safetensors.index.json"],
                                      "would replace model.safetensors.index.json in CANDIDATE"),
    }  # fmt: skip
    args, fragment = cases[case]
    before = snapshot(tmp_path)
    one_line(run_cli(*args), fragment)
    assert snapshot(tmp_path) == before  # every input byte-identical, nothing new anywhere


def test_outputs_through_symlinks(files, tmp_path, no_work):
    base, sft = files["base"], files["sft"]
    before = snapshot(base, sft)
    to_shard = tmp_path / "latest.json"
    to_shard.symlink_to(sft / SHARD)  # a report path that is a link to an input file
    to_sft = tmp_path / "sft-link"
    to_sft.symlink_to(sft)  # a directory link into an input
    line = one_line(run_cli("diagnose", base, sft, *WEIGHTS, "--json", to_shard))
    assert f"--json {to_shard} would replace {SHARD} in SFT ({sft})" in line
    one_line(run_cli("diagnose", base, sft, *WEIGHTS, "--html", to_sft / "r.html"),
             f"--html {to_sft / 'r.html'} is inside SFT ({sft})")  # fmt: skip
    # an input given through a link protects the directory it points to
    one_line(run_cli("fuse", base, to_sft, "-o", tmp_path / "o", "--save-mask", sft / "m.st"),
             f"is inside SFT ({to_sft})")  # fmt: skip
    one_line(run_cli("fuse", base, sft, "-o", to_sft / "fused"), f"is inside SFT ({sft})")
    assert snapshot(base, sft) == before and to_shard.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["base", "sft", "recipe.yaml", "calib.jsonl", "units.safetensors", "latest.json",
         "sft-link"])  # fmt: skip


@pytest.fixture
def hub_copy(hub_cache, tmp_path):
    """A private copy of the Hub cache (links kept): snapshot dir per repo, and the cache."""
    cache = tmp_path / "hub"
    shutil.copytree(hub_cache.cache, cache, symlinks=True)
    snaps = {rid: cache / s.relative_to(hub_cache.cache) for rid, s in hub_cache.snapshots.items()}
    return cache, snaps


def test_hub_blobs_are_inputs(hub_copy, tmp_path, no_work):
    cache, snaps = hub_copy
    base, sft = snaps["acme/tiny-base"], snaps["acme/tiny-sft"]
    blob = (sft / SHARD).resolve()
    assert blob.parent.name == "blobs" and not blob.is_relative_to(sft)
    before = snapshot(cache)
    line = one_line(run_cli("fuse", base, sft, "-o", tmp_path / "o", "--save-mask", blob))
    assert line == (f"rejuv: error: --save-mask {blob} is SFT's {SHARD} (a link to {blob}); "
                    "writing it would destroy the input; choose another path")  # fmt: skip
    one_line(run_cli("diagnose", base, sft, *WEIGHTS, "--json", blob), "is SFT's", "(a link to")
    r = run_cli("fuse", base, sft, "-o", blob.parent, "--overwrite")
    one_line(r, f"SFT's README.md (a link to {blob.parent}/", f"is inside --out {blob.parent};")
    assert snapshot(cache) == before and not (tmp_path / "o").exists()


def test_hub_ids_are_checked_once_resolved(hub_copy, tmp_path):
    """Given as Hub ids, the snapshot is known only after resolving: checked again then,
    before a checkpoint is opened."""
    cache, snaps = hub_copy
    blob = (snaps["acme/tiny-sft"] / "config.json").resolve()
    before = snapshot(cache)
    runs = rejuv_offline(
        cache,
        ["fuse", "acme/tiny-base", "acme/tiny-sft", "-o", tmp_path / "o", "--save-mask", blob],
        ["diagnose", "acme/tiny-base", "acme/tiny-sft", *WEIGHTS, "--html", blob],
    )
    for run, flag in zip(runs, ("--save-mask", "--html"), strict=True):
        assert run.code == 1, run.stderr
        assert run.stderr == (f"rejuv: error: {flag} {blob} is SFT's config.json (a link to "
                              f"{blob}); writing it would destroy the input; choose another "
                              "path\n")  # fmt: skip
    assert snapshot(cache) == before and not (tmp_path / "o").exists()


# ---- point 2: no output is lost inside OUT; OUT is never the current directory ----------------
def test_an_output_inside_out_is_refused_up_front(llama, tmp_path, no_work):
    out = tmp_path / "o"
    for extra in ([], ["--dry-run"]):
        line = one_line(run_cli("fuse", *llama, "-o", out, "--save-mask", out / "m.st", *extra))
        assert line == (f"rejuv: error: --save-mask {out / 'm.st'} is inside --out {out}: that "
                        "directory is replaced whole when the run ends, so the file would be "
                        f"lost; write it outside {out}")  # fmt: skip
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)  # dangling until OUT exists
    one_line(run_cli("fuse", *llama, "-o", out, "--save-mask", link / "m.st"), "inside --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]


def test_two_outputs_on_one_path_are_refused(llama, tmp_path, no_work):
    report = tmp_path / "report"
    link = tmp_path / "same"
    link.symlink_to(report)
    one_line(run_cli("diagnose", *llama, *WEIGHTS, "--json", report, "--html", link),
             f"--json {report} and --html {link} are the same path")  # fmt: skip
    one_line(run_cli("fuse", *llama, "-o", report, "--save-mask", report), "are the same path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


def test_the_mask_beside_out_is_kept_and_recorded(llama, tmp_path):
    out, mask = tmp_path / "o", tmp_path / "units.safetensors"
    r = run_cli("fuse", *llama, "-o", out, "--reset", "0.05", "--save-mask", mask, "-q")
    assert r.exit_code == 0, r.stderr
    assert read_json(out / "rejuv.json")["reset"]["mask_saved"] == str(mask)
    assert mask.stat().st_size > 100 and not list(out.glob("*units*"))


def test_out_is_never_the_current_directory(llama, tmp_path, monkeypatch, no_work):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work / "sub")
    for out, what in ((".", "is"), ("..", "contains")):
        line = one_line(run_cli("fuse", *llama, "-o", out, "--overwrite"))
        assert f"--out {out} {what} the current directory ({work / 'sub'})" in line, line
        assert "e.g. --out ./rejuvenated" in line
    monkeypatch.chdir(llama[1].parent)  # `-o .` where the inputs live: they are protected first
    one_line(run_cli("fuse", "base", "sft", "-o", ".", "--overwrite"),
             "BASE (base) is inside --out .; writing there would destroy the input")  # fmt: skip
    assert (work / "notes.txt").read_text() == "mine" and hidden(work) == []


def test_symlinked_report_paths_are_written_through(llama, tmp_path):
    """Like `--out LINK`, a report path that is a link keeps the link and replaces its target."""
    target = tmp_path / "reports" / "today.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    r = run_cli("diagnose", *llama, *WEIGHTS, "--json", link)
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and json.loads(target.read_text())["schema_version"] == 1
    assert hidden(tmp_path) == [] and hidden(target.parent) == []


# ---- point 9: OS errors on output ----------------------------------------------------------------
def _tmpfs(mounts, where: Path, ro: bool = False) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    return mounts("-t", "tmpfs", "-o", "size=1m" + (",ro" if ro else ""), "tmpfs", where=where)


def _report_and_mask_runs(llama, d: Path) -> list[tuple[list, str, Path]]:
    """(args, flag, path) for each file output rejuv writes, aimed into directory `d`."""
    return [(["diagnose", *llama, *WEIGHTS, "--json", d / "r.json"], "--json", d / "r.json"),
            (["diagnose", *llama, *WEIGHTS, "--html", d / "r.html"], "--html", d / "r.html"),
            (["fuse", *llama, "-o", d.parent / "o", "--dry-run", "--save-mask", d / "m.st"],
             "--save-mask", d / "m.st"),
            (["fuse", *llama, "-o", d / "o", "--reset", "0"], "--out", d / "o")]  # fmt: skip


def test_read_only_filesystem_is_refused_before_any_work(llama, tmp_path, mounts, monkeypatch):
    fs = _tmpfs(mounts, tmp_path / "ro", ro=True)
    with monkeypatch.context() as m:
        m.setattr(Checkpoint, "open", lambda *a: pytest.fail("work started"))
        for args, flag, path in _report_and_mask_runs(llama, fs):
            line = one_line(run_cli(*args))
            assert line == (f"rejuv: error: {flag} {path}: cannot create files in {fs}: "
                            "Read-only file system; the filesystem is read-only; choose another "
                            "location"), line  # fmt: skip
    # The kernel's own EROFS at write time (the filesystem went read-only after the check):
    monkeypatch.setattr(preflight, "_check_location", lambda *a: None)
    for args, flag, _ in _report_and_mask_runs(llama, fs):
        line = one_line(run_cli(*args), "Read-only file system", "choose another location")
        assert str(fs) in line and (flag == "--out" or line.startswith(f"rejuv: error: {flag}:"))
    assert list(fs.iterdir()) == [] and hidden(tmp_path) == []


def test_missing_parent_directories_are_removed_after_a_failure(llama, tmp_path):
    """A run that fails while writing leaves no trace, not even the directories made for OUT."""

    def poison(state):
        name = "model.layers.1.mlp.down_proj.weight"
        if name in state:
            state[name][0, 0] = float("nan")
            return True
        return False

    edit_checkpoint(llama[1], tmp_path / "nan", poison)
    args = ["-o", tmp_path / "a" / "b" / "o", "--reset", "0"]
    one_line(run_cli("fuse", llama[0], tmp_path / "nan", *args), "down_proj.weight")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan"]


# -- permissions: root without CAP_DAC_OVERRIDE obeys permission bits like any user
RUN_MANY = textwrap.dedent(
    """
    import json, sys
    from typer.testing import CliRunner
    if sys.argv[1] == "write-time":  # skip the up-front check: reach the write itself
        import rejuv_cli.checkpoint.preflight as preflight
        preflight._check_location = lambda *a: None
    from rejuv_cli.cli import app
    runs = [CliRunner().invoke(app, args) for args in json.loads(sys.argv[2])]
    print(json.dumps([{"code": r.exit_code, "stderr": r.stderr} for r in runs]))
    """
)
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24


def _drop_dac() -> None:
    if os.geteuid() == 0:  # a non-root user obeys permission bits already
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def without_dac(mode: str, *commands: list) -> list[dict]:
    """Run CLI commands in one process that cannot override permission bits."""
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    payload = json.dumps([[str(a) for a in c] for c in commands])
    try:
        r = subprocess.run([sys.executable, "-c", RUN_MANY, mode, payload], env=env, text=True,
                           capture_output=True, timeout=300, preexec_fn=_drop_dac)  # fmt: skip
    except subprocess.SubprocessError as e:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {e}")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.slow  # 8 s; the read-only and full-disk refusals stay in make test
def test_permission_denied_is_one_line_before_and_during_the_write(llama, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    runs = _report_and_mask_runs(llama, locked)
    commands = [args for args, _, _ in runs]
    up_front = without_dac("check", *commands)
    at_write = without_dac("write-time", *commands)
    for (_, flag, path), before, during in zip(runs, up_front, at_write, strict=True):
        assert before["code"] == 1 and during["code"] == 1, (before, during)
        (line,) = before["stderr"].splitlines()
        assert line == (
            f"rejuv: error: {flag} {path}: cannot create files in {locked}: "
            "Permission denied; check the permissions, or choose another location"
        )
        (line,) = during["stderr"].splitlines()
        assert "Permission denied; check the permissions" in line and str(locked) in line
        assert "Traceback" not in during["stderr"]
    assert list(locked.iterdir()) == []


def test_existing_out_that_cannot_be_replaced(llama, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    out.chmod(0o555)
    (run,) = without_dac("check", ["fuse", *llama, "-o", out, "--reset", "0", "--overwrite"])
    assert run["code"] == 1 and run["stderr"] == (
        f"rejuv: error: --out {out}: cannot replace {out}: Permission denied; check the "
        "permissions, or choose another location\n"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and hidden(tmp_path) == []


# -- busy: a mount point cannot be renamed over
def test_out_on_a_mount_point_is_refused_before_any_work(llama, tmp_path, mounts, no_work):
    tmpfs = _tmpfs(mounts, tmp_path / "o")
    (tmpfs / "keep.txt").write_text("previous")
    src, bound = tmp_path / "src", tmp_path / "bound"
    src.mkdir()
    bound.mkdir()
    mounts("--bind", str(src), where=bound)  # same filesystem: os.path.ismount misses it
    for out in (tmpfs, bound):
        line = one_line(run_cli("fuse", *llama, "-o", out, "--overwrite", "--reset", "0"))
        assert line.startswith(f"rejuv: error: --out {out} is a mount point: rejuv writes a "
                               "sibling and renames it into place"), line  # fmt: skip
    assert (tmpfs / "keep.txt").read_text() == "previous" and hidden(tmp_path) == []


def test_busy_rename_at_write_time_is_one_line(llama, tmp_path, mounts, monkeypatch):
    """The kernel's EBUSY when the final rename meets a mount point (the up-front check off)."""
    out = _tmpfs(mounts, tmp_path / "o")
    (out / "keep.txt").write_text("previous")
    report, real = tmp_path / "r.json", tmp_path / "real.json"
    report.write_text("old")
    real.write_text("bound")
    mounts("--bind", str(real), where=report)  # a file mount: os.replace over it is EBUSY
    r = run_cli("diagnose", *llama, *WEIGHTS, "--json", report)
    one_line(r, f"--json {report} is a mount point")
    monkeypatch.setattr(preflight, "is_mount_point", lambda p: False)
    line = one_line(run_cli("fuse", *llama, "-o", out, "--overwrite", "--reset", "0"))
    assert line == (f"rejuv: error: cannot write {out}: Device or resource busy; it is a mount "
                    "point or in use; write to a new path inside or beside it")  # fmt: skip
    line = one_line(run_cli("diagnose", *llama, *WEIGHTS, "--json", report))
    assert line == (
        f"rejuv: error: --json: cannot write {report}: Device or resource busy; "
        "it is a mount point or in use; write to a new path inside or beside it"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and report.read_text() == "bound"
    assert hidden(tmp_path) == []


# -- stdout: closed, broken, full
def rejuv_process(*args, stdout, preexec_fn=None) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "rejuv_cli", *map(str, args)], env=env,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300,
                          preexec_fn=preexec_fn)  # fmt: skip


def broken_pipe(*args) -> subprocess.CompletedProcess:
    """stdout is a pipe whose reader has gone (`| head -c0`)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return rejuv_process(*args, stdout=write)
    finally:
        os.close(write)


@pytest.mark.slow  # 16 s of subprocesses; make test keeps the other stdout and write-error checks
def test_closed_broken_or_full_stdout_is_one_line(llama, tmp_path):
    diag = ("diagnose", *llama, "--weights-only", "--json", "-")
    closed = rejuv_process(*diag, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(1))
    with open("/dev/full", "w") as full:
        runs = {
            "diagnose | head -c0": (broken_pipe(*diag), "Broken pipe; the program reading it"),
            "fuse --json | head -c0": (
                broken_pipe("fuse", *llama, "-o", tmp_path / "o", "--reset", "0", "--json"),
                "Broken pipe"),
            "inspect --json | head -c0": (broken_pipe("inspect", llama[1], "--json"),
                                          "Broken pipe"),
            "diagnose >&-": (closed, "Bad file descriptor; stdout is closed; redirect it"),
            "diagnose > /dev/full": (rejuv_process(*diag, stdout=full), "No space left"),
        }  # fmt: skip
    for name, (r, fragment) in runs.items():
        assert r.returncode == 1, (name, r.returncode, r.stderr)
        (line,) = r.stderr.splitlines()  # no traceback, no "Exception ignored ... BrokenPipe"
        assert line.startswith("rejuv: error: cannot write stdout: ") and fragment in line, name
    assert (tmp_path / "o" / "rejuv.json").is_file() and hidden(tmp_path) == []
