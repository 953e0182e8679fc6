"""Compare methods on any dataset with one recipe and one teacher: a Markdown table and a
per-class plot.

    python scripts/compare.py --config configs/ce_folder.py:root=/path/to/mydata,size=64 \
        --methods=kd,bkd,dkd,ltkd --root=runs/compare_mydata

`--config` is the main job's: a config file with its argument, and `--config.<field>=v`
overrides (e.g. `--config.num_epochs=2 --config.max_steps_per_epoch=20` for a short CPU
schedule). Every method trains with that recipe (data, models, schedule) and the part of the
recipe it declares itself (loss, sampler, head: recipes.with_method), in `ROOT/<method>`, as
`python -m ltkd_jax.main` runs it (`cli.run_job`: lock, run.log, summary.json, report); a
finished run is only read, an interrupted one resumes. `--recipe` names the official recipe
`--config` follows (bkd, mdistiller), so methods take their official settings for it (e.g.
the BKD repository's class-weighted KD); empty: each method's defaults. The teacher is
`--teacher_workdir`, else the config's teacher.workdir, else one CE teacher trained with the
recipe into `ROOT/teacher`. Every method's config, the teacher run and the data are checked before
anything trains; a mistake is one line and exit 2. CIFAR-100-LT, as in the README:

    python scripts/compare.py --config configs/ce_cifar.py --teacher_workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip --methods=kd,bkd,dukd,ltkd,dkd

Writes `OUT.md` (default `ROOT/compare.md`: top-1, mean per-class accuracy, many / medium /
few, final and best epoch, teacher included; the caption says whether the test split is
balanced and which split chose "best") and `OUT.png` (per-class test accuracy against the
class's training size, head to tail).
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ltkd_jax import cli
from ltkd_jax.config import checks, defaults, recipes
from ltkd_jax.errors import UserError
from ltkd_jax.runs import finished
from ltkd_jax.runs import teachers as teacher_stage
from ltkd_jax.runs.summary import summarize_run

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The recipe: a config file (with its argument), as for ltkd_jax.main."
)
_TEACHER = flags.DEFINE_string(
    "teacher_workdir", "", "A finished teacher run; empty: config.teacher.workdir, else train one."
)
_METHODS = flags.DEFINE_list("methods", ["kd", "bkd"], "Registered methods (ltkd_jax/methods/).")
_RECIPE = flags.DEFINE_string(
    "recipe", "", "The official recipe --config follows (bkd, mdistiller); empty: none."
)
_ROOT = flags.DEFINE_string("root", "runs/compare", "Where the student runs live.")
_OUT = flags.DEFINE_string("out", "", "Output prefix for .md and .png; empty = ROOT/compare.")
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
    t = task.get("shot_thresholds")
    if t and t.get("rule") == "tail33":
        text += " Groups: the top, middle and bottom 33% of classes by training images."
    elif t:
        text += f" Shot groups: many > {t['many']}, few < {t['few']} training images"
        text += " (derived from the class counts)." if t.get("derived") else "."
    return text + " Groups report mean per-class accuracy."


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
    ax.set_ylabel(
        "test accuracy (%)" if window == 1 else f"test accuracy (%), averaged over {window} classes"
    )
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
    if len(argv) > 1:
        cli.usage_error(f"unexpected arguments: {argv[1:]}")
    recipe = cli.loaded_config(_CONFIG)
    filters = cli.console_logging()
    given = _TEACHER.value or recipe.teacher.workdir
    teacher_dir = given or os.path.join(_ROOT.value, "teacher")
    try:
        configs = {m: method_config(recipe, m, teacher_dir, _RECIPE.value) for m in _METHODS.value}
    except ValueError as e:  # an unknown method
        cli.usage_error(f"--methods: {e}", e)
    try:
        for config in configs.values():  # every mistake before any training
            checks.validate_config(config)
        if given or _COLLECT.value:  # a finished teacher (and data root) are needed now
            checks.check_run_paths(next(iter(configs.values())))
        if not _COLLECT.value:
            if not given:
                teacher = teacher_stage.teacher_config(recipe, 0)
                cli.check_job(teacher, teacher_dir)
                if cli.run_job(teacher, teacher_dir, filters) is None:
                    return  # stopped by a signal; the same command resumes
            for method, config in configs.items():
                workdir = os.path.join(_ROOT.value, method)
                cli.check_job(config, workdir)
                if cli.run_job(config, workdir, filters, brief=True) is None:
                    return
        rows = [(name, _summary(d)) for name, d in _runs(teacher_dir, configs)]
    except UserError as e:
        cli.usage_error(str(e), e)
    teacher_config, task = finished.read_run_info(teacher_dir)
    caption = caption_for(teacher_config, task, teacher_dir, rows[-1][1])
    out = _OUT.value or os.path.join(_ROOT.value, "compare")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    table = markdown_table(rows, caption)
    with open(out + ".md", "w") as f:
        f.write(table)
    counts = np.asarray(task["class_counts"])
    plot_per_class(rows, counts, out + ".png", task.get("class_names"))
    print(table)
    print(f"wrote {out}.md and {out}.png")


def _runs(teacher_dir: str, configs: dict) -> list[tuple[str, str]]:
    """(row name, workdir): the teacher, then every method."""
    return [("teacher", teacher_dir)] + [(m, os.path.join(_ROOT.value, m)) for m in configs]


def _summary(workdir: str) -> dict:
    """`summary.summarize_run`, or a UserError saying the run is not finished."""
    try:
        return summarize_run(workdir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(
            f"{workdir} holds no finished run ({e}); run without --collect_only to train it"
        ) from None


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
