r"""SIGKILL a job at chosen and random moments, resume it each time, and check that it ends
exactly as an uninterrupted run: every kept checkpoint array by array (state and input
position) in every stage, the raw metrics records (so a record written twice is seen), and
summary.json.

    python scripts/kill_resume.py --kills=12 --root=/tmp/kill_resume
    python scripts/kill_resume.py --kills=10 -- --config.num_epochs=15 \
        --config.teacher.num_epochs=15

Arguments after `--` go to `python -m ltkd_jax.main` (default job: configs/quickstart.py, a
teacher then a BKD student). The uninterrupted run goes first and sets the kill windows: its
start-up (launch to the first training record) and its seconds per epoch. Each kill is one of

  start-up  uniform in [0, start-up) after a (re)start: imports, data, restore, compile (the
            first kill, before any checkpoint, is one);
  save      as soon as a checkpoint is being written (orbax's temporary directory appears);
  progress  once the job reaches a target step, plus up to one epoch; the targets are spread
            in order over both stages past the first checkpoint (the switch between stages
            is one of them), so the kills follow the job through training, evaluation and
            the stage change;
  reports   the last kill: after the final evaluation, while reports and summary are written.

Progress is read from the job's own log lines, so the windows follow a slow machine. Each kill
is printed with the phase it landed in, observed at that moment (the process's last log lines
and the checkpoint directories); the report counts the kills per phase and those that landed
after the job's first checkpoint. Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings

import numpy as np

# Restoring a checkpoint without a target reads its sharding file, as intended here.
warnings.filterwarnings("ignore", message="Sharding info not provided when restoring")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fields of a metrics record that measure the machine, not the run.
TIMING_FIELDS = ("images_per_sec",)
_TRAIN_RECORD = re.compile(r"\] step (\d+): step=\d+, epoch=\d+, split=train")
_STAGE = re.compile(
    r"\] (?:stage 1: teacher \d+ of \d+|stage 2, the student: \S+|training: \S+) in (.+)$"
)
_POLL_S = 0.01


def command(workdir: str, extra: list[str], config: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ltkd_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        "--config.progress_bar=False",
        *extra,
    ]


class Watched:
    """A job process whose stderr lines are kept with their arrival time (and appended to
    the harness log), so kills can follow its progress."""

    def __init__(self, cmd: list[str], log, env: dict):
        self.start = time.perf_counter()
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.PIPE, text=True, env=env
        )
        self._reader = threading.Thread(target=self._read, args=(log,), daemon=True)
        self._reader.start()

    def _read(self, log) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.perf_counter() - self.start, line.rstrip("\n")))
            log.write(line)
        log.flush()

    def texts(self) -> list[str]:
        return [text for _, text in list(self.lines)]

    def finish(self) -> int:
        code = self.proc.wait()
        self._reader.join()
        return code

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.finish()


def stage_names(workdir: str) -> list[str]:
    """The job's run directories, relative to it, in the order they train: teachers, then
    the job itself ('.')."""
    return sorted(d for d in os.listdir(workdir) if d.startswith("teacher")) + ["."]


def stage_steps(workdir: str) -> list[int]:
    """Each stage's configured steps, from its config.json and task.json."""
    out = []
    for name in stage_names(workdir):
        with open(os.path.join(workdir, name, "config.json")) as f:
            epochs = json.load(f)["num_epochs"]
        with open(os.path.join(workdir, name, "task.json")) as f:
            out.append(epochs * json.load(f)["steps_per_epoch"])
    return out


class Job:
    """A job directory and its stages (names and steps, from the uninterrupted run)."""

    def __init__(self, workdir: str, names: list[str], steps: list[int]):
        self.workdir, self.names, self.steps = workdir, names, steps
        self.offsets = [0, *np.cumsum(steps).tolist()]
        self.total = self.offsets[-1]

    def runs(self) -> list[str]:
        return [os.path.normpath(os.path.join(self.workdir, n)) for n in self.names]

    def progress(self, texts: list[str]) -> tuple[int, set[int]]:
        """(steps done over all stages, the stages this process logged a train record of),
        from its log lines: a stage line says which run trains, train records how far."""
        order = [os.path.realpath(r) for r in self.runs()]
        stage, step, trained = 0, 0, set()
        for text in texts:
            if match := _STAGE.search(text):
                path = os.path.realpath(match.group(1))
                stage, step = (order.index(path) if path in order else stage), 0
            elif match := _TRAIN_RECORD.search(text):
                step = int(match.group(1))
                trained.add(stage)
        return self.offsets[stage] + step, trained

    def partial_saves(self) -> list[str]:
        """Checkpoints being written: orbax's temporary step directories."""
        return [
            name
            for run in self.runs() if os.path.isdir(os.path.join(run, "checkpoints"))
            for name in os.listdir(os.path.join(run, "checkpoints"))
            if ".orbax-checkpoint-tmp" in name
        ]  # fmt: skip

    def has_checkpoint(self) -> bool:
        return any(kept_steps(run) for run in self.runs())

    def phase(self, texts: list[str]) -> str:
        """Where a process was when killed, from what it had logged and written."""
        done, trained = self.progress(texts)
        if not trained:  # a killed save's leftovers are removed by the next run's start-up
            return "start-up (imports, data, restore, compile)"
        if self.partial_saves():
            return "saving a checkpoint"
        if done >= self.total:
            return "after training (final evaluation, reports, summary)"
        if max(trained) < self.stage_of(done):
            return "between stages (one done, the next starting)"
        return "training and evaluation"

    def stage_of(self, done: int) -> int:
        return max(i for i, offset in enumerate(self.offsets[:-1]) if offset <= done)


def timings(watched: Watched) -> dict:
    """Of an uninterrupted run: start-up (launch to the first train record), seconds per
    epoch (the median gap between train records after the first, which holds the compile)
    and the tail after its first report line (reports and summary)."""
    times = [t for t, text in watched.lines if _TRAIN_RECORD.search(text)]
    gaps = [b - a for a, b in zip(times[1:], times[2:], strict=False) if b > a]
    reports = [t for t, text in watched.lines if "] report of " in text]
    end = watched.lines[-1][0]
    return {
        "startup_s": times[0],
        "epoch_s": statistics.median(gaps) if gaps else 1.0,
        "reports_s": end - reports[0] if reports else 1.0,
    }


def wait_for(watched: Watched, condition, timeout_s: float) -> bool:
    """True once `condition()` holds; False when the process ended or time ran out."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if watched.proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(_POLL_S)
    return False


def kill_plan(kills: int, job: Job, first: int, rng: random.Random) -> list[tuple[str, int]]:
    """(kind, target step) per kill: a start-up kill of the fresh run; then progress, save
    and start-up kills in turn, the progress targets spread in order over the job from step
    `first` (past its first checkpoint), each later stage's start among them; last, a kill
    during the reports."""
    kinds = [("progress", "save", "progress", "start-up")[i % 4] for i in range(kills - 2)]
    count = kinds.count("progress")
    starts = job.offsets[1:-1][:count]
    spread = [rng.randrange(first, job.total) for _ in range(count - len(starts))]
    targets = iter(sorted([*starts, *spread]))
    planned = [(k, next(targets) if k == "progress" else 0) for k in kinds]
    return [("start-up", 0), *planned, ("reports", job.total)][:kills]


def first_target(job: Job) -> int:
    """The first step a progress kill may aim at: one epoch after the first stage's first
    evaluation, so its checkpoint is committed (saves take well under an epoch)."""
    run = job.runs()[0]
    with open(os.path.join(run, "task.json")) as f:
        per_epoch = json.load(f)["steps_per_epoch"]
    tests = [r["step"] for r in raw_records(run) if r["split"] == "test"]
    return min(tests[0] + per_epoch, job.total - 1)


def _after(watched: Watched, seconds: float, timeout_s: float) -> bool:
    end = time.perf_counter() + seconds
    return wait_for(watched, lambda: time.perf_counter() >= end, timeout_s)


def kill_once(watched: Watched, kind: str, target: int, job: Job, timing, rng, timeout_s) -> bool:
    """Kills the process when `kind` says; False if it finished first."""
    texts = watched.texts
    if kind == "start-up":
        hit = _after(watched, rng.uniform(0, timing["startup_s"]), timeout_s)
    elif kind == "save":
        started = lambda: bool(job.progress(texts())[1])  # noqa: E731 - past its own start-up
        hit = wait_for(watched, lambda: started() and bool(job.partial_saves()), timeout_s)
    elif kind == "reports":
        reporting = lambda: any("] report of " in t for t in texts())  # noqa: E731
        hit = wait_for(watched, reporting, timeout_s)
        # Within the first half of the reference's tail: a resumed run may report faster.
        hit = hit and _after(watched, rng.uniform(0, timing["reports_s"] / 2), timeout_s)
    else:  # somewhere in the epoch after the target step
        reached = lambda: job.progress(texts())[0] >= target  # noqa: E731
        hit = wait_for(watched, reached, timeout_s)
        hit = hit and _after(watched, rng.uniform(0, timing["epoch_s"]), timeout_s)
    if hit:
        watched.kill()
    return hit


# ---------------------------------------------------------------------------------------
# Comparison with the uninterrupted run
# ---------------------------------------------------------------------------------------


def kept_steps(run: str) -> list[int]:
    ckpt = os.path.join(run, "checkpoints")
    return sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) if os.path.isdir(ckpt) else []


def checkpoint_arrays(run: str, step: int) -> dict:
    """Every array of one checkpoint (state: parameters, statistics, optimiser) plus its
    input position, flat."""
    import orbax.checkpoint as ocp

    path = os.path.join(run, "checkpoints", str(step))
    arrays = ocp.tree.to_flat_dict(ocp.PyTreeCheckpointer().restore(os.path.join(path, "state")))
    data = os.path.join(path, "data")
    for name in sorted(os.listdir(data)) if os.path.isdir(data) else []:
        if name.endswith(".json"):
            with open(os.path.join(data, name)) as f:
                arrays[("data", name)] = f.read()
    return arrays


def checkpoint_differences(killed: Job, reference: Job) -> list[str]:
    problems = []
    for name, run_k, run_r in zip(reference.names, killed.runs(), reference.runs(), strict=True):
        if kept_steps(run_k) != kept_steps(run_r):
            problems.append(f"{name}: kept {kept_steps(run_k)}, uninterrupted {kept_steps(run_r)}")
            continue
        for step in kept_steps(run_r):
            a, b = checkpoint_arrays(run_k, step), checkpoint_arrays(run_r, step)
            if a.keys() != b.keys():
                problems.append(f"{name}@{step}: other entries")
            problems += [
                f"{name}@{step}: {key} differs"
                for key in a.keys() & b.keys()
                if not np.array_equal(np.asarray(a[key]), np.asarray(b[key]))
            ]
    return problems


def raw_records(run: str) -> list[dict]:
    """metrics.jsonl line by line, as written (no merging of replayed records), without
    the fields that time the machine."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def record_differences(killed: Job, reference: Job) -> list[str]:
    problems = []
    for name, run_k, run_r in zip(reference.names, killed.runs(), reference.runs(), strict=True):
        got, want = raw_records(run_k), raw_records(run_r)
        keys = collections.Counter((r["step"], r["split"], r.get("tau")) for r in got)
        twice = sorted(k[:2] for k, n in keys.items() if n > 1)
        if twice:
            problems.append(f"{name}: records written more than once: {twice[:10]}")
        if got != want:
            problems.append(f"{name}: metrics.jsonl differs ({len(got)} vs {len(want)} records)")
    for name in reference.names:
        paths = [os.path.join(job.workdir, name, "summary.json") for job in (killed, reference)]
        texts = [open(p).read() if os.path.exists(p) else None for p in paths]
        if texts[0] != texts[1]:
            problems.append(f"{name}: summary.json differs")
    return problems


# ---------------------------------------------------------------------------------------


def run_to_end(cmd: list[str], log, env: dict) -> Watched:
    watched = Watched(cmd, log, env)
    if watched.finish() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log.name}")
    return watched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--root", default="/tmp/ltkd_kill_resume")
    parser.add_argument("--config", default="configs/quickstart.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout_s", type=float, default=600.0, help="per kill")
    parser.add_argument(
        "--cache_dir",
        default=os.environ.get("LTKD_JAX_CACHE", os.path.expanduser("~/.cache/ltkd_jax_xla")),
        help="JAX compilation cache shared by every (re)start",
    )
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "JAX_COMPILATION_CACHE_DIR": args.cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }
    rng = random.Random(args.seed)
    shutil.rmtree(args.root, ignore_errors=True)
    os.makedirs(args.root)
    reference, killed = os.path.join(args.root, "reference"), os.path.join(args.root, "killed")
    phases, after_first_checkpoint, kills = collections.Counter(), 0, 0
    with open(os.path.join(args.root, "log.txt"), "w") as log:
        start = time.perf_counter()
        timing = timings(run_to_end(command(reference, extra, args.config), log, env))
        names, steps = stage_names(reference), stage_steps(reference)
        ref_job, job = Job(reference, names, steps), Job(killed, names, steps)
        print(
            f"uninterrupted run: {time.perf_counter() - start:.0f} s; start-up "
            f"{timing['startup_s']:.1f} s, {timing['epoch_s']:.2f} s per epoch, reports "
            f"{timing['reports_s']:.1f} s; stages {names} of {steps} steps",
            flush=True,
        )
        cmd = command(killed, extra, args.config)
        for kind, target in kill_plan(args.kills, job, first_target(ref_job), rng):
            watched = Watched(cmd, log, env)
            if not kill_once(watched, kind, target, job, timing, rng, args.timeout_s):
                code = watched.finish()
                if code != 0:
                    print(f"a resumed run exited {code}; see {log.name}", flush=True)
                    return 1
                print(f"the job finished before kill {kills + 1} ({kind})", flush=True)
                break
            kills += 1
            landed = job.phase(watched.texts())
            phases[landed] += 1
            after_first_checkpoint += job.has_checkpoint()  # a kill adds none
            at = time.perf_counter() - watched.start
            print(f"kill {kills} ({kind}, after {at:.1f} s): {landed}", flush=True)
        run_to_end(cmd, log, env)
    problems = checkpoint_differences(job, ref_job) + record_differences(job, ref_job)
    summary = {
        "kills": kills,
        "after_first_checkpoint": after_first_checkpoint,
        "phases": dict(phases),
        "seconds": round(time.perf_counter() - start),
        "identical": not problems,
        "problems": problems[:20],
    }
    print(json.dumps(summary, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
