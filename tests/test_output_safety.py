"""Outputs under real faults: full and read-only filesystems, killed runs, concurrent runs.

Full and read-only disks are real tmpfs mounts where this machine allows mounting (root, as in
CI); elsewhere the same tests inject the OSError the kernel would raise. Kills are real SIGKILLs
of a real `rejuv` process, delivered at a chosen point by a wrapper script that patches one
function before running the CLI (the product has no test hooks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import bits, load_dir, read_json, run_cli
from conftest import fails as fails_with

from rejuv_cli.checkpoint.output import TMP_TAG, host_tag

ROOT = Path(__file__).resolve().parents[1]


def fails(result, code: int, *fragments: str) -> str:
    return fails_with(result, code, *fragments, one_line=True)


# ---- small real filesystems ---------------------------------------------------------------------
def _mount_tmpfs(path: Path, size: str, readonly: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


@pytest.fixture
def small_fs(tmp_path, monkeypatch):
    """mount(size, readonly=False) -> (dir, real): a real tmpfs of that size when mounting is
    allowed here; otherwise a plain directory where writes raise the OSError the kernel
    would (ENOSPC, or EROFS), and free space reads as the size."""
    mounted: list[Path] = []

    def mount(size_bytes: int, readonly: bool = False) -> tuple[Path, bool]:
        where = tmp_path / f"fs{len(mounted)}"
        if _mount_tmpfs(where, str(size_bytes), readonly):
            mounted.append(where)
            return where, True
        _inject(monkeypatch, where, size_bytes, errno.EROFS if readonly else errno.ENOSPC)
        return where, False

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _inject(monkeypatch, where: Path, size: int, code: int) -> None:
    import builtins

    import rejuv_cli.checkpoint.output as output

    real_open, real_usage = builtins.open, shutil.disk_usage

    class Limited:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(memoryview(data).cast("B"))
            if code == errno.EROFS or self.written > size:
                raise OSError(code, os.strerror(code))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        inside = Path(os.path.abspath(file)).is_relative_to(where)
        return Limited(f) if inside and "w" in mode else f

    def fake_usage(path):
        u = real_usage(path)
        inside = Path(os.path.abspath(path)).is_relative_to(where)
        return u._replace(free=size) if inside else u

    where.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(output.shutil, "disk_usage", fake_usage)


def fill(fs: Path, real: bool, monkeypatch) -> None:
    """Leave (almost) no free space on `fs`, as another process writing there would."""
    if not real:
        _inject(monkeypatch, fs, 0, errno.ENOSPC)
        return
    with contextlib.suppress(OSError), open(fs / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    assert shutil.disk_usage(fs).free < 4096


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ---- full disk ----------------------------------------------------------------------------------
def test_full_disk_is_refused_before_writing(llama, small_fs):
    fs, _ = small_fs(32 * 1024)
    out = fs / "o"
    line = fails(run_cli("fuse", *llama, "--out", out, "--reset", "0"), 1, "not enough disk space")
    assert f"--out {out}" in line and "32.77 KB is free" in line and "the output needs" in line
    assert not out.exists() and _leftovers(fs) == []

    r = run_cli("fuse", *llama, "--out", out, "--reset", "0", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    disk = plan["disk"]
    assert disk["free_bytes"] == 32 * 1024 and disk["enough"] is False
    assert disk["needed_bytes"] > sum(s["bytes"] for s in plan["shards"])
    assert "the real run would stop before writing" in r.stderr


def test_disk_filling_up_during_the_write_is_one_line(llama, small_fs, monkeypatch):
    """Free space looked sufficient (another process filled the disk meanwhile): the kernel's
    ENOSPC arrives in the middle of a shard."""
    import rejuv_cli.fuse_summary as fuse_summary

    fs, _ = small_fs(32 * 1024)
    monkeypatch.setattr(fuse_summary, "output_bytes_needed", lambda p: 0)
    out = fs / "o"
    line = fails(run_cli("fuse", *llama, "--out", out, "--reset", "0"), 1)
    assert line.startswith(f"rejuv: error: cannot write {fs}/.o.{TMP_TAG}-")
    assert ".safetensors: No space left on device; free space or choose another location" in line
    assert not out.exists() and _leftovers(fs) == []


def test_full_disk_keeps_an_existing_output(llama, tmp_path, small_fs, monkeypatch):
    import rejuv_cli.fuse_summary as fuse_summary

    fs, real = small_fs(256 * 1024)
    out = fs / "o"
    assert run_cli("fuse", *llama, "--out", out, "--reset", "0", "--alpha", "0.3").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill(fs, real, monkeypatch)  # another process fills the disk after the free-space check
    monkeypatch.setattr(fuse_summary, "output_bytes_needed", lambda p: 0)
    fails(run_cli("fuse", *llama, "--out", out, "--reset", "0", "--overwrite"), 1, "No space left")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(fs) == []


def test_read_only_filesystem(llama, small_fs):
    fs, _ = small_fs(1 << 20, readonly=True)
    line = fails(run_cli("fuse", *llama, "--out", fs / "o", "--reset", "0"), 1)
    assert str(fs) in line and "Read-only file system" in line and "choose another" in line


def test_report_and_mask_files_on_a_full_disk(llama, small_fs, monkeypatch):
    fs, real = small_fs(64 * 1024)
    fill(fs, real, monkeypatch)
    for args, flag in (
        (["diagnose", *llama, "--weights-only", "--json", fs / "r.json", "-q"], "--json"),
        (["diagnose", *llama, "--weights-only", "--html", fs / "r.html", "-q"], "--html"),
        (["fuse", *llama, "-o", fs / "o", "--dry-run", "--save-mask", fs / "m.st"], "--save-mask"),
    ):
        line = fails(run_cli(*args), 1, "No space left on device")
        assert line.startswith(f"rejuv: error: {flag}: cannot write {fs}/"), line
        assert [p.name for p in fs.iterdir()] == (["filler"] if real else [])


def test_injected_write_errors_name_the_file(llama, tmp_path, monkeypatch):
    """Errors a tmpfs cannot produce on demand: quota and I/O errors."""
    import rejuv_cli.executor as executor

    real_open = open
    for code, hint in ((errno.EDQUOT, "quota"), (errno.EIO, "I/O error")):

        def failing_open(file, mode="r", *a, _code=code, **kw):
            f = real_open(file, mode, *a, **kw)
            if "w" not in mode:
                return f

            class Failing:
                name = f.name
                closed = False

                def write(self, data):
                    raise OSError(_code, os.strerror(_code))

                def close(self):
                    f.close()

            return Failing()

        monkeypatch.setattr(executor, "open", failing_open, raising=False)
        out = tmp_path / f"o{code}"
        line = fails(run_cli("fuse", *llama, "--out", out, "--reset", "0"), 1, hint)
        assert f"cannot write {tmp_path}/.o{code}.{TMP_TAG}-" in line and ".safetensors" in line
        assert _leftovers(tmp_path) == [] and not out.exists()


# ---- killed runs --------------------------------------------------------------------------------
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import rejuv_cli.checkpoint.output as output
    import rejuv_cli.executor as executor
    where = sys.argv[1]

    def die():
        os.kill(os.getpid(), int(os.environ.get("KILL_SIGNAL", signal.SIGKILL)))

    if where == "writing":
        real = executor.Executor._output_chunk
        n = [0]
        def output_chunk(self, chunk):  # the third chunk: two are written to the shard
            n[0] += 1
            if n[0] == 3:
                die()
            return real(self, chunk)
        executor.Executor._output_chunk = output_chunk
    elif where == "between-renames":
        output._exchange = lambda a, b: False  # a filesystem without RENAME_EXCHANGE
        real_rename = Path.rename
        def rename(self, target):
            result = real_rename(self, target)
            if output.OLD_TAG in Path(target).name:
                die()
            return result
        Path.rename = rename
    elif where == "after-exchange":
        real_remove = output._remove
        def remove(path):
            if output.TMP_TAG in path.name and (path / "config.json").exists():
                die()
            return real_remove(path)
        output._remove = remove
    elif where == "mask":
        real_write = output.write_file
        def write_file(path, data, flag, say=lambda line: None):
            tmp = output.sibling(path, output.TMP_TAG)
            tmp.write_bytes(b"half a mask")
            die()
        output.write_file = write_file
        import rejuv_cli.reset.masks as mask
        mask.write_file = write_file
    from rejuv_cli.cli import main
    sys.argv = ["rejuv", *sys.argv[2:]]
    main()
    """
)


def rejuv_killed(where: str, *args) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-c", KILLER, where, *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    return r


def _expected(llama, tmp_path, alpha: str) -> dict[str, bytes]:
    ref = tmp_path / f"ref{alpha}"
    assert run_cli("fuse", *llama, "--out", ref, "--reset", "0", "--alpha", alpha).exit_code == 0
    return {k: bits(v) for k, v in load_dir(ref).items()}


def _tensors(out: Path) -> dict[str, bytes]:
    return {k: bits(v) for k, v in load_dir(out).items()}


def test_killed_while_writing_next_run_cleans_up(llama, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    out = work / "o"
    r = rejuv_killed("writing", "fuse", *llama, "--out", out, "--reset", "0")
    lock, tmp = _leftovers(work)
    assert lock == ".o.rejuv-lock"  # unlocked by the kernel when the process died
    assert tmp.startswith(f".o.{TMP_TAG}-{host_tag()}-"), tmp
    assert (work / tmp / "model.safetensors").stat().st_size > 0  # killed mid-shard
    pid = int(tmp.rsplit("-", 1)[1])
    assert not out.exists()

    r = run_cli("fuse", *llama, "--out", out, "--reset", "0", "--alpha", "0.4")
    assert r.exit_code == 0, r.stderr
    assert f"removed the partial output of a killed run (pid {pid})" in r.stderr
    assert _leftovers(work) == []
    assert _tensors(out) == _expected(llama, tmp_path, "0.4")


def replace_killed(llama, tmp_path, stage: str, alpha: str) -> tuple[Path, Path]:
    """(work dir, OUT): OUT fused at α=0.2, then a run replacing it at `alpha` killed at `stage`."""
    work = tmp_path / "w"
    work.mkdir()
    out = work / "o"
    assert run_cli("fuse", *llama, "--out", out, "--reset", "0", "--alpha", "0.2").exit_code == 0
    rejuv_killed(stage, "fuse", *llama, "-o", out, "--reset", "0", "--alpha", alpha,
                 "--overwrite")  # fmt: skip
    return work, out


def test_killed_between_the_two_renames_the_next_run_finishes_the_swap(llama, tmp_path):
    work, out = replace_killed(llama, tmp_path, "between-renames", "0.7")
    assert not out.exists()  # the window the swap had: no OUT at all
    assert any(".o.rejuv-old-" in n for n in _leftovers(work))

    # The next run (without --overwrite) finishes the swap, then refuses to replace OUT.
    r = run_cli("fuse", *llama, "--out", out, "--reset", "0", "--alpha", "0.3")
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert "finished the output swap of an interrupted run" in r.stderr
    assert "removed the previous output left by an interrupted run" in r.stderr
    assert _tensors(out) == _expected(llama, tmp_path, "0.7")
    assert _leftovers(work) == []


def test_killed_between_renames_without_the_new_output_restores_the_old(llama, tmp_path):
    work, out = replace_killed(llama, tmp_path, "between-renames", "0.5")
    for p in work.iterdir():
        if TMP_TAG in p.name:
            shutil.rmtree(p)  # say a user deleted the hidden new copy by hand
    r = run_cli("fuse", *llama, "--out", out, "--reset", "0", "--dry-run")
    assert r.exit_code == 0  # a dry run writes nothing, recovers nothing
    assert not out.exists()
    r = run_cli("fuse", *llama, "--out", out, "--reset", "0")
    assert r.exit_code == 1 and "restored" in r.stderr and "already exists" in r.stderr
    assert _tensors(out) == _expected(llama, tmp_path, "0.2")


def test_killed_after_the_exchange_leaves_only_a_stale_copy(llama, tmp_path):
    work, out = replace_killed(llama, tmp_path, "after-exchange", "0.6")
    assert _tensors(out) == _expected(llama, tmp_path, "0.6")  # the swap itself was atomic
    assert any(TMP_TAG in n for n in _leftovers(work))
    r = run_cli("fuse", *llama, "--out", out, "--reset", "0", "--alpha", "0.6", "--overwrite")
    assert r.exit_code == 0 and "removed the partial output of a killed run" in r.stderr
    assert _leftovers(work) == []


def test_killed_while_saving_a_mask(llama, tmp_path):
    mask = tmp_path / "units.safetensors"
    rejuv_killed("mask", "fuse", *llama, "-o", tmp_path / "o", "--dry-run", "--save-mask", mask)
    assert any(TMP_TAG in n for n in _leftovers(tmp_path)) and not mask.exists()
    r = run_cli("fuse", *llama, "-o", tmp_path / "o", "--dry-run", "--save-mask", mask)
    assert r.exit_code == 0 and "removed the partial output of a killed run" in r.stderr
    assert _leftovers(tmp_path) == [] and mask.stat().st_size > 100


def test_leftovers_of_live_processes_and_other_hosts_are_kept(llama, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    live = subprocess.Popen(["sleep", "60"])
    try:
        mine_live = work / f".o.{TMP_TAG}-{host_tag()}-{live.pid}"
        other_host = work / f".o.{TMP_TAG}-{uuid.uuid4().hex[:8]}-1"
        for d in (mine_live, other_host):
            d.mkdir()
            (d / "x").write_text("someone else's")
        r = run_cli("fuse", *llama, "--out", work / "o", "--reset", "0")
        assert r.exit_code == 0 and "removed" not in r.stderr
        assert (mine_live / "x").exists() and (other_host / "x").exists()
    finally:
        live.kill()
        live.wait()


def test_a_concurrent_run_to_the_same_output_is_refused(llama, tmp_path):
    lock = tmp_path / ".o.rejuv-lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"host h1, pid 4242")
        fcntl.flock(fd, fcntl.LOCK_EX)
        line = fails(run_cli("fuse", *llama, "--out", tmp_path / "o", "--reset", "0"), 1)
        assert "another rejuv run (host h1, pid 4242) is writing it" in line
        assert not (tmp_path / "o").exists()
    finally:
        os.close(fd)


def test_out_through_a_symlink_replaces_the_target_and_keeps_the_link(llama, tmp_path):
    target = tmp_path / "runs" / "v3"
    assert run_cli("fuse", *llama, "--out", target, "--reset", "0", "--alpha", "0.2").exit_code == 0
    link = tmp_path / "latest"
    link.symlink_to(target)
    r = run_cli("fuse", *llama, "--out", link, "--reset", "0", "--alpha", "0.6", "--overwrite")
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert _tensors(target) == _expected(llama, tmp_path, "0.6")
    assert read_json(target / "rejuv.json")["recipe"]["fuse"]["alpha"] == 0.6
    assert _leftovers(target.parent) == [] and _leftovers(tmp_path) == []


def test_sigterm_and_sighup_remove_the_partial_output(llama, tmp_path):
    """A real signal to a real process, delivered while it writes (the wrapper pauses there)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        work = tmp_path / sig.name
        work.mkdir()
        env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "KILL_SIGNAL": str(int(sig))}
        r = subprocess.run([sys.executable, "-c", KILLER, "writing", "fuse", *map(str, llama),
                            "--out", str(work / "o"), "--reset", "0"],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        assert r.returncode == 130, (sig, r.returncode, r.stderr)
        assert "interrupted" in r.stderr and "Traceback" not in r.stderr
        assert list(work.iterdir()) == []


def test_an_input_read_error_is_one_line(llama, tmp_path, monkeypatch):
    """EIO from the disk holding an input (injected: a failing device is not available here)."""
    import rejuv_cli.checkpoint.reader as reader

    def preadv(fd, buffers, offset):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(reader.os, "preadv", preadv)
    line = fails(run_cli("fuse", *llama, "--out", tmp_path / "o", "--reset", "0"), 1)
    assert "cannot read" in line and "Input/output error" in line and ".safetensors" in line
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []
