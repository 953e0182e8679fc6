"""The results tables across device windows (issue 27; docs/gpu.md#tables).

    # on the GPU machine, around one scripts/reproduce.py call (scripts/gpu_tables.sh):
    python scripts/gpu_tables.py prepare --table=T --seeds=0 --root=results/runs --set_aside=DIR
    python scripts/gpu_tables.py pack --table=T --seeds=0 --root=results/runs --set_aside=DIR \
        --since=EPOCH_S --out=$OUT --reproduce_args='...'
    # here, on the files that came back:
    python scripts/gpu_tables.py import OUT_FOLDER [--repo=.]

A device window starts on a fresh machine with the committed tree: finished runs are in
`results/runs/<table>/seed<S>/<row>/` (their small files, no checkpoints), so reproduce.py
skips them, but a finished teacher there has no checkpoint for its students. `prepare` sets
such a teacher aside when a row of its seed is still to train, so reproduce.py trains it
again (same seed and recipe); `pack` compares the retrained teacher with the committed one
(the students of this window distil from the retrained one) and packs the small files of
every run trained in this window (`runs.tar.gz`) with `window.json` and the log into OUT.
`import` copies the finished runs into `results/runs/...` (metrics.jsonl gzipped,
byte-identical), adds the teacher comparison to the committed teacher's `retrains.jsonl`, and
rewrites `results/<table>.md/.json/.png` with `reproduce.py --collect_only` and the same
arguments the window used. Runs cut by the window's end are not imported: the next window
trains them from the start.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKED = (  # the small files of a run that come back from a window
    "metrics.jsonl",
    "summary.json",
    "config.json",
    "task.json",
    "reproduce.json",
    "reproduce_attempts.jsonl",
    "invocations.jsonl",
    "run.log",
)
KEPT = (
    "summary.json",
    "config.json",
    "task.json",
    "reproduce.json",
    "reproduce_attempts.jsonl",
    "invocations.jsonl",
)  # committed as they are; metrics.jsonl as metrics.jsonl.gz
RETRAINS = "retrains.jsonl"


def load_reproduce():
    """scripts/reproduce.py as a module (its flags are defined only under __main__)."""
    if "reproduce" in sys.modules:
        return sys.modules["reproduce"]
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def table_dir(root: str, table: str, short: bool) -> pathlib.Path:
    return pathlib.Path(root) / (table + ("_short" if short else ""))


def last_test(records: list[dict]) -> dict | None:
    tests = [r for r in records if r.get("split") == "test" and "top1" in r]
    return tests[-1] if tests else None


def finished(run_dir: pathlib.Path) -> bool:
    """A run folder whose metrics reach its config's last epoch (post-hoc: the tau grid)."""
    rp = load_reproduce()
    config_path = run_dir / "config.json"
    if not config_path.exists():
        return False
    config = json.loads(config_path.read_text())
    records = rp.read_metrics(str(run_dir))
    tests = [r for r in records if r.get("split") == "test"]
    if config.get("method") in ("tau_norm", "posthoc_la"):
        return len([r for r in tests if "tau" in r]) >= rp.tables.TAU_GRID_SIZE
    return any(r.get("epoch") == config.get("num_epochs") for r in tests)


def has_checkpoint(run_dir: pathlib.Path) -> bool:
    ckpt = run_dir / "checkpoints"
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


# ---------------------------------------------------------------------------------------
# On the device
# ---------------------------------------------------------------------------------------


def prepare(
    table: str, seeds: list[int], root: str, set_aside: str, *, short: bool, only: list[str]
) -> list[str]:
    """Moves each seed's finished, checkpoint-less teacher to `set_aside` when a selected row
    of that seed is unfinished; returns the moved folders."""
    rp = load_reproduce()
    t = rp.tables.TABLES[table]
    moved = []
    for seed in seeds:
        seed_dir = table_dir(root, table, short) / f"seed{seed}"
        teacher = seed_dir / t.teacher.key
        rows = [r.key for r in t.rows if not only or r.key in only]
        pending = [k for k in rows if not finished(seed_dir / k)]
        if not pending or not finished(teacher) or has_checkpoint(teacher):
            continue
        dest = pathlib.Path(set_aside) / teacher.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(teacher), str(dest))
        moved.append(str(teacher))
        print(f"set aside {teacher} (finished, no checkpoint; rows to train: {pending})")
    return moved


def compare_teachers(committed: pathlib.Path, retrained: pathlib.Path) -> dict:
    """Is the retrained teacher the committed one? (every test record's accuracies equal)"""
    rp = load_reproduce()
    old = [r for r in rp.read_metrics(str(committed)) if r.get("split") == "test"]
    new = [r for r in rp.read_metrics(str(retrained)) if r.get("split") == "test"]
    keys = ("epoch", "top1", "many", "medium", "few", "per_class_acc")
    same = len(old) == len(new) and all(
        all(a.get(k) == b.get(k) for k in keys) for a, b in zip(old, new, strict=False)
    )
    final_old, final_new = last_test(old), last_test(new)
    return {
        "committed_final_top1": final_old and final_old["top1"],
        "retrained_final_top1": final_new and final_new["top1"],
        "retrained_epochs": final_new and final_new.get("epoch"),
        "retrained_finished": finished(retrained),
        "identical_test_records": same,
    }


def trained_since(run_dir: pathlib.Path, since: float) -> bool:
    path = run_dir / load_reproduce().ATTEMPTS
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "start" and event["time"] >= since:
            return True
    return False


def pack(
    table: str,
    seeds: list[int],
    root: str,
    set_aside: str,
    *,
    short: bool,
    since: float,
    out: str,
    reproduce_args: str,
    log: str,
    commit: str,
) -> dict:
    """OUT/runs.tar.gz (the small files of the runs trained since `since`), OUT/window.json."""
    rp = load_reproduce()
    t = rp.tables.TABLES[table]
    base = table_dir(root, table, short)
    os.makedirs(out, exist_ok=True)
    runs, teachers = [], []
    with tarfile.open(os.path.join(out, "runs.tar.gz"), "w:gz") as tar:
        for seed in seeds:
            for row in t.all_rows:
                run_dir = base / f"seed{seed}" / row.key
                if not trained_since(run_dir, since):
                    continue
                for name in PACKED:
                    if (run_dir / name).exists():
                        tar.add(run_dir / name, arcname=str((run_dir / name).relative_to(root)))
                runs.append({"run": str(run_dir), "finished": finished(run_dir)})
            aside = pathlib.Path(set_aside) / base.relative_to(root) / f"seed{seed}" / t.teacher.key
            if aside.is_dir():
                retrained = base / f"seed{seed}" / t.teacher.key
                teachers.append({"seed": seed, **compare_teachers(aside, retrained)})
    window = {
        "table": table,
        "seeds": seeds,
        "short": short,
        "root": root,
        "reproduce_args": reproduce_args,
        "commit": commit,
        "since": since,
        "packed_at": time.time(),
        "runs": runs,
        "teacher_retrains": teachers,
    }
    with open(os.path.join(out, "window.json"), "w") as f:
        json.dump(window, f, indent=1)
    if log and os.path.exists(log):
        shutil.copy(log, os.path.join(out, "reproduce.log"))
    done = [r["run"] for r in runs if r["finished"]]
    cut = [r["run"] for r in runs if not r["finished"]]
    print(
        f"packed {len(runs)} runs into {out}/runs.tar.gz: finished {done or '-'}, cut {cut or '-'}"
    )
    for teacher in teachers:
        print(f"teacher retrain, seed {teacher['seed']}: {teacher}")
    return window


# ---------------------------------------------------------------------------------------
# Here: import a window's files
# ---------------------------------------------------------------------------------------


def import_window(source: str, repo: str, *, collect: bool = True) -> dict:
    """Copies the window's finished runs into REPO/ROOT and rewrites the table files."""
    src = pathlib.Path(source)
    window = json.loads((src / "window.json").read_text())
    root = pathlib.Path(repo) / window["root"]
    imported, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(src / "runs.tar.gz") as tar:
            tar.extractall(tmp, filter="data")
        for entry in window["runs"]:
            rel = pathlib.Path(entry["run"]).relative_to(window["root"])
            run_src, run_dst = pathlib.Path(tmp) / rel, root / rel
            if not finished(run_src):
                skipped.append(f"{rel} (cut: trained again by the next window)")
            elif (run_dst / "config.json").exists():
                skipped.append(f"{rel} (already in {root}: kept)")
            else:
                copy_run(run_src, run_dst)
                imported.append(str(rel))
    base = table_dir(str(root), window["table"], window["short"])
    for teacher in window["teacher_retrains"]:
        seed_teacher = (
            base
            / f"seed{teacher['seed']}"
            / load_reproduce().tables.TABLES[window["table"]].teacher.key
        )
        if seed_teacher.is_dir():
            record = {"commit": window["commit"], "packed_at": window["packed_at"], **teacher}
            with open(seed_teacher / RETRAINS, "a") as f:
                f.write(json.dumps(record) + "\n")
            if not teacher["identical_test_records"]:
                print(
                    f"NOTE: seed {teacher['seed']}'s retrained teacher differs from the committed "
                    f"one (final top-1 {teacher['retrained_final_top1']} vs "
                    f"{teacher['committed_final_top1']}): this window's students distilled from "
                    "the retrained one"
                )
    for line in imported:
        print(f"imported {line}")
    for line in skipped:
        print(f"not imported: {line}")
    if collect:
        regenerate(window, repo)
    return {"imported": imported, "skipped": skipped}


def copy_run(src: pathlib.Path, dst: pathlib.Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    with open(src / "metrics.jsonl", "rb") as f, gzip.open(dst / "metrics.jsonl.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    shutil.copystat(src / "metrics.jsonl", dst / "metrics.jsonl.gz")  # its mtime ends a cut attempt


def regenerate(window: dict, repo: str) -> None:
    """`reproduce.py --collect_only` with the window's arguments, every seed on disk."""
    base = table_dir(str(pathlib.Path(repo) / window["root"]), window["table"], window["short"])
    seeds = sorted(int(p.name[4:]) for p in base.glob("seed*") if p.name[4:].isdigit())
    args = [a for a in shlex.split(window["reproduce_args"]) if not a.startswith("--seeds")]
    args = [a for a in args if not a.startswith(("--deadline_s", "--only", "--priority", "--out"))]
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "reproduce.py"),
        *args,
        "--seeds=" + ",".join(map(str, seeds)),
        "--collect_only",
        "--out=results",
    ]
    print("collecting:", " ".join(shlex.quote(c) for c in cmd))
    subprocess.run(cmd, cwd=repo, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("prepare", "pack"):
        p = sub.add_parser(verb)
        p.add_argument("--table", required=True)
        p.add_argument("--seeds", default="0")
        p.add_argument("--root", default="results/runs")
        p.add_argument("--set_aside", required=True)
        p.add_argument("--short", action="store_true")
        if verb == "prepare":
            p.add_argument("--only", default="")
        else:
            p.add_argument("--since", type=float, required=True)
            p.add_argument("--out", required=True)
            p.add_argument("--reproduce_args", default="")
            p.add_argument("--log", default="")
            p.add_argument("--commit", default="unknown")
    p = sub.add_parser("import")
    p.add_argument("source", help="the window's OUT folder (runs.tar.gz + window.json)")
    p.add_argument("--repo", default=".", help="the checkout to import into")
    p.add_argument("--no_collect", action="store_true", help="do not rewrite the table")
    args = parser.parse_args(argv)
    if args.verb == "import":
        import_window(args.source, args.repo, collect=not args.no_collect)
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.verb == "prepare":
        only = [k for k in args.only.split(",") if k]
        prepare(args.table, seeds, args.root, args.set_aside, short=args.short, only=only)
    else:
        pack(
            args.table,
            seeds,
            args.root,
            args.set_aside,
            short=args.short,
            since=args.since,
            out=args.out,
            reproduce_args=args.reproduce_args,
            log=args.log,
            commit=args.commit,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
