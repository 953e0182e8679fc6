"""Cohorts from the command line: several methods and seeds trained by one program against
one teacher (`training.trainer.train_cohort`).

A cohort config (e.g. `configs/cohort_cifar.py`) holds `members`, one complete run config
per member, and `data_mode` (shared: every member sees the batches of the first member's
seed; per_seed: each member its own seed's, exactly as its single run). The job trains the
teacher once into WORKDIR/teacher when the members name none, then every member in
WORKDIR/<member>/, a complete run directory (its config.json is the member's config with
that teacher), and keeps WORKDIR/cohort.md and cohort.png up to date after every
evaluation: per method, the mean and standard deviation over seeds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax import data, methods
from ltkd_jax.config import checks
from ltkd_jax.deploy import report
from ltkd_jax.errors import UserError
from ltkd_jax.runs import rundir, summary
from ltkd_jax.runs import teachers as teacher_stage
from ltkd_jax.training import checkpointing, sharding, trainer
from ltkd_jax.training.writers import read_metrics

COHORT_FILE = "cohort.json"
TABLE_COLUMNS = (
    ("top1", "top-1"),
    ("mean_class_acc", "mean-class"),
    ("many", "many"),
    ("medium", "medium"),
    ("few", "few"),
)


def is_cohort(config: ml_collections.ConfigDict) -> bool:
    return "members" in config


def _trains_teacher(member: ml_collections.ConfigDict) -> bool:
    return methods.num_teachers(member) > 0 and not member.teacher.workdir


def members_of(config: ml_collections.ConfigDict, workdir: str) -> list[trainer.Member]:
    """The members, each in WORKDIR/<name>, with the cohort's teacher (trained into
    WORKDIR/teacher) written into the config of every member that distils from it."""
    out = []
    for name, member in config.members.items():
        member = ml_collections.ConfigDict(member.to_dict())
        if _trains_teacher(member):
            dirs = teacher_stage.teacher_workdirs(member, workdir)
            member.teacher.workdir = ",".join(os.path.abspath(d) for d in dirs)
        out.append(trainer.Member(member, os.path.join(workdir, name), name))
    return out


def _first_distiller(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    return next((m for m in config.members.values() if methods.num_teachers(m) > 0), None)


def _saved_cohort(workdir: str) -> dict | None:
    path = os.path.join(workdir, COHORT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Everything checkable before any data is read: every member's config, that the members
    share the recipe, and a resumed cohort's membership."""
    if config.data_mode not in trainer.DATA_MODES:
        raise UserError(
            f"config.data_mode={config.data_mode!r} is not known; choose one of "
            f"{list(trainer.DATA_MODES)}"
        )
    for member in config.members.values():
        checks.validate_config(member)
        checks.check_run_paths(member)
    members = members_of(config, workdir)
    try:
        trainer.check_cohort([m.config for m in members])
    except ValueError as e:
        raise UserError(str(e)) from None
    saved = _saved_cohort(workdir)
    names = [m.name for m in members]
    new = [n for n in names if saved and n not in saved["members"]]
    if saved and (new or saved["data_mode"] != config.data_mode):
        raise rundir.WorkdirError(
            f"{workdir} holds a cohort of {saved['members']} ({saved['data_mode']} data); this "
            f"one is {names} ({config.data_mode}). A new member would start the others over: "
            "run it in a new --workdir (members may be left out)."
        )


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Every resumed member's (and the cohort teacher's) config and data still mean its
    checkpoints; returns the changes config.resume_overrides let through."""
    members = members_of(config, workdir)
    fingerprint = data.source_fingerprint(members[0].config.data)
    overridden = {}
    for member in members:
        overridden.update(rundir.check_resume_config(member.workdir, member.config))
        checkpointing.check_resume_data(member.workdir, fingerprint)
    distiller = _first_distiller(config)
    if distiller is not None and _trains_teacher(distiller):
        for k, teacher_dir in enumerate(teacher_stage.teacher_workdirs(distiller, workdir)):
            teacher = teacher_stage.teacher_config(distiller, k)
            overridden.update(rundir.check_resume_config(teacher_dir, teacher))
            checkpointing.check_resume_data(teacher_dir, fingerprint)
    return overridden


def _finals(member: trainer.Member) -> dict | None:
    """The member's last test record, or None before its first evaluation."""
    path = os.path.join(member.workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    tests = [r for r in read_metrics(path) if r["split"] == "test"]
    return tests[-1] if tests else None


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = 100 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * float(np.std(values, ddof=1)):.2f}"


def table_rows(members: list[trainer.Member]) -> list[dict]:
    """Per method (in member order): the final test records of its seeds, and who stopped."""
    rows: dict[str, dict] = {}
    for member in members:
        row = rows.setdefault(member.config.method, {"records": [], "seeds": [], "stopped": []})
        record = _finals(member)
        row["seeds"].append(member.config.seed)
        if record is not None:
            row["records"].append(record)
        stopped = os.path.join(member.workdir, trainer.STOPPED_FILE)
        if os.path.exists(stopped):
            with open(stopped) as f:
                row["stopped"].append(f"{member.name} at step {json.load(f)['step']}")
    return [{"method": method, **row} for method, row in rows.items()]


def markdown_table(rows: list[dict], title: str) -> str:
    header = "| method | seeds | epoch | " + " | ".join(c for _, c in TABLE_COLUMNS) + " |"
    lines = [f"# {title}", "", "Final epoch, mean ± sample std over seeds (%).", "", header]
    lines.append("|" + "---|" * (len(TABLE_COLUMNS) + 3))
    notes = []
    for row in rows:
        records = row["records"]
        epochs = sorted({r["epoch"] for r in records})
        cells = [_mean_std([r.get(key) for r in records]) for key, _ in TABLE_COLUMNS]
        seeds = f"{len(records)}/{len(row['seeds'])}"
        epoch = ",".join(map(str, epochs)) or "-"
        lines.append(f"| {row['method']} | {seeds} | {epoch} | " + " | ".join(cells) + " |")
        notes += [f"- {row['method']}: {s} stopped on a non-finite loss" for s in row["stopped"]]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def plot_table(rows: list[dict], path: str, title: str) -> None:
    """Bars of top-1 and the shot groups per method, with the std over seeds."""
    import matplotlib  # noqa: PLC0415 (heavy; only the table needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    keys = [(k, c) for k, c in TABLE_COLUMNS if k != "mean_class_acc"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.2))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        values = [[r[key] for r in row["records"] if r.get(key) is not None] for row in rows]
        means = [100 * np.mean(v) if v else math.nan for v in values]
        stds = [100 * np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
        xs = np.arange(len(rows)) + (i - (len(keys) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=label)
    ax.set_xticks(np.arange(len(rows)), [row["method"] for row in rows])
    ax.set_ylabel("test accuracy (%), final epoch")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=len(keys))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_table(workdir: str, members: list[trainer.Member]) -> str:
    """WORKDIR/cohort.md and cohort.png from the members' records as they stand."""
    if jax.process_index() != 0:
        return ""
    rows = table_rows(members)
    config = members[0].config
    title = f"cohort of {len(members)} on {config.data.name} (IF {config.data.imbalance_factor:g})"
    path = os.path.join(workdir, "cohort.md")
    with open(path + ".tmp", "w") as f:
        f.write(markdown_table(rows, title))
    os.replace(path + ".tmp", path)
    if any(row["records"] for row in rows):
        plot_table(rows, os.path.join(workdir, "cohort.png"), title)
    return path


def train_members(
    members: list[trainer.Member],
    workdir: str,
    *,
    teachers: tuple,
    task: data.TaskSplits,
    data_mode: str = "shared",
    trained: dict | None = None,
) -> list[dict]:
    """Trains the members (each in its own workdir, locked) in one program, then writes their
    summaries and reports (and those of the `trained` teachers: {workdir: counts}) and the
    cohort table in `workdir`. Returns the members' summaries."""
    with contextlib.ExitStack() as stack:
        for member in members:
            stack.enter_context(rundir.hold(member.workdir, locking=jax.process_index() == 0))
            if jax.process_index() == 0:
                rundir.record_invocation(member.workdir)
        results = trainer.train_cohort(
            members,
            teachers=teachers,
            task=task,
            data_mode=data_mode,
            on_evaluated=lambda step: write_table(workdir, members),
        )
    summaries = []
    for member in members:
        member_summary = summary.summarize_run(member.workdir)
        summary.write_summary(member.workdir, member_summary)
        summaries.append(member_summary)
    counts = {m.workdir: r.test_counts for m, r in zip(members, results, strict=True)}
    report.write_training_reports({**(trained or {}), **counts}, task)
    table = write_table(workdir, members)
    if jax.process_index() == 0:
        lines = [summary.format_summary(m.name, s) for m, s in zip(members, summaries, strict=True)]
        print("\n".join(lines) + f"\ntable: {table}", flush=True)
    logging.info("cohort of %d members in %s done", len(members), workdir)
    return summaries


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """The cohort job, after `check`: the teacher (trained once when needed), then every
    member in one program (`train_members`)."""
    first = next(iter(config.members.values()))
    task = data.load_task(first.data)  # once, for every stage
    mesh = sharding.make_mesh(first.num_devices)
    distiller = _first_distiller(config)
    teachers, trained = (), {}
    if distiller is not None:
        teachers, trained = teacher_stage.prepare_teachers(distiller, workdir, task, mesh)
    members = members_of(config, workdir)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        saved = (_saved_cohort(workdir) or {}).get("members", [])
        names = saved + [m.name for m in members if m.name not in saved]  # left-out ones too
        with open(os.path.join(workdir, COHORT_FILE), "w") as f:
            json.dump({"members": names, "data_mode": config.data_mode}, f, indent=2)
    return train_members(
        members, workdir, teachers=teachers, task=task, data_mode=config.data_mode, trained=trained
    )
