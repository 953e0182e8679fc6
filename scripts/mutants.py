r"""Mutation check: plants realistic one-line bugs, one at a time, in a copy of the repository,
runs the fast test suite on each, and reports which ones the tests catch. Every one must be.

    python scripts/mutants.py                 # every mutant; ends with `mutants killed: K/N`
    python scripts/mutants.py --list          # names and what a user would suffer
    python scripts/mutants.py --only cosine_decays_early --only top5_compares_values
    python scripts/mutants.py --jobs 2        # two mutants at a time (one per core)

Each mutant names a file, the exact text it replaces (which must occur there exactly once:
a refactor that moves it stops the script, so the list is kept up to date) and the bug it
plants. The repository's tracked and untracked-but-not-ignored files are copied once into a
temporary snapshot. Each mutant gets its own copy of it, with the bug applied, and
`pytest -x -m "not slow"` runs there with PYTHONPATH at the copy: first on the test files
most likely to kill it, then, if it survives them, on the whole fast suite. A kill counts
only if the failing test passes on the unchanged snapshot. Exits 1 if any mutant survives.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The quick suite, less tests/test_mutants.py: it checks this list against the code, which
# every mutant changes by design (it would "kill" them all).
# One process per run (`-n 0`): --jobs runs mutants side by side instead.
FAST = ["-m", "not slow", "--ignore=tests/test_mutants.py", "-n", "0"]


class Mutant(NamedTuple):
    name: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in `path`
    replacement: str
    description: str  # what a user would suffer
    tests: tuple[str, ...] = ()  # test files run first (the whole fast suite follows)


MUTANTS = (
    # ---- data: the record path, process slices, evaluation padding, samplers, long tail ----
    Mutant(
        "record_label_by_position",
        "ltkd_jax/data/pipeline.py",
        '"label": np.int32(self.split.labels[i])}',
        '"label": np.int32(self.split.labels[k % len(self.split)])}',
        "record splits (ImageNet-LT, iNat, large folders) train on shuffled labels",
        ("tests/test_data_labels.py",),
    ),
    Mutant(
        "record_reads_first_slice",
        "ltkd_jax/data/pipeline.py",
        "return (j // local_b) * global_batch_size + local.start + j % local_b",
        "return (j // local_b) * global_batch_size + j % local_b",
        "on several hosts every process reads the first slice of each record batch",
        ("tests/test_data_labels.py",),
    ),
    Mutant(
        "eval_padding_counted",
        "ltkd_jax/data/pipeline.py",
        '"mask": np.bool_(mask),',
        '"mask": np.bool_(True),',
        "record evaluation counts the padding (copies of image 0) as test images",
        ("tests/test_data_records.py",),
    ),
    Mutant(
        "ram_reads_first_slice",
        "ltkd_jax/data/pipeline.py",
        "idx = np.asarray(indices)[self.local]",
        "idx = np.asarray(indices)[: self.local.stop - self.local.start]",
        "on several hosts every process trains on the first slice of each batch",
        ("tests/test_data_pipeline.py",),
    ),
    Mutant(
        "device_batch_off_by_one",
        "ltkd_jax/data/device.py",
        "epoch, first = divmod(t * batch_size, sequence.epoch_len)",
        "epoch, first = divmod((t + 1) * batch_size, sequence.epoch_len)",
        "the device-resident path skips the first batch and trains on other batches than grain",
        ("tests/test_device_epochs.py",),
    ),
    Mutant(
        "sqrt_sampler_is_instance",
        "ltkd_jax/data/sampling.py",
        '"sqrt": 0.5,',
        '"sqrt": 1.0,',
        "square-root sampling silently samples by instance",
        ("tests/test_data_sampling.py",),
    ),
    Mutant(
        "longtail_exponent",
        "ltkd_jax/data/longtail.py",
        "counts = [int(n_max * imb ** (c / denom)) for c in range(num_classes)]",
        "counts = [int(n_max * imb ** (c / num_classes)) for c in range(num_classes)]",
        "CIFAR-LT subsets with the wrong counts: the last class keeps more than n_max / IF",
        ("tests/test_data_longtail.py",),
    ),
    Mutant(
        "shot_boundary_inclusive",
        "ltkd_jax/data/longtail.py",
        "return np.where(n > many, 0, np.where(n < few, 2, 1)).astype(np.int32)",
        "return np.where(n >= many, 0, np.where(n < few, 2, 1)).astype(np.int32)",
        "a class with exactly 100 images counts as many-shot: group numbers not comparable",
        ("tests/test_data_longtail.py",),
    ),
    Mutant(
        "groups_from_test_counts",
        "ltkd_jax/data/task.py",
        "groups = longtail.shot_groups(full_counts, many, few)",
        "groups = longtail.shot_groups(splits.test.class_counts(), many, few)",
        "many / medium / few built from the test split's counts: wrong groups",
        ("tests/test_data_longtail.py", "tests/test_train.py"),
    ),
    # ---- schedule and optimiser ----
    Mutant(
        "cosine_decays_early",
        "ltkd_jax/training/optim.py",
        "return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup, total)",
        "return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup, total - warmup)",
        "the learning rate reaches 0 `warmup` epochs early",
        ("tests/test_optim.py",),
    ),
    Mutant(
        "step_decay_one_epoch_late",
        "ltkd_jax/training/optim.py",
        "num_drops = jnp.sum(epoch >= boundaries)",
        "num_drops = jnp.sum(epoch > boundaries)",
        "the BKD recipe's drops at epochs 160 and 180 happen one epoch late",
        ("tests/test_optim.py",),
    ),
    Mutant(
        "warmup_starts_at_zero",
        "ltkd_jax/training/optim.py",
        "warm = base_lr * (epoch + 1) / max(warmup_epochs, 1)",
        "warm = base_lr * epoch / max(warmup_epochs, 1)",
        "the first epoch trains at learning rate 0",
        ("tests/test_optim.py",),
    ),
    Mutant(
        "weight_decay_halved",
        "ltkd_jax/training/optim.py",
        "optax.add_decayed_weights(optim.weight_decay),",
        "optax.add_decayed_weights(optim.weight_decay / 2),",
        "half the recipe's weight decay (the CBD halving applied twice)",
        ("tests/test_optim.py",),
    ),
    # ---- metrics ----
    Mutant(
        "top5_compares_values",
        "ltkd_jax/training/metrics.py",
        "jax.lax.top_k(logits, k)[1] == labels[:, None]",
        "jax.lax.top_k(logits, k)[0] == labels[:, None]",
        "top-5 compares the top-k logit values with the labels: garbage",
        ("tests/test_metrics.py",),
    ),
    Mutant(
        "groups_pooled_over_images",
        "ltkd_jax/training/metrics.py",
        "out[name] = float(per_class[members].mean()) if members.any() else None",
        "out[name] = float(counts['correct'][members].sum() / seen[members].sum())"
        " if members.any() else None",
        "many / medium / few pooled over images: wrong on any imbalanced test split",
        ("tests/test_metrics.py",),
    ),
    Mutant(
        "eval_mask_ignored",
        "ltkd_jax/training/metrics.py",
        "onehot = jax.nn.one_hot(labels, num_classes) * weight[:, None]",
        "onehot = jax.nn.one_hot(labels, num_classes)",
        "evaluation counts the padded copies of the first test image",
        ("tests/test_metrics.py",),
    ),
    Mutant(
        "mean_class_counts_absent_classes",
        "ltkd_jax/training/metrics.py",
        '"mean_class_acc": float(per_class[present].mean()),',
        '"mean_class_acc": float(per_class.mean()),',
        "mean-class accuracy counts classes without test images as 0",
        ("tests/test_metrics.py",),
    ),
    # ---- losses ----
    Mutant(
        "kd_without_t_squared",
        "ltkd_jax/methods/primitives.py",
        "return temperature**2 * jnp.mean(kl)",
        "return temperature * jnp.mean(kl)",
        "every KD term scaled by 1/T: the distillation weight silently halves at T = 2",
        ("tests/methods",),
    ),
    Mutant(
        "kl_reversed",
        "ltkd_jax/methods/primitives.py",
        "terms = jnp.exp(log_q) * (log_q - log_p)",
        "terms = jnp.exp(log_p) * (log_p - log_q)",
        "KL(student || teacher) instead of KL(teacher || student)",
        ("tests/methods",),
    ),
    Mutant(
        "weighted_ce_plain_mean",
        "ltkd_jax/methods/ce.py",
        "ce = P.mean(P.nll(jax.nn.log_softmax(z, axis=-1), labels), w[labels])",
        "ce = jnp.mean(w[labels] * P.nll(jax.nn.log_softmax(z, axis=-1), labels))",
        "class-weighted CE divided by B instead of the weight sum (PyTorch's reduction)",
        ("tests/methods/test_ce.py",),
    ),
    Mutant(
        "bkd_weights_inside_temperature",
        "ltkd_jax/methods/bkd.py",
        "log_q = jax.nn.log_softmax(v / temperature + log_w, axis=-1)",
        "log_q = jax.nn.log_softmax((v + log_w) / temperature, axis=-1)",
        "BKD's class re-weighting softened by the temperature",
        ("tests/methods/test_bkd.py",),
    ),
    Mutant(
        "logit_adjust_sign",
        "ltkd_jax/methods/logit_adjust.py",
        "adjusted = z + tau * P.log_prior(class_counts, z.dtype)",
        "adjusted = z - tau * P.log_prior(class_counts, z.dtype)",
        "logit adjustment pushes towards the head classes",
        ("tests/methods/test_logit_adjust.py",),
    ),
    Mutant(
        "ldam_margin_power",
        "ltkd_jax/methods/ldam_drw.py",
        "m = counts**-0.25",
        "m = counts**-0.5",
        "LDAM margins n^-1/2 instead of n^-1/4",
        ("tests/methods/test_ldam_drw.py",),
    ),
    Mutant(
        "effective_weights_not_rescaled",
        "ltkd_jax/methods/primitives.py",
        "return counts.shape[-1] * w / jnp.sum(w)\n\n\ndef inverse_frequency_weights",
        "return w / jnp.sum(w)\n\n\ndef inverse_frequency_weights",
        "class-balanced weights sum to 1 instead of C: the re-weighted loss shrinks by C",
        ("tests/methods/test_primitives.py",),
    ),
    Mutant(
        "dkd_target_in_nontarget_kl",
        "ltkd_jax/methods/dkd.py",
        "nckd = temperature**2 * jnp.mean(within[:, 1])",
        "nckd = temperature**2 * jnp.mean(within[:, 0])",
        "DKD's non-target term reads the (always zero) target group",
        ("tests/methods/test_dkd.py",),
    ),
    # ---- the teacher path ----
    Mutant(
        "teacher_fed_raw_pixels",
        "ltkd_jax/training/steps.py",
        "teacher_outputs = apply_teachers(teachers, images)",
        'teacher_outputs = apply_teachers(teachers, batch["image"].astype(jnp.float32))',
        "the teacher sees 0-255 pixels: its outputs are garbage",
        ("tests/test_teacher_step.py",),
    ),
    Mutant(
        "teacher_batchnorm_in_train_mode",
        "ltkd_jax/training/steps.py",
        "logits, features = teacher.model.apply(teacher.variables, images, train=False)",
        "(logits, features), _ = teacher.model.apply("
        'teacher.variables, images, train=True, mutable=["batch_stats"])',
        "every distillation uses a teacher normalised by batch statistics (drifting)",
        # Flax's layers (a GPU's): with the CPU kernels the folded teacher refuses train=True.
        (
            "tests/test_teacher_step.py::test_the_step_feeds_the_loss_the_inference_mode_teacher[off]",
        ),
    ),
    Mutant(
        "kd_ignores_the_teacher",
        "ltkd_jax/methods/kd.py",
        "teacher_logits=teachers[0].logits,",
        "teacher_logits=student.logits,",
        "KD distils the student into itself: the teacher is ignored",
        ("tests/test_teacher_step.py",),
    ),
    Mutant(
        "teacher_keeps_its_runs_layers",
        "ltkd_jax/runs/teachers.py",
        'return tuple(t.replace(model=t.model.with_ops("xla")) for t in teachers), trained',
        "return teachers, trained",
        "with cpu_kernels=off the teacher still runs the CPU kernels: the GPU path is untested",
        ("tests/test_teacher_step.py",),
    ),
    # ---- cohorts: several students in one step ----
    Mutant(
        "cohort_teacher_fed_raw_pixels",
        "ltkd_jax/training/steps.py",
        "        outputs = apply_teachers(teachers, images)\n",
        '        outputs = apply_teachers(teachers, batch["image"].astype(jnp.float32))\n',
        "in a cohort (every trainer run) the teacher sees 0-255 pixels",
        ("tests/test_cohort.py", "tests/test_train.py"),
    ),
    Mutant(
        "cohort_member_not_frozen",
        "ltkd_jax/training/steps.py",
        "new = _where_members(ok if len(members) > 1 else ok[0], new, group)",
        "new = new",
        "a cohort member whose loss is not finite goes on training on garbage",
        ("tests/test_cohort.py",),
    ),
    Mutant(
        "vmapped_members_share_one_loss",
        "ltkd_jax/training/steps.py",
        "return sum(losses), (losses, parts, updates",
        "return losses[0] * len(losses), (losses, parts, updates",
        "vmapped cohort members all follow the first member's loss",
        ("tests/test_cohort.py",),
    ),
    # ---- the path a GPU runs: the scanned device loop, Flax's own layers ----
    Mutant(
        "scan_runs_the_chunk_backwards",
        "ltkd_jax/training/steps.py",
        "return jax.lax.scan(body, state, plan)",
        "return jax.lax.scan(body, state, plan, reverse=True)",
        "on accelerators each chunk's batches train in reverse order (not the grain order)",
        ("tests/test_train.py",),
    ),
    Mutant(
        "flax_batchnorm_default_momentum",
        "ltkd_jax/models/layers.py",
        "momentum=0.9,",
        '**({"momentum": 0.9} if ops == "cpu" else {}),',
        "Flax's layers keep Flax's momentum 0.99: on a GPU the running statistics lag",
        ("tests/test_train.py",),
    ),
    # ---- resume and checkpoints ----
    Mutant(
        "iterator_not_restored",
        "ltkd_jax/training/checkpointing.py",
        "data=grain.checkpoint.CheckpointRestore(iterator),",
        "",
        "a preempted record-path run replays its batches from the start",
        ("tests/test_train.py",),
    ),
    Mutant(
        "best_checkpoint_is_the_worst",
        "ltkd_jax/training/checkpointing.py",
        "reverse=False,",
        "reverse=True,",
        "retention keeps the checkpoint with the lowest top-1 as the 'best'",
        ("tests/test_checkpointing.py",),
    ),
    Mutant(
        "restore_oldest_checkpoint",
        "ltkd_jax/training/checkpointing.py",
        "steps = sorted(steps, reverse=True)",
        "steps = sorted(steps)",
        "a resumed run restarts from its oldest kept checkpoint and redoes the epochs after",
        ("tests/test_checkpointing.py",),
    ),
    Mutant(
        "metrics_not_trimmed_on_resume",
        "ltkd_jax/training/trainer.py",
        "run.writer.trim_after(start_step)",
        "run.writer.trim_after(cohort.total_steps)",
        "a resumed run's metrics.jsonl holds the replayed records twice",
        ("tests/test_fault_injection.py", "tests/test_train.py"),
    ),
    Mutant(
        "init_ignores_the_seed",
        "ltkd_jax/training/networks.py",
        "_initializer(model, tuple(image_shape), mesh)(jax.random.key(seed))",
        "_initializer(model, tuple(image_shape), mesh)(jax.random.key(0))",
        "every seed starts from the same weights: a seed's mean +- std measures nothing",
        ("tests/test_cohort.py", "tests/test_train.py"),
    ),
)


def find(name: str) -> Mutant:
    for mutant in MUTANTS:
        if mutant.name == name:
            return mutant
    raise SystemExit(f"no mutant named {name!r}; `python scripts/mutants.py --list` lists them")


def check_applies(mutant: Mutant, root: str = REPO) -> None:
    """The original text occurs exactly once in the mutant's file; otherwise the code moved
    and the mutant must be updated."""
    path = os.path.join(root, mutant.path)
    if not os.path.exists(path):
        raise SystemExit(f"mutant {mutant.name}: {mutant.path} does not exist; update its path")
    with open(path, encoding="utf-8") as f:
        count = f.read().count(mutant.original)
    if count != 1:
        raise SystemExit(
            f"mutant {mutant.name}: its original text occurs {count} times in {mutant.path}, "
            f"not once: {mutant.original!r}. Update the mutant to the current code "
            "(scripts/mutants.py)."
        )


def repository_files(root: str = REPO) -> list[str]:
    """Tracked files plus untracked ones git does not ignore (work in progress included)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    )
    paths = out.stdout.decode().split("\0")
    return [p for p in paths if p and os.path.isfile(os.path.join(root, p))]


def snapshot(dest: str) -> None:
    """Copies the repository's files into `dest` once: every mutant starts from this state,
    whatever is edited while the check runs."""
    for rel in repository_files():
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(REPO, rel), target)


def copy_with_mutant(mutant: Mutant, base: str, dest: str) -> None:
    shutil.copytree(base, dest, dirs_exist_ok=True)
    path = os.path.join(dest, mutant.path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(mutant.original, mutant.replacement, 1))


def run_pytest(copy: str, targets: list[str]) -> tuple[int, str]:
    """(exit code, first failure or summary line) of the fast tests in `targets` (all when
    empty), run in `copy`."""
    env = {**os.environ, "PYTHONPATH": copy}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", *FAST, "-p", "no:cacheprovider", *targets]
    out = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    # -ra's summary names the test that failed first (-x stops there).
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    detail = failed[0] if failed else (lines[-1] if lines else out.stderr.strip()[-300:])
    return out.returncode, detail[:200]


def killed(code: int) -> bool:
    """A failing or erroring test kills the mutant; 5 (no test collected) is a script bug."""
    if code == 5:
        raise SystemExit("pytest collected no tests: check the mutant's test files")
    return code != 0


def fails_without_the_mutant(detail: str, base: str) -> bool:
    """Whether the test named in a `FAILED <nodeid> - ...` line also fails on the unchanged
    snapshot `base`: then it proves nothing about the mutant."""
    words = detail.split()
    if len(words) < 2 or words[0] not in ("FAILED", "ERROR"):
        return False  # no test named (e.g. a crash): nothing to check
    code, _ = run_pytest(base, [words[1]])
    return code != 0


def evaluate(mutant: Mutant, base: str) -> tuple[bool, str]:
    """(killed, how) for one mutant, in its own temporary copy of the snapshot `base`."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutant_{mutant.name}_") as copy:
        copy_with_mutant(mutant, base, copy)
        for targets, label in ((list(mutant.tests), "its tests"), ([], "the fast suite")):
            code, detail = run_pytest(copy, targets)
            if killed(code):
                if fails_without_the_mutant(detail, base):
                    return False, f"NOT COUNTED: this test fails without the mutant too: {detail}"
                seconds = time.perf_counter() - started
                return True, f"killed by {label} in {seconds:.0f} s ({detail})"
    return False, f"SURVIVED the fast suite in {time.perf_counter() - started:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[], help="a mutant name (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at a time")
    args = parser.parse_args()
    mutants = [find(name) for name in args.only] if args.only else list(MUTANTS)
    for mutant in mutants:
        check_applies(mutant)  # all of them, before anything runs
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:34s} {mutant.path}: {mutant.description}")
        return
    results = {}
    with (
        tempfile.TemporaryDirectory(prefix="mutants_base_") as base,
        concurrent.futures.ThreadPoolExecutor(max(args.jobs, 1)) as pool,
    ):
        snapshot(base)
        futures = {pool.submit(evaluate, m, base): m for m in mutants}
        for future in concurrent.futures.as_completed(futures):
            mutant = futures[future]
            results[mutant.name], how = future.result()
            print(f"{mutant.name:34s} {how}", flush=True)
    survivors = [name for name, was_killed in results.items() if not was_killed]
    print(f"mutants killed: {len(mutants) - len(survivors)}/{len(mutants)}")
    if survivors:
        print("survived: " + ", ".join(survivors) + " (add a test that kills each)")
        sys.exit(1)


if __name__ == "__main__":
    main()
