r"""SIGKILL a job at random moments, resume it each time, and check the final state equals an
uninterrupted run's, bit for bit (teacher and student).

    python scripts/kill_resume.py --kills=20 --root=/tmp/kill_resume
    python scripts/kill_resume.py --kills=3 -- --config.num_epochs=5 --config.teacher.num_epochs=5

Arguments after `--` go to `python -m ltkd_jax.main` (default job: configs/quickstart.py, a
teacher then a BKD student). Each kill lands uniformly in [--min_s, --max_s] seconds after a
(re)start, so it hits data preparation, compilation, steps, evaluation or checkpoint saves.
Prints one line per kill and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np

# Restoring a checkpoint without a target reads its sharding file, as intended here.
warnings.filterwarnings("ignore", message="Sharding info not provided when restoring")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def run_to_end(cmd: list[str], log) -> None:
    out = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=log)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {out.returncode}; see {log.name}")


def final_states(workdir: str) -> dict[str, dict]:
    """run name -> flat {path: array} of its last checkpoint's state."""
    import orbax.checkpoint as ocp

    states = {}
    for name in sorted(os.listdir(workdir)) + ["."]:
        ckpt = os.path.join(workdir, name, "checkpoints")
        if not os.path.isdir(ckpt):
            continue
        last = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
        state = ocp.PyTreeCheckpointer().restore(os.path.join(ckpt, str(last), "state"))
        states[f"{name}@{last}"] = ocp.tree.to_flat_dict(state)
    return states


def evaluations(workdir: str) -> dict[str, list]:
    from ltkd_jax.training.writers import read_metrics

    out = {}
    for name in sorted(os.listdir(workdir)) + ["."]:
        path = os.path.join(workdir, name, "metrics.jsonl")
        if os.path.exists(path):
            out[name] = [r for r in read_metrics(path) if r["split"] == "test"]
    return out


def progress(workdir: str) -> str:
    """'teacher: steps [..], .: steps [..]': the checkpoints each run holds now."""
    parts = []
    for name in sorted(os.listdir(workdir)) + ["."] if os.path.isdir(workdir) else []:
        ckpt = os.path.join(workdir, name, "checkpoints")
        if os.path.isdir(ckpt):
            steps = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit())
            parts.append(f"{'student' if name == '.' else name} checkpoints {steps}")
    return "; ".join(parts) or "no checkpoint yet"


def differences(a: str, b: str) -> list[str]:
    problems = []
    sa, sb = final_states(a), final_states(b)
    if sa.keys() != sb.keys():
        return [f"different runs or final steps: {sorted(sa)} vs {sorted(sb)}"]
    for run in sa:
        for path, x in sa[run].items():
            if not np.array_equal(np.asarray(x), np.asarray(sb[run][path])):
                problems.append(f"{run}: {path} differs")
    if evaluations(a) != evaluations(b):
        problems.append("test records differ (or appear more than once)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--root", default="/tmp/ltkd_kill_resume")
    parser.add_argument("--config", default="configs/quickstart.py")
    parser.add_argument("--min_s", type=float, default=4.0)
    parser.add_argument("--max_s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    rng = random.Random(args.seed)
    shutil.rmtree(args.root, ignore_errors=True)
    os.makedirs(args.root)
    reference, killed = os.path.join(args.root, "reference"), os.path.join(args.root, "killed")
    with open(os.path.join(args.root, "log.txt"), "w") as log:
        start = time.perf_counter()
        run_to_end(command(reference, extra, args.config), log)
        print(f"uninterrupted run: {time.perf_counter() - start:.0f} s", flush=True)
        cmd = command(killed, extra, args.config)
        kills = 0
        while kills < args.kills:
            delay = rng.uniform(args.min_s, args.max_s)
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)
            try:
                code = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                print(f"kill {kills}: after {delay:.1f} s ({progress(killed)})", flush=True)
                continue
            if code != 0:
                print(f"a resumed run exited {code}; see {log.name}")
                return 1
            print(f"the job finished before kill {kills + 1}; lower --max_s for more", flush=True)
            break
        run_to_end(cmd, log)
    problems = differences(killed, reference)
    summary = {"kills": kills, "identical": not problems, "problems": problems[:20]}
    print(json.dumps(summary, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
