"""Compare distillation methods on one teacher: a Markdown table and a per-class plot.

    python scripts/compare.py --teacher_workdir=runs/bkd_c100/teacher \
        --methods=kd,bkd,dukd,krdistill,ltkd,dkd --root=runs/compare \
        --set=data.archive=../shared/data/cifar100-png.zip --out=results/compare

Each method runs from `configs/<method>_cifar.py` with the teacher fixed, in
`ROOT/<method>` (a finished run is only read, an interrupted one resumes). `--set k=v`
overrides config fields for every run (a short CPU schedule: `--set num_epochs=2
--set max_steps_per_epoch=20`); the table's caption states the overrides. Writes
`OUT.md` (top-1 and many / medium / few, final and best epoch, teacher included) and
`OUT.png` (per-class test accuracy against the class's training size).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np
from absl import app, flags

from ltkd_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]

_TEACHER = flags.DEFINE_string("teacher_workdir", None, "A finished teacher run.", required=True)
_METHODS = flags.DEFINE_list("methods", ["kd", "bkd"], "Methods: configs/<method>_cifar.py.")
_ROOT = flags.DEFINE_string("root", "runs/compare", "Where the student runs live.")
_SET = flags.DEFINE_multi_string("set", [], "Config overrides key=value for every run.")
_CONFIG_ARG = flags.DEFINE_string("config_arg", "", "The configs' argument, e.g. dataset=cifar10.")
_OUT = flags.DEFINE_string("out", "results/compare", "Output prefix for .md and .png.")
_COLLECT = flags.DEFINE_bool("collect_only", False, "Only read finished runs; train nothing.")


def load_config(method: str, arg: str):
    path = REPO / "configs" / f"{method}_cifar.py"
    if not path.exists():
        raise ValueError(f"no config for method {method!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"config_{method}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply_overrides(config, overrides: list[str]):
    """`a.b=v` strings, each value converted to the type the field already has."""
    for item in overrides:
        key, _, value = item.partition("=")
        *path, field = key.split(".")
        node = config
        for part in path:
            node = node[part]
        current = node[field]
        if isinstance(current, bool):
            node[field] = value.lower() in ("1", "true", "yes")
        elif current is None or isinstance(current, str):
            node[field] = value
        else:
            node[field] = type(current)(value)
    return config


def markdown_table(rows: list[tuple[str, dict]], caption: str) -> str:
    def pct(x):
        return "n/a" if x is None or x != x else f"{100 * x:.2f}"

    lines = [
        caption,
        "",
        "| run | top-1 | many | medium | few | best top-1 | best epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, summary in rows:
        final, best = summary["final"], summary["best"]
        lines.append(
            f"| {name} | {pct(final['top1'])} | {pct(final['many'])} | {pct(final['medium'])} "
            f"| {pct(final['few'])} | {pct(best['top1'])} | {best['epoch']} |"
        )
    return "\n".join(lines) + "\n"


def plot_per_class(rows: list[tuple[str, dict]], class_counts: np.ndarray, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-class_counts, kind="stable")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    window = max(1, len(order) // 20)  # a running mean keeps the lines readable
    for name, summary in rows:
        acc = np.asarray(summary["final"]["per_class_acc"])[order]
        kernel = np.ones(window)
        # Divide by the number of classes inside the window, so the ends are not pulled to 0.
        smooth = np.convolve(acc, kernel, mode="same") / np.convolve(
            np.ones_like(acc), kernel, mode="same"
        )
        ax.plot(np.arange(len(order)), 100 * smooth, label=name, lw=2 if name == "teacher" else 1)
    ax.set_xlabel("class, by training count (head -> tail)")
    ax.set_ylabel(f"test accuracy % (running mean of {window})")
    twin = ax.twinx()
    twin.bar(np.arange(len(order)), class_counts[order], color="0.85", zorder=0)
    twin.set_yscale("log")
    twin.set_ylabel("training images (bars)")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    teacher_dir = _TEACHER.value
    rows = [("teacher", train.summarize_run(teacher_dir))]
    for method in _METHODS.value:
        workdir = os.path.join(_ROOT.value, method)
        if not _COLLECT.value:
            config = apply_overrides(load_config(method, _CONFIG_ARG.value), _SET.value)
            config.teacher.workdir = teacher_dir
            train.run(config, workdir)
        rows.append((method, train.summarize_run(workdir)))
    teacher_config, task = train.read_run_info(teacher_dir)
    caption = (
        f"Students distilled from the {teacher_config.model.name} teacher in {teacher_dir} "
        f"({teacher_config.num_epochs} epochs, {task['dataset']}-LT IF "
        f"{teacher_config.data.imbalance_factor:g}, {len(task['class_counts'])} classes). "
        "Accuracy % on the balanced test split: final epoch, and the best epoch's top-1."
    )
    if _SET.value:
        caption += " Schedule overrides for every run: " + ", ".join(_SET.value) + "."
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    table = markdown_table(rows, caption)
    with open(_OUT.value + ".md", "w") as f:
        f.write(table)
    plot_per_class(rows, np.asarray(task["class_counts"]), _OUT.value + ".png")
    print(table)
    print(f"wrote {_OUT.value}.md and {_OUT.value}.png")


if __name__ == "__main__":
    app.run(main)
