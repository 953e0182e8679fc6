"""Compare methods on any dataset with one recipe and one teacher: a Markdown table and a
per-class plot.

    python scripts/compare.py --config configs/ce_folder.py:root=/path/to/mydata,size=64 \
        --methods=kd,bkd,dkd,ltkd --root=runs/compare_mydata --out=results/compare_mydata

`--config` is the main job's: a config file with its argument, and `--config.<field>=v`
overrides (e.g. `--config.num_epochs=2 --config.max_steps_per_epoch=20` for a short CPU
schedule). Every method trains with that recipe (data, models, schedule) and the part of the
recipe it declares itself (loss, sampler, head: recipes.with_method), in `ROOT/<method>`; a
finished run is only read, an interrupted one resumes. `--recipe` names the official recipe
`--config` follows (bkd, mdistiller), so methods take their official settings for it (e.g.
the BKD repository's class-weighted KD); empty: each method's defaults. The teacher is
`--teacher_workdir`, else the config's teacher.workdir, else one CE teacher trained with the
recipe into `ROOT/teacher`. CIFAR-100-LT, as in the README:

    python scripts/compare.py --config configs/ce_cifar.py --recipe=bkd \
        --teacher_workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip --methods=kd,bkd,dukd,ltkd,dkd

Writes `OUT.md` (top-1, mean per-class accuracy, many / medium / few, final and best
epoch, teacher included; the caption says whether the test split is balanced and which
split chose "best") and `OUT.png` (per-class test accuracy against the class's training
size, head to tail).
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ltkd_jax.config import defaults, recipes
from ltkd_jax.runs import finished, job
from ltkd_jax.runs import teachers as teacher_stage
from ltkd_jax.runs.summary import summarize_run
from ltkd_jax.training import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The recipe: a config file (with its argument), as for ltkd_jax.main."
)
_TEACHER = flags.DEFINE_string(
    "teacher_workdir", "", "A finished teacher run; empty: config.teacher.workdir, else train one."
)
_METHODS = flags.DEFINE_list("methods", ["kd", "bkd"], "Methods (ltkd_jax/methods/) to compare.")
_RECIPE = flags.DEFINE_string(
    "recipe", "", "The official recipe --config follows (bkd, mdistiller); empty: none."
)
_ROOT = flags.DEFINE_string("root", "runs/compare", "Where the student runs live.")
_OUT = flags.DEFINE_string("out", "results/compare", "Output prefix for .md and .png.")
_COLLECT = flags.DEFINE_bool("collect_only", False, "Only read finished runs; train nothing.")
flags.mark_flags_as_required(["config"])

# Above this largest / smallest class ratio the caption calls the test split imbalanced.
IMBALANCED_TEST_RATIO = 1.5


def method_config(recipe, method: str, teacher_dir: str, recipe_name: str = ""):
    """The recipe running `method` (`recipes.with_method`); the recipe's own method as it is."""
    if method == recipe.method:
        config = ml_collections.ConfigDict(recipe.to_dict())
    else:
        config = recipes.with_method(recipe, method, recipe_name)
    config.teacher.workdir = teacher_dir
    return defaults.lock(config)


def markdown_table(rows: list[tuple[str, dict]], caption: str) -> str:
    def pct(x):
        return "n/a" if x is None or x != x else f"{100 * x:.2f}"

    lines = [
        caption,
        "",
        "| run | top-1 | mean-class | many | medium | few | best top-1 | best epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, summary in rows:
        final, best = summary["final"], summary["best"]
        lines.append(
            f"| {name} | {pct(final['top1'])} | {pct(final.get('mean_class_acc'))} "
            f"| {pct(final['many'])} | {pct(final['medium'])} | {pct(final['few'])} "
            f"| {pct(best['top1'])} | {best['epoch']} |"
        )
    return "\n".join(lines) + "\n"


def caption_for(teacher_config, task: dict, teacher_dir: str, summary: dict) -> str:
    """What the numbers are: data, classes, test balance, shot thresholds, "best" split."""
    d = teacher_config.data
    where = f" ({d.archive})" if d.name == "folder" and d.archive else ""
    text = (
        f"Students distilled from the {teacher_config.model.name} teacher in {teacher_dir} "
        f"({teacher_config.num_epochs} epochs, {task['dataset']}{where}, imbalance factor "
        f"{d.imbalance_factor:g}, {len(task['class_counts'])} classes). "
    )
    ratio = summary["final"].get("test_imbalance")
    if ratio is None:
        text += "Accuracy % on the test split"
    elif ratio > IMBALANCED_TEST_RATIO:
        text += (
            f"Accuracy % on an imbalanced test split (largest class {ratio:.1f}x the smallest: "
            "top-1 favours the head; mean-class is the balanced metric)"
        )
    else:
        text += "Accuracy % on a balanced test split"
    chosen = "val" if summary.get("selected_on") == "val" else "test"
    text += f": final epoch, and the top-1 of the best epoch (chosen on {chosen})."
    if "shot_thresholds" in task:
        t = task["shot_thresholds"]
        text += f" Shot groups: many > {t['many']}, few < {t['few']} training images"
        text += " (derived from the class counts)." if t.get("derived") else "."
    return text


def plot_per_class(
    rows: list[tuple[str, dict]],
    class_counts: np.ndarray,
    path: str,
    class_names: list[str] | None = None,
) -> None:
    """Per-class test accuracy (running mean) of every run, head to tail, over the training
    counts; classes are labelled by name when there are at most 40."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-class_counts, kind="stable")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    window = max(1, len(order) // 20)  # a running mean keeps the lines readable
    for name, summary in rows:
        # None (a class without test images) -> NaN, left out of the running mean.
        acc = np.asarray(summary["final"]["per_class_acc"], dtype=float)[order]
        kernel = np.ones(window)
        valid = np.isfinite(acc)
        # Divide by the number of classes inside the window, so the ends are not pulled to 0.
        smooth = np.convolve(np.where(valid, acc, 0), kernel, mode="same") / np.maximum(
            np.convolve(valid.astype(float), kernel, mode="same"), 1
        )
        ax.plot(np.arange(len(order)), 100 * smooth, label=name, lw=2 if name == "teacher" else 1)
    ax.set_xlabel("class, by training count (head -> tail)")
    ax.set_ylabel(f"test accuracy % (running mean of {window})")
    if class_names and len(order) <= 40:
        ax.set_xticks(np.arange(len(order)))
        ax.set_xticklabels([class_names[i] for i in order], rotation=90, fontsize=7)
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
    recipe = _CONFIG.value
    teacher_dir = _TEACHER.value or recipe.teacher.workdir or os.path.join(_ROOT.value, "teacher")
    if not _COLLECT.value and not (_TEACHER.value or recipe.teacher.workdir):
        trainer.train_and_evaluate(teacher_stage.teacher_config(recipe, 0), teacher_dir)
    rows = [("teacher", summarize_run(teacher_dir))]
    for method in _METHODS.value:
        workdir = os.path.join(_ROOT.value, method)
        if not _COLLECT.value:
            config = method_config(recipe, method, teacher_dir, _RECIPE.value)
            job.check(config, workdir)
            job.run(config, workdir)
        rows.append((method, summarize_run(workdir)))
    teacher_config, task = finished.read_run_info(teacher_dir)
    caption = caption_for(teacher_config, task, teacher_dir, rows[-1][1])
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    table = markdown_table(rows, caption)
    with open(_OUT.value + ".md", "w") as f:
        f.write(table)
    counts = np.asarray(task["class_counts"])
    plot_per_class(rows, counts, _OUT.value + ".png", task.get("class_names"))
    print(table)
    print(f"wrote {_OUT.value}.md and {_OUT.value}.png")


if __name__ == "__main__":
    app.run(main)
