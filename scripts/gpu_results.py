"""The GPU check's helpers and its report (`scripts/gpu_check.sh`, docs/gpu.md).

    python scripts/gpu_results.py report OUT_OR_TARBALL --md results/gpu_main_job.md \
        [--json results/gpu_main_job.json]        # the Markdown report and its numbers
    python scripts/gpu_results.py check STAGE     # exit 1 if an issue-26 target is missed
    python scripts/gpu_results.py env --out STAGE/env.json
    python scripts/gpu_results.py phase --file STAGE/phases.jsonl --name N --start T0 --end T1 \
        --rc RC --limit S -- COMMAND...           # one line per phase of gpu_check.sh
    python scripts/gpu_results.py profile TRACE_DIR -- MAIN_ARGS...   # ltkd_jax.main, traced

`report` reads the folder `gpu_check.sh` fills (or its `gpu_check.tar.gz`):
- `phases.jsonl`: each phase's command, start, end, exit status and time limit;
- `env.json`: GPU, driver, CUDA, JAX / jaxlib / plugin, PyTorch and library versions, commit;
- `bench.json`: `scripts/benchmark.py --loop --json` (pure step, in-loop, PyTorch images/s);
- `main_f32/`, `main_bf16/`: the main job's `run.log`, `metrics.jsonl`, `teacher_metrics.jsonl`,
  `config.json`, `teacher_config.json`, `summary.json`;
- `smi.csv`: `nvidia-smi --query-gpu=timestamp,utilization.gpu,... -l 1`, sampled throughout.
Stage wall times come from `run.log`'s timestamps (teacher: `stage 1` line to `stage 2` line;
student: `stage 2` line to the first `report of` line; the reports after that), GPU
utilisation is the mean of the samples inside each stage. Only the standard library is used
here (`env` and `profile` import what they inspect), so the report is written anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile

# Issue 26's targets.
LOOP_OVER_PURE = 0.90
MAIN_JOB_S = 240.0
CE_TOP1, CE_TOP1_TOLERANCE = 38.3, 1.0
RESIDENT = "ltkd_jax device-resident"
RUNS = (("main_f32", "float32"), ("main_bf16", "bfloat16"))

_ABSL = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})\s")


# ---------------------------------------------------------------------------------------
# Reading the folder
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_stage(path: str):
    """The folder of a check: `path` itself, or its `gpu_check.tar.gz` unpacked into a
    temporary folder for the duration of the `with`."""
    p = pathlib.Path(path)
    if p.is_dir() and (p / "gpu_check.tar.gz").exists() and not (p / "phases.jsonl").exists():
        p = p / "gpu_check.tar.gz"  # the device tool's OUT folder
    if p.is_dir():
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp, tarfile.open(p) as tar:
        tar.extractall(tmp, filter="data")
        yield pathlib.Path(tmp)


def read_json(path: pathlib.Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def read_jsonl(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line cut by a kill
    return rows


def local_time(text: str) -> datetime.datetime:
    """`date +%Y-%m-%dT%H:%M:%S.%N` (nanoseconds cut to microseconds), naive local time."""
    head, _, frac = text.partition(".")
    return datetime.datetime.fromisoformat(head + ("." + frac[:6] if frac else ""))


def absl_time(line: str, year: int) -> datetime.datetime | None:
    """The timestamp of an absl log line (`I1202 15:00:28.475936 ...`), local time."""
    m = _ABSL.match(line)
    if not m:
        return None
    month, day, hh, mm, ss, us = (int(g) for g in m.groups())
    return datetime.datetime(year, month, day, hh, mm, ss, us)


def stage_times(run_log: list[str], year: int) -> dict:
    """Start of each stage of the main job, from its run.log (None where never reached)."""
    marks = {"start": None, "teacher": None, "student": None, "reports": None, "end": None}
    for line in run_log:
        t = absl_time(line, year)
        if t is None:
            continue
        if marks["start"] is None:
            marks["start"] = t
        marks["end"] = t
        if marks["teacher"] is None and "stage 1: teacher" in line:
            marks["teacher"] = t
        elif marks["student"] is None and "stage 2, the student" in line:
            marks["student"] = t
        elif marks["reports"] is None and "report of " in line:
            marks["reports"] = t
    return marks


def seconds(a, b) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds()


def smi_samples(path: pathlib.Path) -> list[tuple[datetime.datetime, dict]]:
    """(time, {column: value}) of `nvidia-smi --format=csv,nounits -l 1` output."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    header = None
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.split(",")]
        if cells[0] == "timestamp":
            header = [c.split(" [")[0] for c in cells]
            continue
        if header is None or len(cells) != len(header):
            continue
        try:
            t = datetime.datetime.strptime(cells[0], "%Y/%m/%d %H:%M:%S.%f")
        except ValueError:
            continue
        values = {}
        for name, cell in zip(header[1:], cells[1:], strict=True):
            try:
                values[name] = float(cell)
            except ValueError:
                pass  # [N/A]
        rows.append((t, values))
    return rows


def utilisation(samples, start, end) -> dict | None:
    """Mean / max GPU utilisation % and peak memory used (MiB) of the samples in [start, end]."""
    if start is None or end is None:
        return None
    inside = [v for t, v in samples if start <= t <= end]
    util = [v["utilization.gpu"] for v in inside if "utilization.gpu" in v]
    if not util:
        return None
    memory = [v["memory.used"] for v in inside if "memory.used" in v]
    return {
        "mean": statistics.fmean(util),
        "max": max(util),
        "samples": len(util),
        "memory_used_max_mib": max(memory) if memory else None,
    }


def phase_utilisation(samples, phase: dict | None) -> dict | None:
    if not phase:
        return None
    return utilisation(samples, local_time(phase["start_local"]), local_time(phase["end_local"]))


def run_numbers(records: list[dict], config: dict | None) -> dict:
    """Epochs, images trained, in-loop images/s and the final / best test accuracies."""
    train = [r for r in records if r.get("split") == "train"]
    tests = [r for r in records if r.get("split") == "test" and "top1" in r]
    steady = [r["images_per_sec"] for r in train if r.get("epoch", 1) > 1 and "images_per_sec" in r]
    rates = steady or [r["images_per_sec"] for r in train if "images_per_sec" in r]
    batch = (config or {}).get("batch_size")
    steps = max([r.get("step", 0) for r in records] + [0])
    out = {
        "epochs_planned": (config or {}).get("num_epochs"),
        "epochs_done": max([r.get("epoch", 0) for r in tests] + [0]),
        "steps": steps,
        "images_trained": steps * batch if batch else None,
        "in_loop_images_per_s": statistics.median(rates) if rates else None,
        "final": None,
        "best_top1": None,
        "best_epoch": None,
    }
    if tests:
        final, best = tests[-1], max(tests, key=lambda r: r["top1"])
        out["final"] = {k: final.get(k) for k in ("epoch", "top1", "many", "medium", "few")}
        out["best_top1"], out["best_epoch"] = best["top1"], best.get("epoch")
    return out


def main_job(stage: pathlib.Path, tag: str, phase: dict | None, samples) -> dict | None:
    """Stage times, throughput, utilisation and accuracies of one main-job run."""
    folder = stage / tag
    if not folder.is_dir():
        return None
    year = local_time(phase["start_local"]).year if phase else datetime.date.today().year
    log_path = folder / "run.log"
    marks = stage_times(log_path.read_text().splitlines() if log_path.exists() else [], year)
    end = local_time(phase["end_local"]) if phase else marks["end"]
    windows = {
        "teacher": (marks["teacher"], marks["student"] or end),
        "student": (marks["student"], marks["reports"] or end),
        "reports": (marks["reports"], end if marks["reports"] else None),
    }
    configs = {
        "teacher": read_json(folder / "teacher_config.json"),
        "student": read_json(folder / "config.json"),
    }
    metrics = {
        "teacher": read_jsonl(folder / "teacher_metrics.jsonl"),
        "student": read_jsonl(folder / "metrics.jsonl"),
    }
    stages = {}
    for name, (a, b) in windows.items():
        entry = {"seconds": seconds(a, b), "gpu_util": utilisation(samples, a, b)}
        if name in metrics:
            entry.update(run_numbers(metrics[name], configs[name]))
            wall, images = entry["seconds"], entry["images_trained"]
            entry["stage_images_per_s"] = images / wall if wall and images else None
            planned = entry["epochs_planned"]
            entry["complete"] = bool(planned) and entry["epochs_done"] == planned
        stages[name] = entry
    return {
        "tag": tag,
        "command": phase.get("command") if phase else None,
        "process_s": phase.get("seconds") if phase else None,
        "exit": phase.get("rc") if phase else None,
        "timed_out": phase.get("timed_out") if phase else None,
        "limit_s": phase.get("limit_s") if phase else None,
        "in_log_s": seconds(marks["start"], marks["end"]),
        "gpu_util": phase_utilisation(samples, phase),
        "stages": stages,
    }


def collect(stage: pathlib.Path) -> dict:
    """Everything the report shows, as one JSON-able dict (also written as --json)."""
    phases = {p["name"]: p for p in read_jsonl(stage / "phases.jsonl")}
    samples = smi_samples(stage / "smi.csv")
    bench = read_json(stage / "bench.json")
    runs = {}
    for tag, dtype in RUNS:
        job = main_job(stage, tag, phases.get(tag), samples)
        if job is not None:
            job["dtype"] = dtype
            runs[tag] = job
    if bench is not None:
        bench["gpu_util"] = phase_utilisation(samples, phases.get("bench"))
    settings = read_json(stage / "settings.json") or {}
    result = {
        "settings": settings,
        "env": read_json(stage / "env.json") or {},
        "phases": list(phases.values()),
        "bench": bench,
        "runs": runs,
        "profile": (stage / "profile.txt").read_text().strip()
        if (stage / "profile.txt").exists()
        else None,
    }
    result["targets"] = targets(result)
    return result


# ---------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------


def targets(result: dict) -> list[dict]:
    """Issue 26's targets: [{name, measured, met (True / False / None = not measured)}]."""
    out = []
    ratios = (result.get("bench") or {}).get("loop_over_pure", {})
    rates = (result.get("bench") or {}).get("images_per_sec", {})
    for loop, label in (("ce", "CE teacher"), ("bkd", "BKD student")):
        ratio = ratios.get(loop, {}).get(RESIDENT)
        measured = "not measured"
        if ratio is not None:
            in_loop = statistics.median(rates[loop][RESIDENT])
            pure = statistics.median(rates[loop]["pure step"])
            measured = f"{ratio:.2f} ({in_loop:,.0f} vs {pure:,.0f} images/s)"
        out.append(
            {
                "name": f"in-loop >= {LOOP_OVER_PURE:.0%} of the pure step, {label} loop",
                "measured": measured,
                "met": None if ratio is None else ratio >= LOOP_OVER_PURE,
            }
        )
    job = result["runs"].get("main_f32")
    wall = job and job["process_s"]
    complete = bool(job) and all(job["stages"][s].get("complete") for s in ("teacher", "student"))
    if not job or wall is None:
        measured, met = "not measured", None
    elif not complete:
        measured, met = f"not finished in {wall:.0f} s (cut at the phase's limit)", False
    else:
        measured, met = f"{wall:.0f} s ({wall / 60:.1f} min)", wall <= MAIN_JOB_S
    out.append(
        {
            "name": f"whole main job <= {MAIN_JOB_S / 60:.0f} min on one H100/H200, excluding "
            "one-off data prep",
            "measured": measured,
            "met": met,
        }
    )
    teacher = job["stages"]["teacher"] if job else {}
    final = teacher.get("final")
    if final and teacher.get("complete"):
        top1 = 100 * final["top1"]
        measured = f"{top1:.2f} ({top1 - CE_TOP1:+.2f})"
        met = abs(top1 - CE_TOP1) <= CE_TOP1_TOLERANCE
    else:
        measured, met = "not measured (teacher not finished)", None
    out.append(
        {
            "name": f"CE teacher final top-1 within {CE_TOP1_TOLERANCE:g} point of {CE_TOP1}",
            "measured": measured,
            "met": met,
        }
    )
    return out


# ---------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------


def _f(x, fmt: str = ".0f", none: str = "n/a") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _verdict(met) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def markdown(result: dict) -> str:
    env, settings = result["env"], result["settings"]
    gpu = env.get("gpu_name") or env.get("jax_device_kind") or "unknown device"
    tiny = settings.get("tiny")
    lines = [f"# The main job on one {gpu}", ""]
    if tiny:
        lines += [
            f"**TINY smoke run (`TINY=1`) on {gpu}: a few steps per phase to check the script. "
            "These numbers are not results and the targets below mean nothing here.**",
            "",
        ]
    lines += [
        f"Measured {env.get('date', 'n/a')} by `scripts/gpu_check.sh` (docs/gpu.md) at commit "
        f"`{env.get('commit', 'unknown')}`. CIFAR-100-LT IF100 (the 10,847-image LDAM/BKD "
        "subset, `.gpu/cifar100-lt100.zip`), ResNet-32 teacher and student, batch 128, "
        "evaluation every epoch, checkpoints on.",
        "",
        "## Environment",
        "",
        "| GPU | driver | CUDA | JAX / jaxlib | JAX CUDA plugin | PyTorch (CUDA, cuDNN) | "
        "flax / optax / orbax | Python | CPUs |",
        "|---|---|---|---|---|---|---|---|---|",
        "| {} | {} | {} | {} / {} | {} | {} | {} / {} / {} | {} | {} |".format(
            f"{gpu} ({env['gpu_memory']})" if env.get("gpu_memory") else gpu,
            env.get("driver") or "n/a",
            env.get("cuda") or "n/a",
            env.get("jax") or "n/a",
            env.get("jaxlib") or "n/a",
            env.get("jax_cuda_plugin") or "n/a",
            env.get("torch") or "n/a",
            env.get("flax") or "n/a",
            env.get("optax") or "n/a",
            env.get("orbax-checkpoint") or "n/a",
            env.get("python") or "n/a",
            env.get("cpus") or "n/a",
        ),
        "",
        "## Targets (issue 26)",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        *[f"| {t['name']} | {t['measured']} | {_verdict(t['met'])} |" for t in result["targets"]],
        "",
    ]
    lines += _bench_lines(result.get("bench"))
    lines += _main_lines(result["runs"])
    if result.get("profile"):
        lines += ["## Profile", "", result["profile"], ""]
    lines += [
        "## Phases",
        "",
        "| phase | seconds | limit s | exit | command |",
        "|---|---|---|---|---|",
    ]
    for p in result["phases"]:
        exit_text = f"{p['rc']}" + (" (timed out)" if p.get("timed_out") else "")
        lines.append(
            f"| {p['name']} | {_f(p.get('seconds'))} | {_f(p.get('limit_s'))} | {exit_text} | "
            f"`{p.get('command', '')}` |"
        )
    lines.append("")
    return "\n".join(lines)


def _bench_lines(bench: dict | None) -> list[str]:
    head = ["## Pure step, in-loop and PyTorch (`scripts/benchmark.py --loop`)", ""]
    if not bench:
        return [*head, "Not measured (the bench phase did not finish).", ""]
    torch = bench.get("torch") or {}
    util = bench.get("gpu_util") or {}
    lines = [
        *head,
        f"Batch {bench['batch']}, {bench['model']}; loops: epoch 2 of 2 x {bench['loop_steps']} "
        f"steps timed, pure step: {bench['pure_steps']} back-to-back steps; median of "
        f"{bench['repeats']} repeats. PyTorch: "
        + (f"{torch['version']} on {torch['device']}" if torch else "not run")
        + ". GPU utilisation over the phase (mean of 1-s samples): "
        + (f"{util['mean']:.0f}%." if util.get("mean") is not None else "not sampled."),
        "",
        "| loop | variant | images/s (median) | spread | loop / pure | x PyTorch |",
        "|---|---|---|---|---|---|",
    ]
    for loop, label in (("ce", "CE teacher"), ("bkd", "BKD student")):
        rates = bench["images_per_sec"].get(loop, {})
        torch_rates = rates.get("pytorch")
        for name, r in rates.items():
            ratio = bench["loop_over_pure"].get(loop, {}).get(name)
            x_torch = (
                statistics.median(r) / statistics.median(torch_rates)
                if torch_rates and name not in ("pytorch", "pure step")
                else None
            )
            lines.append(
                f"| {label} | {name} | {statistics.median(r):,.0f} | {min(r):,.0f}-{max(r):,.0f} "
                f"| {_f(ratio, '.2f', '')} | {_f(x_torch, '.2f', '')} |"
            )
    return [*lines, ""]


def _main_lines(runs: dict) -> list[str]:
    lines = ["## The main job (`python -m ltkd_jax.main --config configs/bkd_cifar.py`)", ""]
    if not runs:
        return [*lines, "Not run.", ""]
    lines += [
        "Wall times from `run.log`: the teacher stage runs from its `stage 1` line to the "
        "`stage 2` line (data loading, compile, the epochs, an evaluation after each, "
        "checkpoints), the student from there to the first report; 'process' is the whole "
        "command, data prep excluded (done before, once). images/s (stage) = images trained / "
        "stage wall; in-loop = the trainer's logged rate over epochs 2+ (median). GPU "
        "utilisation: mean of `nvidia-smi` 1-s samples in the stage.",
        "",
        "| dtype | stage | wall s | epochs | images/s (stage) | images/s in loop | GPU util % "
        "| top-1 | many | medium | few | best top-1 (epoch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for job in runs.values():
        for name in ("teacher", "student"):
            s = job["stages"][name]
            final = s.get("final") or {}
            epochs = f"{s.get('epochs_done', 0)}/{_f(s.get('epochs_planned'))}"
            util = s.get("gpu_util") or {}
            best = f"{_pct(s.get('best_top1'))} ({_f(s.get('best_epoch'))})"
            lines.append(
                f"| {job['dtype']} | {name} | {_f(s['seconds'])} | {epochs} | "
                f"{_f(s.get('stage_images_per_s'), ',.0f')} | "
                f"{_f(s.get('in_loop_images_per_s'), ',.0f')} | {_f(util.get('mean'))} | "
                f"{_pct(final.get('top1'))} | {_pct(final.get('many'))} | "
                f"{_pct(final.get('medium'))} | {_pct(final.get('few'))} | {best} |"
            )
        reports = job["stages"]["reports"]["seconds"]
        util = job.get("gpu_util") or {}
        cut = " (timed out)" if job.get("timed_out") else ""
        lines.append(
            f"| {job['dtype']} | whole process{cut} | {_f(job['process_s'])} | | | | "
            f"{_f(util.get('mean'))} | | | | | reports after training: {_f(reports)} s |"
        )
    lines += ["", "Commands:", "", "```bash"]
    lines += [job["command"] for job in runs.values() if job.get("command")]
    return [*lines, "```", ""]


# ---------------------------------------------------------------------------------------
# Device-side helpers
# ---------------------------------------------------------------------------------------


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(commit: str) -> dict:
    """GPU, driver, CUDA, library versions and the commit (what is there; n/a otherwise)."""
    import platform

    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
    }
    env["gpu_name"] = None
    fields = ("name", "driver_version", "memory.total", "compute_cap")
    for keep in (4, 3):  # an older driver may not know compute_cap
        try:
            done = subprocess.run(
                ["nvidia-smi", f"--query-gpu={','.join(fields[:keep])}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            cells = [c.strip() for c in done.stdout.splitlines()[0].split(",")]
            keys = ("gpu_name", "driver", "gpu_memory", "compute_cap")
            env.update(zip(keys[:keep], cells, strict=True))
            header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
            m = re.search(r"CUDA Version:\s*([\d.]+)", header.stdout)
            env["cuda"] = m.group(1) + " (driver)" if m else None
            break
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            continue
    for name in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax-checkpoint",
        "grain",
        "tensorflow-datasets",
        "numpy",
    ):
        env[name] = _version(name)
    plugins = [p for p in ("jax-cuda13-plugin", "jax-cuda12-plugin") if _version(p)]
    env["jax_cuda_plugin"] = ", ".join(f"{p} {_version(p)}" for p in plugins) or None
    try:
        import jax

        device = jax.devices()[0]
        env.update(
            jax_backend=jax.default_backend(),
            jax_device_kind=device.device_kind,
            jax_devices=jax.device_count(),
        )
    except Exception as e:  # noqa: BLE001 - recorded, the check goes on
        env["jax_error"] = f"{type(e).__name__}: {e}"
    try:
        import torch

        cuda = torch.version.cuda if torch.cuda.is_available() else None
        cudnn = torch.backends.cudnn.version() if cuda else None
        env["torch"] = f"{torch.__version__} (CUDA {cuda or 'n/a'}, cuDNN {cudnn or 'n/a'})"
    except ImportError:
        env["torch"] = None
    return env


def record_phase(args) -> None:
    rc = int(args.rc)
    row = {
        "name": args.name,
        "command": args.command_text or " ".join(args.command),
        "start": float(args.start),
        "end": float(args.end),
        "seconds": float(args.end) - float(args.start),
        "start_local": args.start_local,
        "end_local": args.end_local,
        "rc": rc,
        "limit_s": float(args.limit),
        "timed_out": rc in (124, 137),
    }
    with open(args.file, "a") as f:
        f.write(json.dumps(row) + "\n")


def profile(trace_dir: str, main_args: list[str]) -> int:
    """`python -m ltkd_jax.main MAIN_ARGS` with a jax.profiler trace of its second epoch.

    The trace starts when the first test record is written (the end of epoch 1: compile,
    data loading and warm-up stay out) and stops at the second, so run it with
    `--config.num_epochs=2 --config.eval_every_epochs=1`. No Python tracer: the trace holds
    the device kernels and JAX's host events. Where the writer cannot be hooked (a renamed
    module), the whole run is traced.
    """
    import runpy

    import jax

    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    options.enable_hlo_proto = False
    state = {"tests": 0, "tracing": False}

    def start():
        jax.profiler.start_trace(trace_dir, profiler_options=options)
        state["tracing"] = True

    def stop():
        if state["tracing"]:
            jax.profiler.stop_trace()
            state["tracing"] = False

    try:
        from ltkd_jax import writers

        original = writers.MetricWriter.write_scalars

        def write_scalars(self, step, scalars, *args, **kwargs):
            original(self, step, scalars, *args, **kwargs)
            if kwargs.get("split") == "test":
                state["tests"] += 1
                if state["tests"] == 1:
                    start()
                elif state["tests"] == 2:
                    stop()

        writers.MetricWriter.write_scalars = write_scalars
    except (ImportError, AttributeError):
        print("profile: no ltkd_jax.writers.MetricWriter to hook; tracing the whole run")
        start()
    code = 0
    try:
        sys.argv = ["ltkd_jax.main", *main_args]
        runpy.run_module("ltkd_jax.main", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        stop()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("report", help="write the Markdown report (and --json)")
    p.add_argument("source", help="the check's folder, its OUT folder or gpu_check.tar.gz")
    p.add_argument("--md", default="", help="Markdown output; empty = print it")
    p.add_argument("--json", default="", help="also write the numbers here")
    p = sub.add_parser("check", help="exit 1 if a target is missed (or not measured)")
    p.add_argument("source")
    p = sub.add_parser("env", help="write env.json")
    p.add_argument("--out", required=True)
    p.add_argument("--commit", default="unknown")
    p = sub.add_parser("phase", help="append one phase to phases.jsonl")
    for name in ("file", "name", "start", "end", "start_local", "end_local", "rc", "limit"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--command_text", default="")
    p.add_argument("command", nargs="*")
    p = sub.add_parser("profile", help="run ltkd_jax.main under the JAX profiler")
    p.add_argument("trace_dir")
    p.add_argument("main_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.verb == "env":
        with open(args.out, "w") as f:
            json.dump(environment(args.commit), f, indent=1)
        return 0
    if args.verb == "phase":
        record_phase(args)
        return 0
    if args.verb == "profile":
        rest = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
        return profile(args.trace_dir, rest)
    with open_stage(args.source) as stage:
        result = collect(stage)
    if args.verb == "check":
        missed = [t for t in result["targets"] if t["met"] is not True]
        for t in missed:
            print(f"{_verdict(t['met'])}: {t['name']}: {t['measured']}")
        return 1 if missed else 0
    text = markdown(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, "w") as f:
            f.write(text)
        print(f"wrote {args.md}" + (f" and {args.json}" if args.json else ""))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
