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

from ltkd_jax import cli  # noqa: E402
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


def define_flags() -> None:
    """The command line; defined on demand so tests can import this module's functions."""
    flags.DEFINE_enum("table", None, list(tables.TABLES), "The table to reproduce.")
    flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed); one teacher per seed.")
    flags.DEFINE_string("root", "runs/reproduce", "Where the run folders live.")
    flags.DEFINE_string(
        "archive", "", "Dataset zip; empty = ../shared/data/cifar100-png.zip or cifar10-jpeg.zip."
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
    flags.DEFINE_bool("collect_only", False, "Train nothing; write the tables.")


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
        return self.row.config == "tau_norm_cifar"


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

    The epoch-valued fields (LR warm-up and decay, DRW switch, DKD warm-up) shrink in the
    same proportion, so the recipe's phases keep their place; evaluation only at the end.
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
    if "drw_epoch" in config.loss:  # the methods that weight by class
        overrides.append(f"loss.drw_epoch={round(config.loss.drw_epoch * scale)}")
    if "warmup_epochs" in config.loss:  # DKD
        overrides.append(f"loss.warmup_epochs={max(1, round(config.loss.warmup_epochs * scale))}")
    return overrides


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
            if short and row.config != "tau_norm_cifar":
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


# ---------------------------------------------------------------------------------------
# Status of a run folder
# ---------------------------------------------------------------------------------------


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
        stored = _flatten(defaults.upgrade_saved_config(json.load(f)))
    wanted = _flatten(json.loads(json.dumps(run.config.to_dict())))
    differ = sorted(k for k in stored.keys() & wanted.keys() if stored[k] != wanted[k])
    if differ:
        shown = ", ".join(
            f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:4]
        )
        raise UserError(
            f"{run.workdir} holds a run of another config ({shown}); pass another --root "
            "(or delete that folder) instead of mixing two schedules in one run"
        )


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def is_done(run: Run) -> bool:
    return epochs_done(run) >= (1 if run.posthoc else run.config.num_epochs)


def estimate(run: Run, device: str) -> float:
    """Device seconds still needed by the run (0 when finished); NaN where unknown."""
    if is_done(run):
        return 0.0
    c = run.config
    if run.posthoc:
        epochs, evaluations, teacher = 0, tables.TAU_GRID_SIZE, None
    else:
        epochs = c.num_epochs - epochs_done(run)
        evaluations = max(1, epochs // c.eval_every_epochs)
        teacher = c.teacher.model if run.row.link == "teacher" else None
    seconds = tables.estimate_seconds(
        device,
        dataset=c.data.name,
        imbalance_factor=c.data.imbalance_factor,
        model=c.model.name,
        teacher_model=teacher,
        batch_size=c.batch_size,
        epochs=epochs,
        max_steps_per_epoch=c.max_steps_per_epoch,
        evaluations=evaluations,
    )
    return float("nan") if seconds is None else seconds


def print_plan(table: tables.Table, runs: list[Run]) -> str:
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
    for device, seconds in totals.items():
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
    def git(*args):
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
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
    metrics = os.path.join(workdir, "metrics.jsonl")
    last_write = os.path.getmtime(metrics) if os.path.exists(metrics) else 0.0
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


def write_record(run: Run) -> dict:
    """The finished run's provenance, from its attempts log."""
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


def groups_text(thresholds: dict | None) -> str:
    """The shot groups in words, from task.json's `shot_thresholds` (None: not recorded)."""
    if not thresholds:
        return "many / medium / few: by training images (thresholds not recorded)."
    many, few = thresholds["many"], thresholds["few"]
    return f"many / medium / few: > {many}, {few}-{many}, < {few} training images."


def run_result(run: Run, table: tables.Table, counts: np.ndarray) -> dict:
    """Final-epoch accuracies of a finished run (post-hoc runs: the best tau)."""
    tests = [r for r in read_metrics(run.workdir) if r.get("split") == "test"]
    if run.posthoc:
        tests = tests[-tables.TAU_GRID_SIZE :]
        final = best = max(tests, key=lambda r: r["top1"])
    else:
        final, best = tests[-1], max(tests, key=lambda r: r["top1"])
    per_class = np.asarray(final["per_class_acc"])
    out = {k: final.get(k) for k in ("top1", "many", "medium", "few")}
    if table.tail_fraction:
        out["tail"] = tables.group_accuracy(
            per_class, tables.tail_classes(counts, table.tail_fraction)
        )
    out.update(
        best_top1=best["top1"],
        best_epoch=best.get("epoch"),
        per_class_acc=per_class.tolist(),
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
            else:
                record = write_record(run)
            per_run.append({**record, "result": run_result(run, table, counts)})
        stats = {}
        for group in GROUPS:
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
        "| row | ours | reference | source | gap (points) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for ref in table.references:
        row = by_key[ref.key]
        items = [("top-1", row["stats"]["top1"]["mean"], ref.top1, ref.target)]
        if ref.tail is not None:
            items.append(("tail", row["stats"]["tail"]["mean"], ref.tail, None))
        for what, ours, theirs, target in items:
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
                f"| {row['label']} {what} | {pct(ours) if row['n'] else 'n/a'} | {theirs:.2f} "
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


def markdown(table, results, seeds, short, extra) -> str:
    columns = ["top1", "many", "medium", "few"] + (["tail"] if table.tail_fraction else [])
    names = {"top1": "top-1", "tail": f"tail (bottom {table.tail_fraction:.0%})"}
    few = "tail" if table.tail_fraction else "few"
    by_key = {r["key"]: r for r in results["rows"]}
    lines = [
        f"# {table.name}: {table.title}",
        "",
        schedule_text(short, extra),
        "",
        f"Seeds {', '.join(map(str, seeds))}; n = finished seeds of the row. Accuracy % on "
        "the balanced test split at the final epoch (tau-norm: the best tau), mean ± sample "
        "standard deviation over seeds; 'best' is the best epoch's top-1 (a test-set choice, "
        f"for information). {groups_text(results.get('shot_thresholds'))} "
        f"Produced by `{table_command(table, seeds, short, extra)}`.",
        "",
        *[f"- {n}" for n in table.notes],
        *([""] if table.notes else []),
        "| row | n | " + " | ".join(names.get(c, c) for c in columns) + " | best | vs KD: top-1 | "
        f"vs KD: {names.get(few, few)} |",
        "|---|---|" + "---|" * (len(columns) + 3),
    ]
    kd = by_key.get("kd")
    for row in results["rows"]:
        cells = [mean_pm([p["result"].get(c) for p in row["runs"]])[0] for c in columns]
        best = mean_pm([p["result"]["best_top1"] for p in row["runs"]])[0]
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
            + f" | {best} | "
            + " | ".join(deltas)
            + " |"
        )
    lines += ["", *reference_lines(table, by_key, bool(short))]
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
        if f.dry_run:
            if missing:
                print(f"warning: {missing}; the plan cannot run without it", file=sys.stderr)
            print(print_plan(table, todo))
            return
        for run in runs:
            check_same_config(run)
        if not f.collect_only:
            env = environment()
            for run in todo:
                if is_done(run):
                    print(f"skipped {run.workdir}: finished", flush=True)
                else:
                    print(f"running {run.command}", flush=True)
                    execute(run, env)
                    write_record(run)
    except UserError as e:
        cli.usage_error(str(e), e)
    out = f.out or (f.root if short else "results")
    write_outputs(table, runs, seeds, out, short, extra)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
