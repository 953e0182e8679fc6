"""The GPU-window helpers: scripts/gpu_results.py (the issue-26 report), scripts/gpu_tables.py
(tables across device windows) and reproduce.py's window options. Hand-written fixtures, no
training: seconds."""

from __future__ import annotations

import gzip
import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "gpu_check"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_results = _load("gpu_results")
gpu_tables = _load("gpu_tables")
reproduce = gpu_tables.load_reproduce()


# ---------------------------------------------------------------------------------------
# gpu_results: the issue-26 report
# ---------------------------------------------------------------------------------------


def test_stage_times_utilisation_and_throughput_from_the_fixture():
    result = gpu_results.collect(FIXTURE)
    job = result["runs"]["main_f32"]
    teacher, student = job["stages"]["teacher"], job["stages"]["student"]
    assert teacher["seconds"] == 100.0 and student["seconds"] == 110.0
    assert job["stages"]["reports"]["seconds"] == pytest.approx(9.5)
    assert job["process_s"] == 222.5
    # 2 epochs x 84 steps x 128 images over the stage's wall time
    assert teacher["images_trained"] == 168 * 128
    assert teacher["stage_images_per_s"] == pytest.approx(168 * 128 / 100)
    assert teacher["in_loop_images_per_s"] == 20000.0  # epoch 1 (the compile) left out
    assert teacher["gpu_util"]["mean"] == 55.0 and student["gpu_util"]["mean"] == 30.0
    assert job["gpu_util"]["mean"] == 42.5 and job["gpu_util"]["memory_used_max_mib"] == 1500
    assert teacher["final"]["top1"] == 0.384 and teacher["complete"]
    assert student["best_top1"] == 0.401 and student["best_epoch"] == 2


def test_targets_met_and_missed():
    ce, bkd, main, top1 = gpu_results.collect(FIXTURE)["targets"]
    assert "CE teacher loop" in ce["name"] and ce["met"] is True  # 28,250 / 30,500 = 0.93
    assert "BKD student loop" in bkd["name"] and bkd["met"] is False  # 0.80
    assert "main job" in main["name"] and main["met"] is True
    assert main["measured"].startswith("222 s")
    assert "38.3" in top1["name"] and top1["met"] is True
    assert top1["measured"] == "38.40 (+0.10)"
    assert gpu_results.main(["check", str(FIXTURE)]) == 1


def test_markdown_report(tmp_path):
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    assert gpu_results.main(["report", str(FIXTURE), "--md", str(md), "--json", str(js)]) == 0
    text = md.read_text()
    assert text.startswith("# The main job on one NVIDIA H200")
    assert "TINY" not in text
    assert "| NVIDIA H200 (143771 MiB) | 580.159.03 | 13.0 (driver) | 0.11.2 / 0.11.2 |" in text
    assert (
        "| float32 | teacher | 100 | 2/2 | 215 | 20,000 | 55 | 38.40 | 66.00 | 38.00 | 8.00 |"
        in text
    )
    assert (
        "| CE teacher | ltkd_jax device-resident | 28,250 | 28,000-28,500 | 0.93 | 2.77 |" in text
    )
    assert "BKD student loop | 0.80 (20,000 vs 25,000 images/s) | **missed** |" in text
    assert "python3 -m ltkd_jax.main --config configs/bkd_cifar.py --workdir /w/main_f32" in text
    assert json.loads(js.read_text())["runs"]["main_f32"]["stages"]["student"]["seconds"] == 110


def test_report_reads_the_tarball_and_marks_a_tiny_run(tmp_path):
    stage = tmp_path / "stage"
    shutil.copytree(FIXTURE, stage)
    (stage / "settings.json").write_text(json.dumps({"tiny": True}))
    (stage / "bench.json").unlink()
    subprocess.run(
        ["tar", "czf", str(tmp_path / "gpu_check.tar.gz"), "-C", str(stage), "."], check=True
    )
    with gpu_results.open_stage(str(tmp_path)) as stage:  # the OUT folder
        result = gpu_results.collect(stage)
    text = gpu_results.markdown(result)
    assert "**TINY smoke run" in text and "Not measured (the bench phase did not finish)" in text
    assert [t["met"] for t in result["targets"]][:2] == [None, None]


def test_a_cut_main_job_misses_the_time_target(tmp_path):
    stage = tmp_path / "stage"
    shutil.copytree(FIXTURE, stage)
    metrics = stage / "main_f32" / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))
    log = stage / "main_f32" / "run.log"
    log.write_text(
        "".join(line for line in log.read_text().splitlines(True) if "report" not in line)
    )
    result = gpu_results.collect(stage)
    student = result["runs"]["main_f32"]["stages"]["student"]
    assert not student["complete"] and student["seconds"] == pytest.approx(119.5)  # to the end
    main = next(t for t in result["targets"] if "main job" in t["name"])
    assert main["met"] is False and "not finished" in main["measured"]


def test_absl_and_local_times():
    t = gpu_results.absl_time("I1202 15:00:28.475936 1404 train.py:216] x", 2026)
    assert (t.month, t.day, t.hour, t.second, t.microsecond) == (12, 2, 15, 28, 475936)
    assert gpu_results.absl_time("Generating splits...", 2026) is None
    assert gpu_results.local_time("2026-12-02T09:59:58.123456789").microsecond == 123456


# ---------------------------------------------------------------------------------------
# reproduce.py: the window options
# ---------------------------------------------------------------------------------------


def test_read_metrics_reads_the_gzipped_copy(tmp_path):
    lines = [{"split": "test", "epoch": 1, "top1": 0.5}]
    with gzip.open(tmp_path / "metrics.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines))
    assert reproduce.read_metrics(str(tmp_path)) == lines
    assert reproduce.read_metrics(str(tmp_path / "none")) == []


def test_deadline_calibrates_on_the_runs_trained_so_far():
    now = [0.0]
    window = reproduce.Deadline(500, clock=lambda: now[0])
    assert window.allows(10_000)[0]  # the first run always starts
    window.record(estimate_s=400, wall_s=100)  # 4x faster than the cost model
    now[0] = 100.0
    fits, predicted, left = window.allows(1200)
    assert (fits, predicted, left) == (True, 300.0, 400.0)
    assert not window.allows(1700)[0]  # 425 s > 400 s left
    assert reproduce.Deadline(0).allows(float("inf"))[0]  # no deadline


def test_prioritise_keeps_each_seed_teacher_first():
    table = reproduce.tables.TABLES["cifar100_lt_if100_r32"]
    runs = [types.SimpleNamespace(seed=s, row=row) for s in (0, 1) for row in table.all_rows]
    order = reproduce.prioritise(runs, ["ltkd", "kd"], table)
    keys = [(r.seed, r.row.key) for r in order]
    assert keys[:4] == [(0, "ce"), (0, "ltkd"), (0, "kd"), (0, "cb")]
    assert keys[len(table.all_rows)] == (1, "ce")
    with pytest.raises(ValueError, match="nope"):
        reproduce.prioritise(runs, ["nope"], table)


# ---------------------------------------------------------------------------------------
# gpu_tables: set aside, pack, import
# ---------------------------------------------------------------------------------------


def _run(path: pathlib.Path, method: str, epochs: int, done: int, *, started: float = 0.0):
    """A hand-made run folder: config, task and `done` epochs of metrics."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"method": method, "num_epochs": epochs}))
    (path / "task.json").write_text(json.dumps({"class_counts": [3, 2, 1]}))
    rows = [
        {"split": "test", "epoch": e, "top1": 0.1 * e, "per_class_acc": [0.5, 0.25, 0.0]}
        for e in range(1, done + 1)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "reproduce_attempts.jsonl").write_text(
        json.dumps({"event": "start", "time": started, "device_kind": "cpu"}) + "\n"
    )
    return path


def test_prepare_sets_aside_a_checkpointless_teacher_only_when_needed(tmp_path):
    root, aside = tmp_path / "results" / "runs", tmp_path / "aside"
    seed = root / "digits_smoke" / "seed0"
    _run(seed / "ce", "ce", 2, 2)
    _run(seed / "kd", "kd", 2, 2)
    args = ("digits_smoke", [0], str(root), str(aside))
    assert gpu_tables.prepare(*args, short=False, only=["kd"]) == []  # kd is finished
    (seed / "ce" / "checkpoints" / "20").mkdir(parents=True)
    assert gpu_tables.prepare(*args, short=False, only=[]) == []  # it has its checkpoint
    shutil.rmtree(seed / "ce" / "checkpoints")
    assert gpu_tables.prepare(*args, short=False, only=[]) == [str(seed / "ce")]  # bkd to do
    assert not (seed / "ce").exists() and (aside / "digits_smoke" / "seed0" / "ce").is_dir()


def test_pack_and_import_a_window(tmp_path):
    device, here = tmp_path / "device", tmp_path / "here"
    root = "results/runs"
    seed_dev = device / root / "digits_smoke" / "seed0"
    committed = _run(here / root / "digits_smoke" / "seed0" / "ce", "ce", 2, 2, started=1.0)
    shutil.copytree(committed, device / "aside" / "digits_smoke" / "seed0" / "ce")
    _run(seed_dev / "ce", "ce", 2, 2, started=100.0)  # the retrained teacher, identical
    _run(seed_dev / "kd", "kd", 2, 2, started=200.0)  # finished in this window
    _run(seed_dev / "bkd", "bkd", 2, 1, started=300.0)  # cut by the window's end
    _run(seed_dev / "tau_norm", "tau_norm", 2, 0, started=5.0)  # an older window's: not packed
    out = tmp_path / "out"
    window = gpu_tables.pack(
        "digits_smoke",
        [0],
        str(device / root),
        str(device / "aside"),
        short=False,
        since=50.0,
        out=str(out),
        reproduce_args=f"--table=digits_smoke --root={root}",
        log="",
        commit="abc",
    )
    assert [pathlib.Path(r["run"]).name for r in window["runs"]] == ["ce", "kd", "bkd"]
    assert window["teacher_retrains"][0]["identical_test_records"] is True
    # Paths in the window are the device's; the import maps them under --repo's ROOT.
    window["root"] = root
    window["runs"] = [
        {**r, "run": str(pathlib.Path(root) / pathlib.Path(r["run"]).relative_to(device / root))}
        for r in window["runs"]
    ]
    (out / "window.json").write_text(json.dumps(window))
    with gzip.open(out / "runs.tar.gz") as f:  # members are relative to ROOT
        assert b"digits_smoke/seed0/kd/metrics.jsonl" in f.read()
    result = gpu_tables.import_window(str(out), str(here), collect=False)
    assert result["imported"] == ["digits_smoke/seed0/kd"]
    assert any("bkd (cut" in s for s in result["skipped"])
    kd = here / root / "digits_smoke" / "seed0" / "kd"
    with gzip.open(kd / "metrics.jsonl.gz", "rb") as f:
        assert f.read() == (seed_dev / "kd" / "metrics.jsonl").read_bytes()
    assert not (kd / "metrics.jsonl").exists() and (kd / "config.json").exists()
    retrains = (committed / gpu_tables.RETRAINS).read_text().splitlines()
    assert json.loads(retrains[0])["identical_test_records"] is True
    assert gpu_tables.finished(kd)  # reproduce.py sees the gzipped run as done
