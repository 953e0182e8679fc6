"""Reproduce a CIFAR-LT results table: one command per table, resumable across sessions.

    python scripts/reproduce.py --table=cifar100_lt_if100_r32 --seeds=0,1,2 --dry_run
    python scripts/reproduce.py --table=cifar100_lt_if100_r32 --seeds=0,1,2
    python scripts/reproduce.py --table=cifar100_lt_if100_r32 --short   # CPU smoke schedule

Tables and rows: `scripts/reproduce_tables.py` and docs/reproduce.md. Every run is a
`python -m ltkd_jax.main` command (recorded with the results) executed in this process, in
`ROOT/TABLE/seed<S>/<row>`: one CE teacher per seed first, then the other rows. A finished
run is skipped, a cut one resumes from its last checkpoint, so rerunning the same command
fills a table over several short device windows. Writes `OUT/TABLE.md`, `OUT/TABLE.json`
and `OUT/TABLE.png` from whatever runs are finished (`--short`: `TABLE_short.*` in ROOT,
and run folders of their own).
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):  # `python scripts/reproduce.py` from a checkout; tests
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import reproduce_tables as tables  # noqa: E402

from ltkd_jax import cli, methods  # noqa: E402
from ltkd_jax.config import defaults  # noqa: E402
from ltkd_jax.data import cifar  # noqa: E402
from ltkd_jax.errors import UserError  # noqa: E402

ARCHIVES = {
    "cifar100": "../shared/data/cifar100-png.zip",
    "cifar10": "../shared/data/cifar10-jpeg.zip",
}
RECORD = "reproduce.json"  # the finished run's provenance, in its workdir
ATTEMPTS = "reproduce_attempts.jsonl"  # one line per start and per end of a training call
GROUPS = ("top1", "many", "medium", "few", "tail")
# Every group at the final epoch (GROUPS) and at the best one (best_<group>): both reported.
STATS = (*GROUPS, *(f"best_{g}" for g in GROUPS))


def define_flags() -> None:
    """The command line; defined on demand so tests can import this module's functions."""
    flags.DEFINE_enum("table", None, list(tables.TABLES), "The table to reproduce.")
    flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed); one teacher per seed.")
    flags.DEFINE_string("root", "runs/reproduce", "Where the run folders live.")
    flags.DEFINE_string(
        "archive",
        "",
        "Dataset zip or official pickle tarball (cifar-10-python.tar.gz: the original pixels); "
        "empty = ../shared/data/cifar100-png.zip or cifar10-jpeg.zip (lossy JPEG).",
    )
    flags.DEFINE_string(
        "out",
        "",
        "Folder for TABLE.md, TABLE.json, TABLE.png; empty = results/ (--short: ROOT, so a "
        "smoke check leaves nothing in the checkout's results/).",
    )
    flags.DEFINE_bool("short", False, "The CPU smoke schedule: few epochs, capped steps.")
    flags.DEFINE_integer("short_epochs", 3, "Epochs of every --short run.")
    flags.DEFINE_integer("short_steps", 20, "Steps per epoch of --short runs.")
    flags.DEFINE_list("only", [], "Train only these rows (plus their teacher); all = empty.")
    flags.DEFINE_multi_string("set", [], "field=value override for every run's config.")
    flags.DEFINE_bool("dry_run", False, "Print the plan and its device time; run nothing.")
    flags.DEFINE_bool(
        "cohorts",
        True,
        "Train a seed's rows that share the recipe and the teacher as one cohort: one "
        "program, the teacher applied once per batch (ltkd_jax/runs/cohort.py).",
    )
    flags.DEFINE_bool("collect_only", False, "Train nothing; write the tables.")
    flags.DEFINE_list(
        "priority", [], "Rows trained first after each seed's teacher, in this order."
    )
    flags.DEFINE_float(
        "deadline_s",
        0.0,
        "> 0: start no run predicted to end more than this many seconds after the start "
        "(a device window finishes whole runs); the first run to train always starts.",
    )
    flags.DEFINE_string(
        "cost_device", "", "tables.COSTS entry that --deadline_s predicts with; empty = by backend."
    )


@dataclasses.dataclass
class Run:
    row: tables.Row
    seed: int
    workdir: str
    argv: list[str]  # the arguments after `python -m ltkd_jax.main`
    config: object  # the parsed ml_collections config

    @property
    def command(self) -> str:
        return "python -m ltkd_jax.main " + " ".join(shlex.quote(a) for a in self.argv)

    @property
    def posthoc(self) -> bool:
        """A correction of a finished run: evaluated over a tau grid, nothing trained."""
        return methods.get(self.config.method).kind == methods.CORRECTION


# ---------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------


def parse_command(argv: list[str]) -> tuple[object, str]:
    """(config, workdir) exactly as `python -m ltkd_jax.main ARGV` builds them."""
    from ml_collections import config_flags

    # Config paths are relative to the repository, whatever the working directory.
    argv = [
        f"--config={REPO / a.split('=', 1)[1]}" if a.startswith("--config=") else a for a in argv
    ]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=["main", *argv]
    )
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(["main", *argv])
    return values["config"].value, values["workdir"].value


def cli_value(value) -> str:
    if isinstance(value, tuple | list):
        return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def short_schedule(config, epochs: int, steps: int) -> list[str]:
    """Overrides that compress a run's schedule to `epochs` epochs of at most `steps` steps.

    The epoch-valued fields (LR warm-up and decay, and the loss fields the method declares:
    DRW switch, DKD warm-up) shrink in the same proportion, so the recipe's phases keep their
    place; evaluation only at the end.
    """
    scale = epochs / config.num_epochs
    decay = tuple(round(d * scale) for d in config.optim.decay_epochs)
    overrides = [
        f"num_epochs={epochs}",
        f"max_steps_per_epoch={steps}",
        f"eval_every_epochs={epochs}",
        f"optim.warmup_epochs={round(config.optim.warmup_epochs * scale)}",
        f"optim.decay_epochs={cli_value(decay)}",
    ]
    scaled = methods.scaled_epoch_fields(config, scale)
    return overrides + [f"loss.{name}={epochs}" for name, epochs in scaled.items()]


def plan_table(
    table: tables.Table,
    seeds: list[int],
    root: str,
    archive: str,
    *,
    short: tuple[int, int] | None = None,
    extra: tuple[str, ...] = (),
) -> list[Run]:
    """Every run of the table, teacher first per seed, with its exact command."""
    if archive == "" and table.dataset in ARCHIVES:
        archive = ARCHIVES[table.dataset]
    runs = []
    for seed in seeds:
        seed_dir = os.path.join(root, output_name(table, short), f"seed{seed}")
        teacher_dir = os.path.join(seed_dir, table.teacher.key)
        for row in table.all_rows:
            workdir = os.path.join(seed_dir, row.key)
            arg = table.config_arg if row.arg is None else row.arg
            config = f"configs/{row.config}.py" + (f":{arg}" if arg else "")
            # The shared teacher gets the seed stage 1 of the students' own config would.
            run_seed = defaults.teacher_seed(seed, 0) if row is table.teacher else seed
            fields = [f"seed={run_seed}", *table.common]
            if archive:
                fields.append(f"data.archive={archive}")
            if row.link == "teacher":
                fields.append(f"teacher.workdir={teacher_dir}")
            elif row.link == "init":
                fields.append(f"init.workdir={teacher_dir}")
            fields += row.overrides
            argv = [f"--config={config}", f"--workdir={workdir}"]
            argv += [f"--config.{f}" for f in fields]
            parsed, _ = parse_command(argv)
            late = list(extra)
            if short and methods.get(parsed.method).kind == methods.TRAINING:
                late = short_schedule(parsed, *short) + late
            if late:
                argv += [f"--config.{f}" for f in late]
                parsed, _ = parse_command(argv)
            runs.append(Run(row, seed, workdir, argv, parsed))
    return runs


def output_name(table: tables.Table, short) -> str:
    """TABLE, or TABLE_short: smoke runs never share folders or outputs with full ones."""
    return table.name + ("_short" if short else "")


def select(runs: list[Run], only: list[str], table: tables.Table) -> list[Run]:
    """The runs of the `only` rows, plus their seed's teacher."""
    if not only:
        return runs
    unknown = sorted(set(only) - {r.key for r in table.all_rows})
    if unknown:
        raise UserError(
            f"--only names rows {unknown} that {table.name} does not have; choose from "
            f"{[r.key for r in table.all_rows]}"
        )
    keep = set(only) | {table.teacher.key}
    return [r for r in runs if r.row.key in keep]


def prioritise(runs: list[Run], priority: list[str], table: tables.Table) -> list[Run]:
    """Per seed: the teacher, then the `priority` rows in that order, then the rest."""
    unknown = sorted(set(priority) - {r.key for r in table.all_rows})
    if unknown:
        raise ValueError(f"--priority names rows {unknown} that {table.name} does not have")
    rank = {key: i for i, key in enumerate([table.teacher.key, *priority])}
    seeds = list(dict.fromkeys(r.seed for r in runs))
    return sorted(
        runs, key=lambda r: (seeds.index(r.seed), rank.get(r.row.key, len(rank)))
    )  # sorted() is stable: the table's order among the rest


class Deadline:
    """Which runs a window of `seconds` still has time for, finishing whole runs.

    A run is predicted to take its cost-model estimate times the ratio of measured to
    estimated seconds of the runs trained so far in this process (1 before any). The first
    run to train always starts (nothing to calibrate on yet; the window's `timeout` is the
    hard stop); a seed whose teacher is deferred defers all its runs.
    """

    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, clock()
        self.estimated = self.measured = 0.0
        self.trained = 0
        self.deferred: list[str] = []

    @property
    def scale(self) -> float:
        return self.measured / self.estimated if self.estimated > 0 else 1.0

    def allows(self, estimate_s: float) -> tuple[bool, float, float]:
        """(start it?, predicted seconds, seconds left)."""
        left = self.seconds - (self.clock() - self.start)
        predicted = estimate_s * self.scale
        if self.seconds <= 0 or self.trained == 0:
            return True, predicted, left
        return predicted == predicted and predicted <= left, predicted, left

    def record(self, estimate_s: float, wall_s: float) -> None:
        self.trained += 1
        if estimate_s == estimate_s and estimate_s > 0:  # a NaN estimate calibrates nothing
            self.estimated += estimate_s
            self.measured += wall_s


# ---------------------------------------------------------------------------------------
# Status of a run folder
# ---------------------------------------------------------------------------------------


def read_metrics(workdir: str) -> list[dict]:
    """The run's metrics records; a run imported from a device window keeps them as
    `metrics.jsonl.gz` (scripts/gpu_tables.py)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    if os.path.exists(path + ".gz"):
        with gzip.open(path + ".gz", "rt") as f:
            return [json.loads(line) for line in f if line.strip()]
    return []


def epochs_done(run: Run) -> int:
    """Epochs the run has finished (post-hoc runs: the full grid or nothing)."""
    records = read_metrics(run.workdir)
    tests = [r for r in records if r.get("split") == "test"]
    if run.posthoc:
        return 1 if len([r for r in tests if "tau" in r]) >= tables.TAU_GRID_SIZE else 0
    if any(r.get("epoch") == run.config.num_epochs for r in tests):
        return run.config.num_epochs
    return max([r.get("epoch", 0) - 1 for r in records if "epoch" in r] + [0])


def check_same_config(run: Run) -> None:
    """Refuses to resume or reuse a folder that holds a run of another config.

    Fields only one side has are left out: a field added to the library later (with a
    default that keeps the old behaviour) must not block resuming an older run.
    """
    path = os.path.join(run.workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = defaults.flatten(defaults.upgrade_saved_config(json.load(f)))
    wanted = defaults.flatten(json.loads(json.dumps(run.config.to_dict())))
    differ = sorted(k for k in stored.keys() & wanted.keys() if stored[k] != wanted[k])
    if differ:
        shown = ", ".join(
            f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:4]
        )
        raise UserError(
            f"{run.workdir} holds a run of another config ({shown}); pass another --root "
            "(or delete that folder) instead of mixing two schedules in one run"
        )


def is_done(run: Run) -> bool:
    return epochs_done(run) >= (1 if run.posthoc else run.config.num_epochs)


def _estimate_kwargs(run: Run) -> dict:
    """`tables.estimate_seconds` keywords for what the run still has to do."""
    c = run.config
    if run.posthoc:
        epochs, evaluations, teacher = 0, tables.TAU_GRID_SIZE, None
    else:
        epochs = c.num_epochs - epochs_done(run)
        evaluations = max(1, epochs // c.eval_every_epochs)
        teacher = c.teacher.model if run.row.link == "teacher" else None
    return dict(
        dataset=c.data.name,
        imbalance_factor=c.data.imbalance_factor,
        model=c.model.name,
        teacher_model=teacher,
        batch_size=c.batch_size,
        epochs=epochs,
        max_steps_per_epoch=c.max_steps_per_epoch,
        evaluations=evaluations,
    )


def estimate(run: Run, device: str) -> float:
    """Device seconds still needed by the run (0 when finished); NaN where unknown."""
    if is_done(run):
        return 0.0
    seconds = tables.estimate_seconds(device, **_estimate_kwargs(run))
    return float("nan") if seconds is None else seconds


def estimate_batch(batch: list[Run], device: str) -> float:
    """Device seconds of a batch of `schedule`: one run, or one cohort."""
    if len(batch) == 1:
        return estimate(batch[0], device)
    kwargs = [_estimate_kwargs(r) for r in batch]
    if tables.train_images(kwargs[0]["dataset"], kwargs[0]["imbalance_factor"]) is None:
        return float("nan")
    teacher = next((k for k in kwargs if k["teacher_model"]), None)
    students = [{**k, "teacher_model": None} for k in kwargs]
    return tables.estimate_cohort_seconds(device, students=students, teacher=teacher)


# ---------------------------------------------------------------------------------------
# Cohorts
# ---------------------------------------------------------------------------------------


def latest_step(workdir: str) -> int:
    """The newest checkpoint step of a run folder (0 without one)."""
    ckpt = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt):
        return 0
    return max([int(n) for n in os.listdir(ckpt) if n.isdigit()] + [0])


def joins_cohort(run: Run, table: tables.Table) -> bool:
    """Rows that train from scratch with the seed's teacher or none: not the teacher itself,
    not a run that starts from a finished one (cRT) or corrects it (tau-norm)."""
    return not run.posthoc and run.row is not table.teacher and run.row.link != "init"


def schedule(runs: list[Run], table: tables.Table, cohorts: bool) -> list[list[Run]]:
    """The order of execution, in batches: per seed, the teacher, then the rows that share
    the recipe (and their checkpoint step, so no member starts the others over) as one
    cohort each, then the rest one by one."""
    from ltkd_jax.training import trainer  # noqa: PLC0415 - JAX is slow to import

    batches = []
    for seed in dict.fromkeys(r.seed for r in runs):
        seed_runs = [r for r in runs if r.seed == seed and not is_done(r)]
        pending = [r for r in seed_runs if cohorts and joins_cohort(r, table)]
        batches += [[r] for r in seed_runs if r.row is table.teacher]
        while pending:
            group = [pending.pop(0)]
            for run in list(pending):
                try:
                    trainer.check_cohort([r.config for r in (*group, run)])
                except ValueError:
                    continue
                if latest_step(run.workdir) == latest_step(group[0].workdir):
                    group.append(run)
                    pending.remove(run)
            batches.append(group)
        batches += [
            [r] for r in seed_runs if r.row is not table.teacher and r not in sum(batches, [])
        ]
    return batches


def execute_cohort(batch: list[Run], env: dict) -> None:
    """Trains (or resumes) the runs of a batch as one cohort, each in its own folder, with
    the seed's teacher; logs the attempt (the cohort's wall time) in every folder."""
    from ltkd_jax import data  # noqa: PLC0415
    from ltkd_jax.runs import cohort, job  # noqa: PLC0415
    from ltkd_jax.runs import teachers as teacher_stage  # noqa: PLC0415
    from ltkd_jax.training import sharding, trainer  # noqa: PLC0415

    for run in batch:
        job.check(run.config, run.workdir)
        job.check_resume(run.config, run.workdir)
    first = batch[0].config
    task = data.load_task(first.data)
    mesh = sharding.make_mesh(first.num_devices)
    seed_dir = os.path.dirname(batch[0].workdir)
    distiller = next((r.config for r in batch if methods.num_teachers(r.config)), None)
    teachers = ()
    if distiller is not None:
        teachers, _ = teacher_stage.prepare_teachers(distiller, seed_dir, task, mesh)
    members = [trainer.Member(r.config, r.workdir, r.row.key) for r in batch]
    start = time.time()
    for run in batch:
        append_jsonl(os.path.join(run.workdir, ATTEMPTS), {"event": "start", "time": start, **env})
    cohort.train_members(members, os.path.join(seed_dir, "cohort"), teachers=teachers, task=task)
    for run in batch:
        end = {"event": "end", "time": time.time(), "wall_s": time.time() - start}
        append_jsonl(os.path.join(run.workdir, ATTEMPTS), {**end, "cohort": len(batch)})


def print_plan(table: tables.Table, runs: list[Run], batches: list[list[Run]] | None = None) -> str:
    lines = [f"plan for {table.name}: {len(runs)} runs", ""]
    header = f"{'run':<28} {'status':<12} " + " ".join(f"{d + ' s':>9}" for d in tables.COSTS)
    lines.append(header)
    totals = dict.fromkeys(tables.COSTS, 0.0)
    for run in runs:
        done = epochs_done(run)
        total = 1 if run.posthoc else run.config.num_epochs
        status = "done" if done >= total else f"{done}/{total} ep"
        costs = {d: estimate(run, d) for d in tables.COSTS}
        for d, s in costs.items():
            totals[d] += s
        cells = " ".join(f"{s:9.0f}" if s == s else f"{'n/a':>9}" for s in costs.values())
        lines.append(f"{f'seed{run.seed}/{run.row.key}':<28} {status:<12} {cells}")
        lines.append(f"    {run.command}")
    lines.append("")
    cohort_totals = {d: sum(estimate_batch(b, d) for b in batches or []) for d in tables.COSTS}
    for batch in [b for b in batches or [] if len(b) > 1]:
        names = ", ".join(f"seed{r.seed}/{r.row.key}" for r in batch)
        lines.append(f"cohort of {len(batch)}: {names}")
    for device, seconds in totals.items():
        if batches and any(len(b) > 1 for b in batches):
            left = cohort_totals[device]
            lines.append(
                f"estimated {device} device time left with cohorts: {left / 60:.1f} min "
                f"(members cost {tables.cohort_member_factor(device, 8):.3f} of a run's step "
                "at 8, the teacher once; see scripts/reproduce_tables.py: unmeasured on a GPU)"
            )
        cost = tables.COSTS[device]
        left = (
            "unknown (no size for this dataset)"
            if seconds != seconds
            else f"{seconds / 60:.1f} min"
        )
        lines.append(
            f"estimated {device} device time left: {left} "
            f"(basis: {cost.basis}; other models scaled by FLOPs, unmeasured; "
            f"{tables.RUN_OVERHEAD_S:.0f} s per run for loading and compiling)"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def git_commit() -> str:
    """HEAD (+dirty); where there is no git (a device window's copy), $LTKD_JAX_COMMIT."""

    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return os.environ.get("LTKD_JAX_COMMIT", "unknown")
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def environment() -> dict:
    import jax

    return {
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "commit": git_commit(),
    }


def append_jsonl(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def execute(run: Run, env: dict) -> None:
    """Trains (or resumes) the run in this process, logging the attempt's wall time."""
    from ltkd_jax.runs import job

    attempts = os.path.join(run.workdir, ATTEMPTS)
    start = time.time()
    job.check(run.config, run.workdir)
    job.check_resume(run.config, run.workdir)
    append_jsonl(attempts, {"event": "start", "time": start, **env})
    job.run(run.config, run.workdir)
    append_jsonl(attempts, {"event": "end", "time": time.time(), "wall_s": time.time() - start})


def wall_time(workdir: str) -> tuple[float | None, list[str]]:
    """Seconds spent over every attempt, and the device kinds they ran on.

    An attempt cut off before its end line counts until the metrics file's last write.
    """
    path = os.path.join(workdir, ATTEMPTS)
    if not os.path.exists(path):
        return None, []
    with open(path) as f:
        events = [json.loads(line) for line in f if line.strip()]
    metrics = [os.path.join(workdir, n) for n in ("metrics.jsonl", "metrics.jsonl.gz")]
    last_write = max([os.path.getmtime(m) for m in metrics if os.path.exists(m)] + [0.0])
    total, devices, start = 0.0, [], None
    for event in events:
        if event["event"] == "start":
            if start is not None:  # the previous attempt was cut off
                total += max(0.0, min(last_write, event["time"]) - start)
            start = event["time"]
            devices.append(event["device_kind"])
        else:
            total += event["wall_s"]
            start = None
    if start is not None:
        total += max(0.0, last_write - start)
    return total, sorted(set(devices))


def write_record(run: Run, teacher_dir: str) -> dict:
    """The finished run's provenance, from its attempts log and its task.json."""
    wall, devices = wall_time(run.workdir)
    attempts = os.path.join(run.workdir, ATTEMPTS)
    first = {}
    if os.path.exists(attempts):
        with open(attempts) as f:
            first = json.loads(f.readline())
    record = {
        "row": run.row.key,
        "seed": run.seed,
        "workdir": run.workdir,
        "command": run.command,
        "config_file": run.argv[0].split("=", 1)[1],
        "overrides": [a[len("--config.") :] for a in run.argv if a.startswith("--config.")],
        "config": run.config.to_dict(),
        "commit": first.get("commit", "unknown (trained outside reproduce.py)"),
        "device_kind": " + ".join(devices) or "unknown",
        "jax_version": first.get("jax_version", "unknown"),
        "wall_s": wall,
        "data_source": data_source(run, teacher_dir),
    }
    with open(os.path.join(run.workdir, RECORD), "w") as f:
        json.dump(record, f, indent=2, default=str)
    return record


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


def task_record(run: Run, teacher_dir: str) -> dict:
    """The run's task.json (post-hoc runs: the teacher's): class counts, shot thresholds."""
    for workdir in (run.workdir, teacher_dir):
        path = os.path.join(workdir, "task.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    raise FileNotFoundError(f"no task.json in {run.workdir} or {teacher_dir}")


def class_counts(run: Run, teacher_dir: str) -> np.ndarray:
    """Training images per class."""
    return np.asarray(task_record(run, teacher_dir)["class_counts"])


def data_source(run: Run, teacher_dir: str) -> dict:
    """Where the run's images came from, and whether they are the original pixels
    (`task.json`'s data_source; empty for runs recorded before it was)."""
    return task_record(run, teacher_dir).get("data_source", {})


def _groups(record: dict, table: tables.Table, counts: np.ndarray) -> dict:
    """Top-1, many / medium / few and, where the table has one, the tail of a test record."""
    out = {k: record.get(k) for k in ("top1", "many", "medium", "few")}
    if table.tail_fraction:
        out["tail"] = tables.group_accuracy(
            record["per_class_acc"], tables.tail_classes(counts, table.tail_fraction)
        )
    return out


def groups_text(thresholds: dict | None) -> str:
    """The shot groups in words, from task.json's `shot_thresholds` (None: not recorded)."""
    if not thresholds:
        return "many / medium / few: by training images (thresholds not recorded)."
    many, few = thresholds["many"], thresholds["few"]
    return f"many / medium / few: > {many}, {few}-{many}, < {few} training images."


def run_result(run: Run, table: tables.Table, counts: np.ndarray) -> dict:
    """Accuracies of a finished run at its final epoch and at its best one (the highest
    test top-1: CIFAR-LT has no validation split); post-hoc runs: the best tau for both."""
    tests = [r for r in read_metrics(run.workdir) if r.get("split") == "test"]
    if run.posthoc:
        tests = tests[-tables.TAU_GRID_SIZE :]
        final = best = max(tests, key=lambda r: r["top1"])
    else:
        final, best = tests[-1], max(tests, key=lambda r: r["top1"])
    out = _groups(final, table, counts)
    out.update({f"best_{k}": v for k, v in _groups(best, table, counts).items()})
    out.update(
        epoch=final.get("epoch"),
        best_epoch=best.get("epoch"),
        per_class_acc=list(final["per_class_acc"]),
    )
    if run.posthoc:
        out["tau"] = final["tau"]
    return out


def pct(x, digits: int = 2) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.{digits}f}"


def mean_pm(values) -> tuple[str, float, float | None]:
    mean, std = tables.mean_std(values)
    text = pct(mean) + ("" if std is None else f" ± {100 * std:.2f}")
    return text, mean, std


def collect(table: tables.Table, runs: list[Run]) -> dict:
    """Per-row mean ± std over finished seeds and per-run provenance (the JSON output)."""
    teacher_dirs = {r.seed: r.workdir for r in runs if r.row is table.teacher}
    rows = []
    counts = thresholds = None
    for row in table.all_rows:
        finished = [r for r in runs if r.row.key == row.key and is_done(r)]
        per_run = []
        for run in finished:
            task = task_record(run, teacher_dirs[run.seed])
            counts, thresholds = np.asarray(task["class_counts"]), task.get("shot_thresholds")
            path = os.path.join(run.workdir, RECORD)
            if os.path.exists(path):
                with open(path) as f:
                    record = json.load(f)
                record.setdefault("data_source", data_source(run, teacher_dirs[run.seed]))
            else:
                record = write_record(run, teacher_dirs[run.seed])
            per_run.append({**record, "result": run_result(run, table, counts)})
        stats = {}
        for group in STATS:
            mean, std = tables.mean_std([p["result"].get(group) for p in per_run])
            stats[group] = {"mean": mean, "std": std}
        rows.append(
            {
                "key": row.key,
                "label": row.label,
                "note": row.note,
                "n": len(per_run),
                "stats": stats,
                "runs": per_run,
            }
        )
    return {
        "rows": rows,
        "class_counts": None if counts is None else counts.tolist(),
        "shot_thresholds": thresholds,
    }


def schedule_text(short: tuple[int, int] | None, extra: tuple[str, ...]) -> str:
    if short:
        text = (
            f"**CPU smoke schedule (`--short`): {short[0]} epochs of at most {short[1]} steps, "
            "the recipe's epoch milestones scaled down, evaluation at the end. This checks the "
            "pipeline; it is NOT a reproduction and its accuracies are not comparable with the "
            "references below.**"
        )
    else:
        text = "Full schedule: each config's own recipe."
    if extra:
        text += " Extra overrides for every run: " + ", ".join(f"`{e}`" for e in extra) + "."
    return text


def reference_lines(table: tables.Table, by_key: dict, short: bool) -> list[str]:
    if not table.references:
        return []
    lines = [
        "## Against the references",
        "",
        tables.REFERENCE_EPOCH_WHY,
        "",
        "| row | ours, best epoch | ours, final epoch | reference | source | gap (points) "
        "| verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for ref in table.references:
        row = by_key[ref.key]
        items = [("top-1", "top1", ref.top1, ref.target)]
        if ref.tail is not None:
            items.append(("tail", "tail", ref.tail, None))
        for what, group, theirs, target in items:
            ours, final = row["stats"][f"best_{group}"]["mean"], row["stats"][group]["mean"]
            if row["n"] == 0:
                gap, verdict = "n/a", "not run yet"
            else:
                diff = 100 * ours - theirs
                gap = f"{diff:+.2f}"
                if short:
                    verdict = "smoke schedule: not comparable"
                elif target is None:
                    verdict = f"{abs(diff):.2f} points {'above' if diff > 0 else 'below'}"
                elif abs(diff) <= target:
                    verdict = f"within the {target:g}-point target"
                else:
                    verdict = (
                        f"misses the {target:g}-point target: {abs(diff):.2f} points "
                        f"{'above' if diff > 0 else 'below'} the reference"
                    )
            lines.append(
                f"| {row['label']} {what} | {pct(ours) if row['n'] else 'n/a'} "
                f"| {pct(final) if row['n'] else 'n/a'} | {theirs:.2f} "
                f"| {ref.source} | {gap} | {verdict} |"
            )
    return [*lines, ""]


def against_kd_lines(table: tables.Table, by_key: dict, few: str) -> list[str]:
    kd = by_key.get("kd")
    keys = [k for k in tables.DISTILLERS if k != "kd" and k in by_key]
    if kd is None or not keys:
        return []
    lines = [
        "## Against KD on the same teacher",
        "",
        "BKD's, DU-KD's and KRDistill's own published numbers are not known, so they are "
        f"read here against KD distilled from the same teacher: the target is to beat KD "
        f"overall and on the {few} group.",
        "",
    ]
    for key in keys:
        row = by_key[key]
        if row["n"] == 0 or kd["n"] == 0:
            lines.append(f"- {row['label']}: not run yet (or KD not run yet).")
            continue
        d_top = 100 * (row["stats"]["top1"]["mean"] - kd["stats"]["top1"]["mean"])
        d_few = 100 * (row["stats"][few]["mean"] - kd["stats"][few]["mean"])
        both = d_top > 0 and d_few > 0
        lines.append(
            f"- {row['label']}: {d_top:+.2f} points top-1, {d_few:+.2f} points {few} vs KD; "
            + ("beats KD on both." if both else "does NOT beat KD on both.")
        )
    return [*lines, ""]


def table_command(table: tables.Table, seeds, short, extra) -> str:
    """The reproduce.py command line that fills this table (run folders aside)."""
    parts = ["python scripts/reproduce.py", f"--table={table.name}"]
    parts.append("--seeds=" + ",".join(map(str, seeds)))
    if short:
        parts += ["--short", f"--short_epochs={short[0]}", f"--short_steps={short[1]}"]
    parts += [f"--set={shlex.quote(e)}" for e in extra]
    return " ".join(parts)


def data_lines(results: dict) -> list[str]:
    """Which data every run read, and a caveat where it was not the original pixels."""
    sources = {}
    for row in results["rows"]:
        for p in row["runs"]:
            source = p.get("data_source") or {}
            text = source.get("source", "not recorded (a run from before data_source)")
            if source.get("encoding"):
                text += f", stored as {source['encoding'].upper()}"
            if source.get("lossless") is not None:
                text += " (lossless)" if source["lossless"] else " (LOSSY)"
            sources.setdefault(text, []).append(f"{row['key']}/seed{p['seed']}")
    if not sources:
        return []
    lines = ["## Data", ""]
    lines += [f"- {text}: {len(runs)} runs ({', '.join(runs)})" for text, runs in sources.items()]
    if any("(LOSSY)" in text for text in sources):
        lines.append(
            "- Runs on LOSSY data read a JPEG re-encoding, not the original pixels the "
            "references' code reads: their accuracies can differ slightly for that reason."
        )
    return [*lines, ""]


def markdown(table, results, seeds, short, extra) -> str:
    columns = ["top1", "many", "medium", "few"] + (["tail"] if table.tail_fraction else [])
    names = {"top1": "top-1", "tail": f"tail (bottom {table.tail_fraction:.0%})"}
    few = "tail" if table.tail_fraction else "few"
    best_columns = ["best_top1"] + (["best_tail"] if table.tail_fraction else [])
    names.update(best_top1="best: top-1", best_tail="best: tail")
    by_key = {r["key"]: r for r in results["rows"]}
    lines = [
        f"# {table.name}: {table.title}",
        "",
        schedule_text(short, extra),
        "",
        f"Seeds {', '.join(map(str, seeds))}; n = finished seeds of the row. Accuracy % on "
        "the balanced test split, mean ± sample standard deviation over seeds, at the final "
        "epoch and at the best epoch ('best': the highest test top-1 over training, a "
        "test-set choice, as the official CIFAR-LT code makes it; 'best epoch' per seed). "
        f"tau-norm: the best tau for both. {groups_text(results.get('shot_thresholds'))} "
        "The reference check reads the best epoch (see below). "
        f"Produced by `{table_command(table, seeds, short, extra)}`.",
        "",
        *[f"- {n}" for n in table.notes],
        *([""] if table.notes else []),
        "| row | n | "
        + " | ".join(names.get(c, c) for c in columns + best_columns)
        + f" | best epoch | vs KD: top-1 | vs KD: {names.get(few, few)} |",
        "|---|---|" + "---|" * (len(columns) + len(best_columns) + 3),
    ]
    kd = by_key.get("kd")
    for row in results["rows"]:
        cells = [
            mean_pm([p["result"].get(c) for p in row["runs"]])[0] for c in columns + best_columns
        ]
        epochs = ", ".join(str(p["result"].get("best_epoch")) for p in row["runs"]) or "n/a"
        deltas = ["", ""]
        if row["key"] in tables.DISTILLERS and row["key"] != "kd" and kd and kd["n"] and row["n"]:
            deltas = [
                f"{100 * (row['stats'][c]['mean'] - kd['stats'][c]['mean']):+.2f}"
                for c in ("top1", few)
            ]
        label = row["label"] + (f" ({row['note']})" if row["note"] else "")
        lines.append(
            f"| {label} | {row['n']} | "
            + " | ".join(cells)
            + f" | {epochs} | "
            + " | ".join(deltas)
            + " |"
        )
    lines += ["", *reference_lines(table, by_key, bool(short))]
    lines += data_lines(results)
    lines += against_kd_lines(table, by_key, few)
    lines += [
        "## Runs",
        "",
        "| row | seed | top-1 | wall s | device | jax | commit | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        for p in row["runs"]:
            wall = "n/a" if p["wall_s"] is None else f"{p['wall_s']:.0f}"
            lines.append(
                f"| {row['key']} | {p['seed']} | {pct(p['result']['top1'])} | {wall} | "
                f"{p['device_kind']} | {p['jax_version']} | {p['commit'][:12]} | "
                f"`{p['command']}` |"
            )
    return "\n".join(lines) + "\n"


def plot(table: tables.Table, results: dict, path: str) -> None:
    """Per-class test accuracy (mean over seeds) against training count, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(results["class_counts"])
    order = np.argsort(counts, kind="stable")
    fig, ax = plt.subplots(figsize=(9, 5))
    window = max(1, len(counts) // 10)  # a running mean over classes keeps lines readable
    kernel = np.ones(window)
    for row in results["rows"]:
        if not row["n"]:
            continue
        acc = 100 * np.mean([p["result"]["per_class_acc"] for p in row["runs"]], axis=0)[order]
        smooth = np.convolve(acc, kernel, "same") / np.convolve(np.ones_like(acc), kernel, "same")
        (line,) = ax.plot(counts[order], smooth, lw=1.5, label=row["label"])
        ax.plot(counts[order], acc, ".", ms=3, alpha=0.4, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log)")
    ax.set_ylabel(f"test accuracy % (dots: class, mean over seeds; lines: mean of {window})")
    ax.set_title(table.title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(table, runs, seeds, out, short, extra) -> dict:
    results = collect(table, runs)
    document = {
        "table": table.name,
        "title": table.title,
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "schedule": "short" if short else "full",
        "short": list(short) if short else None,
        "extra_overrides": list(extra),
        "seeds": seeds,
        "command": table_command(table, seeds, short, extra),
        "references": [dataclasses.asdict(r) for r in table.references],
        "reference_epoch": "best",
        "reference_epoch_why": tables.REFERENCE_EPOCH_WHY,
        "notes": list(table.notes),
        **results,
    }
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, output_name(table, short))
    with open(base + ".json", "w") as f:
        json.dump(document, f, indent=1, default=str)
    text = markdown(table, results, seeds, short, extra)
    with open(base + ".md", "w") as f:
        f.write(text)
    if results["class_counts"] is not None:
        plot(table, results, base + ".png")
    print(text)
    print(f"wrote {base}.md, {base}.json" + (", .png" if results["class_counts"] else ""))
    return document


def missing_archive(table: tables.Table, archive: str) -> str | None:
    """The error for a dataset zip that is not there (None when it is, or not needed)."""
    path = archive or ARCHIVES.get(table.dataset, "")
    if not path or os.path.exists(os.path.expanduser(path)):
        return None
    return (
        f"--archive: {path} does not exist; pass the {table.dataset} zip of table "
        f"{table.name}: --archive=/path/to/{cifar.ARCHIVE_NAMES[table.dataset]}"
    )


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if f.table is None:
        cli.usage_error(f"pass --table, one of {list(tables.TABLES)}")
    cli.quiet_logging()
    table = tables.TABLES[f.table]
    seeds = [int(s) for s in f.seeds]
    short = (f.short_epochs, f.short_steps) if f.short else None
    extra = tuple(f.set)
    missing = missing_archive(table, f.archive)
    if missing and not (f.dry_run or f.collect_only):
        cli.usage_error(missing)
    try:
        runs = plan_table(table, seeds, f.root, f.archive, short=short, extra=extra)
        todo = select(runs, f.only, table)
        batches = schedule(todo, table, f.cohorts)
        if f.dry_run:
            if missing:
                print(f"warning: {missing}; the plan cannot run without it", file=sys.stderr)
            print(print_plan(table, todo, batches))
            return
        for run in runs:
            check_same_config(run)
        if not f.collect_only:
            env = environment()
            for run in todo:
                if is_done(run):
                    print(f"skipped {run.workdir}: finished", flush=True)
            batches = schedule(prioritise(todo, f.priority, table), table, f.cohorts)
            train_all(table, batches, env, f.deadline_s, f.cost_device)
    except UserError as e:
        cli.usage_error(str(e), e)
    out = f.out or (f.root if short else "results")
    write_outputs(table, runs, seeds, out, short, extra)


def train_all(table, batches: list[list[Run]], env: dict, deadline_s: float, cost_device: str):
    """Trains the batches of `schedule` (one run, or a cohort) in order; under a deadline
    only those predicted to fit."""
    device = cost_device or ("cpu" if env["device_kind"].lower().startswith("cpu") else "h100")
    window = Deadline(deadline_s)
    skipped_seeds = set()
    for batch in batches:
        names = " ".join(r.workdir for r in batch)
        if batch[0].seed in skipped_seeds:
            window.deferred.append(names)
            print(f"deferred {names}: its teacher is deferred", flush=True)
            continue
        estimate_s = estimate_batch(batch, device)
        fits, predicted, left = window.allows(estimate_s)
        if not fits:
            window.deferred.append(names)
            if batch[0].row is table.teacher:
                skipped_seeds.add(batch[0].seed)
            print(
                f"deferred {names}: predicted {predicted:.0f} s ({device} estimate x "
                f"{window.scale:.2f}), {left:.0f} s left of --deadline_s",
                flush=True,
            )
            continue
        started = time.monotonic()
        if len(batch) > 1:
            print(f"running a cohort of {[r.row.key for r in batch]}", flush=True)
            execute_cohort(batch, env)
        else:
            print(f"running {batch[0].command}", flush=True)
            execute(batch[0], env)
        window.record(estimate_s, time.monotonic() - started)
        for run in batch:
            write_record(run, os.path.join(os.path.dirname(run.workdir), table.teacher.key))
    if deadline_s > 0:
        print(
            f"window: trained {window.trained} batches in {window.clock() - window.start:.0f} s "
            f"(measured / {device} estimate = {window.scale:.2f}); deferred "
            f"{len(window.deferred)}: {' '.join(window.deferred) or '-'}",
            flush=True,
        )


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
