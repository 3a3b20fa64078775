"""Output paths and the model cache are probed before any training (issue 15), progress lines reach a piped
stderr, and the terminal says when the original and the oracle came from the cache.

The machine may run as root, for whom ``os.access`` says yes to everything: the unwritable places here are a
path under a file and a path under ``/proc`` (no new files there, not even for root)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from obliviate.atomic import check_cache_dir, check_writable
from obliviate.errors import ObliviateError

PROC = "/proc/obliviate-no-such-dir/o.json"
DIGITS = ("--task", "digits", "--set", "train.epochs=2")


def _listing(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in Path(root).rglob("*")}


def _one_error_line(rc: int, stdout: str, stderr: str, needle: str) -> None:
    assert rc == 2, (rc, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in stderr and stdout.strip() == ""


# -- the probes ----------------------------------------------------------------------------------------------------

def test_check_writable_probes_for_real_and_leaves_nothing(tmp_path):
    check_writable(tmp_path / "new" / "dir" / "o.json", "--json")  # a missing parent under a writable dir: fine
    assert _listing(tmp_path) == set()  # the probe file is gone, no directory was made
    (tmp_path / "f").write_text("x")
    with pytest.raises(ObliviateError, match=r"--json .*f is not a directory"):
        check_writable(tmp_path / "f" / "o.json", "--json")
    with pytest.raises(ObliviateError, match="is a directory"):
        check_writable(tmp_path, "--json")
    with pytest.raises(ObliviateError, match="/proc is not writable"):
        check_writable(PROC, "--html")
    check_writable(None, "--json")  # no path: nothing to check


def test_a_read_only_directory_is_judged_by_a_real_write(tmp_path):
    """chmod 555 stops a user but not root: the check agrees with what an actual write does."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        try:
            (ro / "probe").write_text("x")
            (ro / "probe").unlink()
            writable = True
        except OSError:
            writable = False
        if writable:
            check_writable(ro / "o.json", "--json")
            check_cache_dir(ro)
        else:
            with pytest.raises(ObliviateError, match="is not writable"):
                check_writable(ro / "o.json", "--json")
            with pytest.raises(ObliviateError, match="is not writable"):
                check_cache_dir(ro)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_check_cache_dir(tmp_path):
    check_cache_dir(tmp_path / "missing" / "cache")  # created later, under a writable ancestor
    check_cache_dir(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ObliviateError, match=r"--cache-dir .*: is a file, expected a directory"):
        check_cache_dir(tmp_path / "f")
    with pytest.raises(ObliviateError, match=r"--cache-dir .*f is not a directory"):
        check_cache_dir(tmp_path / "f" / "cache")
    with pytest.raises(ObliviateError, match=r"--data-dir .*/proc is not writable"):
        check_cache_dir("/proc/obliviate-cache", "--data-dir")
    assert sorted(os.listdir(tmp_path)) == ["f"]


# -- every command refuses before any work --------------------------------------------------------------------------

def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    afile = tmp / "afile"
    cache = ["--cache-dir", str(tmp / "cache")]
    return {
        "run-json-under-file": (["run", *DIGITS, "--method", "finetune", "--json", str(afile / "o.json"), *cache],
                                "is not a directory"),
        "run-json-proc": (["run", *DIGITS, "--method", "finetune", "--json", PROC, *cache], "/proc is not writable"),
        "run-html-proc": (["run", *DIGITS, "--method", "finetune", "--html", PROC, *cache], "--html"),
        "run-save-model-proc": (["run", *DIGITS, "--method", "finetune", "--save-model", "/proc/x/m.safetensors",
                                 *cache], "--save-model"),
        "run-cache-file": (["run", *DIGITS, "--method", "finetune", "--cache-dir", str(afile)], "is a file"),
        "run-cache-proc": (["run", *DIGITS, "--method", "finetune", "--cache-dir", "/proc/obliviate-cache"],
                           "--cache-dir /proc/obliviate-cache: /proc is not writable"),
        "bench-cache-file": (["bench", *DIGITS, "--methods", "finetune", "--cache-dir", str(afile)], "is a file"),
        "bench-html-proc": (["bench", *DIGITS, "--methods", "finetune", "--html", PROC, *cache], "--html"),
        "tune-out-proc": (["tune", *DIGITS, "--method", "finetune", "--trials", "1", "--out", PROC, *cache],
                          "--out"),
        "tune-cache-file": (["tune", *DIGITS, "--method", "finetune", "--trials", "1", "--cache-dir", str(afile)],
                            "is a file"),
        "audit-json-proc": (["audit", "--task", "authors", "--method", "retrain", "--json", PROC, *cache],
                            "--json"),
        "audit-cache-file": (["audit", "--task", "authors", "--method", "retrain", "--cache-dir", str(afile)],
                             "is a file"),
        "demo-out-file": (["demo", "--out", str(afile)], "is not a directory"),
        "s3t-json-proc": (["s3t", "simulate", "--shards", "2", "--slices", "2", "--budget", "1", "--json", PROC],
                          "--json"),
        "ledger-export-proc": (["ledger", "export", "--out", PROC, "--data-dir", str(tmp / "data")], "--out"),
        "serve-data-dir-file": (["serve", "--insecure-dev", "--data-dir", str(afile)], "--data-dir"),
        "serve-model-dir-proc": (["serve", "--insecure-dev", "--data-dir", str(tmp / "data"), "--model-dir",
                                  "/proc/obliviate-models"], "--model-dir"),
    }


CASES = list(_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_unwritable_outputs_exit_2_before_any_work(case, cli, tmp_path, monkeypatch, cache_dir):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (tmp_path / "afile").write_text("x")
    args, needle = _cases(tmp_path)[case]
    before = _listing(tmp_path, cache_dir)
    rc, stdout, stderr = cli(*args)
    _one_error_line(rc, stdout, stderr, needle)
    assert _listing(tmp_path, cache_dir) == before  # nothing trained, cached or written
    assert (tmp_path / "afile").read_text() == "x"


def test_an_unwritable_default_cache_is_refused_with_the_way_out(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_CACHE", "/proc/obliviate-cache")
    rc, stdout, stderr = cli("run", *DIGITS, "--method", "finetune")
    _one_error_line(rc, stdout, stderr, "$OBLIVIATE_CACHE /proc/obliviate-cache: /proc is not writable")
    assert "--no-cache" in stderr


# -- progress lines and "loaded from cache" -------------------------------------------------------------------------

def test_progress_lines_on_a_piped_stderr_and_cache_reuse_said(cli, tmp_path, monkeypatch):
    """stderr is captured here (not a TTY): one line when a training starts, one with its seconds at the end; the
    second run of the same command loads both models from the cache and says so."""
    monkeypatch.delenv("OBLIVIATE_QUIET", raising=False)
    monkeypatch.delenv("CI", raising=False)
    args = ("run", *DIGITS, "--method", "finetune", "--set", "epochs=1", "--cache-dir", str(tmp_path / "cache"))
    rc, stdout, stderr = cli(*args)
    assert rc == 0, stderr
    lines = stderr.splitlines()
    assert "train original (digits): seed 0, 2 epochs …" in lines, stderr
    assert "train oracle (digits): seed 0, 2 epochs …" in lines, stderr
    done = [line for line in lines if line.startswith("train original (digits): done in ")]
    assert len(done) == 1 and done[0].endswith(" s"), stderr
    assert all(len(line) <= 80 for line in lines if line.startswith("train ")), stderr
    assert "original: trained in" in stdout and "oracle: trained in" in stdout, stdout

    rc, stdout, stderr = cli(*args)
    assert rc == 0, stderr
    assert "train original" not in stderr and "train oracle" not in stderr  # nothing trained the second time
    assert "original: loaded from cache (sha256 " in stdout and "oracle: loaded from cache (sha256 " in stdout
    assert "loaded from cache" in stdout.replace("\n", " ")


def test_quiet_prints_no_progress_lines(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("OBLIVIATE_QUIET", raising=False)
    monkeypatch.delenv("CI", raising=False)
    rc, stdout, stderr = cli("run", *DIGITS, "--method", "finetune", "--set", "epochs=1", "--no-oracle",
                             "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert rc == 0, stderr
    assert stderr == "" and stdout == ""


def test_ci_prints_no_progress_lines(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("OBLIVIATE_QUIET", raising=False)
    monkeypatch.setenv("CI", "1")
    rc, stdout, stderr = cli("run", *DIGITS, "--method", "finetune", "--set", "epochs=1", "--no-oracle",
                             "--cache-dir", str(tmp_path / "cache"))
    assert rc == 0, stderr
    assert "train original" not in stderr
    assert "original: trained in" in stdout


def test_bench_says_once_per_seed_where_the_models_came_from(cli, tmp_path):
    args = ("bench", *DIGITS, "--methods", "finetune,gradient_ascent", "--set", "finetune.epochs=1",
            "--set", "gradient_ascent.epochs=1", "--cache-dir", str(tmp_path / "cache"))
    rc, _, stderr = cli(*args)
    assert rc == 0, stderr
    assert stderr.count("seed 0: original: trained in") == 1, stderr
    rc, _, stderr = cli(*args)
    assert rc == 0, stderr
    line = [x for x in stderr.splitlines() if "seed 0: original:" in x]
    assert len(line) == 1, stderr
    assert "original: loaded from cache (sha256 " in line[0] and "oracle: loaded from cache" in line[0], line
