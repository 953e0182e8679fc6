"""scripts/kill_resume.py reads progress from log lines and finds every difference a kill
can leave: a record written twice, a changed array in any kept checkpoint, another set of
kept checkpoints. Quick: synthetic run directories; the harness itself runs in
tests/test_fault_injection.py."""

import json
import shutil

import numpy as np
import orbax.checkpoint as ocp
from conftest import load_script

harness = load_script("kill_resume")

LOG = [
    "I1202 main.py:183] JAX 0.10.2, process 0/1, devices: [CpuDevice(id=0)]",
    "I1202 teachers.py:90] stage 1: teacher 1 of 1 in {root}/teacher",
    "I1202 writers.py:93] step 7: step=7, epoch=1, split=train, loss=1.0",
    "I1202 writers.py:93] step 14: step=14, epoch=2, split=train, loss=1.0",
    "I1202 writers.py:93] step 14: step=14, epoch=2, split=test, top1=0.5",
    "I1202 job.py:142] stage 2, the student: bkd in {root}",
    "I1202 writers.py:93] step 7: step=7, epoch=1, split=train, loss=1.0",
]


def _job(root, records=(), arrays=None, steps=(14,)):
    """A one-stage job directory: metrics.jsonl, config, task, checkpoints of `arrays`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for step in steps:
        path = root / "checkpoints" / str(step)
        ocp.PyTreeCheckpointer().save(path / "state", arrays)
        (path / "data").mkdir()
        (path / "data" / "process_0-of-1.json").write_text('{"next_index": 3}')
    return harness.Job(str(root), ["."], [14])


def test_progress_and_phase_follow_the_log_over_both_stages(tmp_path):
    (tmp_path / "teacher").mkdir()
    job = harness.Job(str(tmp_path), ["teacher", "."], [14, 14])
    lines = [line.format(root=tmp_path) for line in LOG]
    assert job.progress(lines[:1]) == (0, set())
    assert job.progress(lines[:4]) == (14, {0})
    assert job.progress(lines[:6]) == (14, {0})  # the student started, no step yet
    assert job.progress(lines) == (21, {0, 1})
    assert job.phase(lines[:2]).startswith("start-up")
    assert job.phase(lines[:6]).startswith("between stages")
    assert job.phase(lines).startswith("training")
    (tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp").mkdir(parents=True)
    assert job.phase(lines) == "saving a checkpoint"
    assert job.phase(lines[:1]).startswith("start-up")  # a dead save's leftovers


def test_the_plan_starts_fresh_spreads_progress_past_the_first_checkpoint_and_ends_in_reports(
    tmp_path,
):
    job = harness.Job(str(tmp_path), ["teacher", "."], [70, 70])
    plan = harness.kill_plan(12, job, first=42, rng=harness.random.Random(0))
    kinds = [kind for kind, _ in plan]
    assert len(plan) == 12 and kinds[0] == "start-up" and kinds[-1] == "reports"
    assert {"progress", "save", "start-up"} <= set(kinds[1:-1])
    targets = [target for kind, target in plan if kind == "progress"]
    assert targets == sorted(targets) and 70 in targets  # the student's start is a target
    assert all(42 <= t < 140 for t in targets)


def test_every_difference_a_kill_can_leave_is_reported(tmp_path):
    records = [
        {"step": 7, "split": "train", "loss": 1.0, "images_per_sec": 100.0},
        {"step": 14, "split": "test", "top1": 0.5},
    ]
    arrays = {"params": {"w": np.arange(4.0)}, "opt": {"m": np.ones(3)}}
    reference = _job(tmp_path / "reference", records, arrays, steps=(7, 14))
    same = _job(tmp_path / "same", records, arrays, steps=(7, 14))
    (tmp_path / "same" / "metrics.jsonl").write_text(  # another machine speed: not a difference
        (tmp_path / "same" / "metrics.jsonl").read_text().replace("100.0", "90.0")
    )
    assert harness.checkpoint_differences(same, reference) == []
    assert harness.record_differences(same, reference) == []

    twice = _job(tmp_path / "twice", [*records, records[-1]], arrays, steps=(7, 14))
    (problem, *_) = harness.record_differences(twice, reference)
    assert problem == ".: records written more than once: [(14, 'test')]"

    changed = {"params": {"w": np.arange(4.0)}, "opt": {"m": np.array([1.0, 1.0, 1.5])}}
    older = _job(tmp_path / "older", records, changed, steps=(7,))
    shutil.copytree(
        tmp_path / "reference" / "checkpoints" / "14", older.workdir + "/checkpoints/14"
    )
    assert harness.checkpoint_differences(older, reference) == [".@7: ('opt', 'm') differs"]
    fewer = _job(tmp_path / "fewer", records, arrays, steps=(14,))
    assert harness.checkpoint_differences(fewer, reference) == [
        ".: kept [14], uninterrupted [7, 14]"
    ]
