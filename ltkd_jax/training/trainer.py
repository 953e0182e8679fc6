"""The trainer: one loop over chunks of steps, for one run or a cohort of runs.

A cohort is a set of members (runs) that share the data, the recipe (batch size, epochs,
optimiser and schedule, sampler, evaluation) and the frozen teachers; each has its own
method, seed and, optionally, network. One run is a cohort of one. Each chunk is one compiled
program (`feeds.Feed.compile` of `steps.cohort_step`) that updates every member: the batch is
built and the teachers applied once, members with the same network are stacked and run
under `jax.vmap` on accelerators. At the end of an evaluated epoch every member is evaluated
(`evaluation.make_evaluator`), its records written and its checkpoint saved asynchronously
while the next chunk runs, each into the member's own workdir, which is a complete run
directory: what a single run with the member's config would write.

The caller owns what happens around a run, once: checking the config
(`config.checks.validate_config`) and a resumed run's config (`runs.rundir`), reading the task
(`data.load_task`), training or loading teachers and the init run. `runs.job` does all of
it for the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ltkd_jax import data, methods
from ltkd_jax.config import defaults
from ltkd_jax.training import (
    checkpointing,
    evaluation,
    feeds,
    metrics,
    networks,
    optim,
    preemption,
    progress,
    sharding,
    steps,
    writers,
)
from ltkd_jax.training.writers import MetricWriter

DATA_MODES = ("shared", "per_seed")
STOPPED_FILE = "stopped.json"  # a cohort member frozen after a non-finite loss
# Tests and the benchmark set this to time the accelerators' vmapped groups on the CPU.
VMAP_ON_CPU = False


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of a cohort: its complete config and its workdir."""

    config: ml_collections.ConfigDict
    workdir: str
    name: str = ""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """A member's final state, and the test counts of the last evaluation this call made (of
    the final checkpoint when the run finished; None when it was already complete)."""

    state: networks.TrainState
    test_counts: dict | None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def check_cohort(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Members must share everything but their own fields (`config.defaults.MEMBER_FIELDS`;
    the teacher section only among
    the members that have a teacher), and train: a method that starts from a finished run
    (cRT) runs on its own."""
    flat = [defaults.flatten(c.to_dict()) for c in configs]
    distils = [methods.num_teachers(c) > 0 for c in configs]
    teacher_ref = next((f for f, d in zip(flat, distils, strict=True) if d), None)
    for k, (other, distil) in enumerate(zip(flat, distils, strict=True)):
        differ = [
            name
            for name, value in other.items()
            if not defaults.is_member_field(name)
            and (distil or not name.startswith("teacher."))
            and value != (teacher_ref if name.startswith("teacher.") else flat[0]).get(name)
        ]
        if differ:
            raise ValueError(
                f"cohort member {k} differs from the others in {differ[:5]}: members share "
                "the data, the recipe and the teachers; run it on its own or give it the same "
                "values"
            )
    if len(configs) > 1 and any(c.init.workdir for c in configs):
        raise ValueError("a method that starts from a finished run (cRT) runs on its own")


@dataclasses.dataclass
class _MemberRun:
    """A member's own pieces: method, files, log, and whether it still trains."""

    member: Member
    method: methods.Method
    model: object
    writer: MetricWriter
    manager: object
    log: progress.TrainLog | None = None
    stopped: dict | None = None  # {'step', 'values'} once a non-finite loss froze it

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.member.config

    @property
    def workdir(self) -> str:
        return self.member.workdir


@dataclasses.dataclass(frozen=True)
class _Cohort:
    """What the loop needs, built once by `_setup`."""

    config: ml_collections.ConfigDict  # the shared recipe (member 0's config)
    mesh: jax.sharding.Mesh
    data: data.TaskSplits
    feed: feeds.Feed
    layout: steps.CohortLayout
    steps_per_epoch: int
    mean: tuple
    std: tuple
    eval_batch_size: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.num_epochs


def _check_teachers(config: ml_collections.ConfigDict, teachers: tuple) -> None:
    wanted = methods.num_teachers(config)
    if wanted and len(teachers) != wanted:
        raise ValueError(
            f"config.method={config.method!r} needs {wanted} teacher(s), got {len(teachers)}; "
            "use job.run(), which trains or loads them from config.teacher"
        )


def _method_task(config, run_data, feature_means) -> methods.Task:
    """The facts a member's loss may use (the teacher's class feature means if it needs
    them)."""
    task = methods.Task(run_data.class_counts, run_data.class_groups, dataset=config.data.name)
    if methods.needs_of(config).feature_means:
        task = dataclasses.replace(task, teacher_feature_means=feature_means)
    return task


def _group_layout(runs: list[_MemberRun], seeds: tuple | None, vmapped: bool):
    """Members with the same network (and the same trainable parameters) form a group."""
    keys = [(repr(r.model), r.method.needs.frozen_backbone) for r in runs]
    groups = tuple(
        tuple(k for k, key in enumerate(keys) if key == unique) for unique in dict.fromkeys(keys)
    )
    batch_of = None
    if seeds is not None:
        batch_of = tuple(seeds.index(r.config.seed) for r in runs)
    return steps.CohortLayout(groups, batch_of, vmapped)


def _make_feed(config, train_split, mesh, data_mode: str, member_configs):
    """The feed: one batch sequence (shared, the first member's seed), or one per seed."""
    if data_mode == "shared" or len(member_configs) == 1:
        feed, steps_per_epoch = feeds.make_feed(config, train_split, mesh)
        return feed, steps_per_epoch, None
    seeds = tuple(sorted({c.seed for c in member_configs}))
    if not feeds.uses_device(config, train_split):
        raise ValueError(
            "data_mode=per_seed needs the device-resident feed (an in-RAM split with cifar or "
            "no augmentation); use data_mode=shared"
        )
    feed, steps_per_epoch = feeds.make_feed(config, train_split, mesh, seeds=seeds)
    return feed, steps_per_epoch, seeds


def _setup(
    members: Sequence[Member],
    teachers: tuple,
    task: data.TaskSplits | None,
    data_mode: str,
) -> tuple[_Cohort, list[_MemberRun]]:
    """The mesh, the task (read here unless given), each member's method and files, the
    groups and the feed."""
    configs = [m.config for m in members]
    check_cohort(configs)
    config = configs[0]
    mesh = sharding.make_mesh(config.num_devices)
    sharding.check_batch_size(config.batch_size, mesh)
    for c in configs:
        _check_teachers(c, teachers)
    run_data = task or data.load_task(config.data)
    for member in members:  # the data a resumed run sees is the data it trained on
        checkpointing.check_resume_data(member.workdir, run_data.info["data_fingerprint"])
    train_split = run_data.train
    mean, std = data.input_stats(config.data, train_split.image_shape[-1])
    eval_batch_size = _round_up(config.eval_batch_size, mesh.devices.size)
    means = None  # computed once, when a member needs them (KRDistill-R)
    if any(methods.needs_of(c).feature_means for c in configs):
        means = evaluation.class_feature_means(
            teachers[0], train_split, mesh, eval_batch_size, mean, std
        )
    runs = []
    for member in members:
        method = methods.make(member.config, _method_task(member.config, run_data, means))
        model = networks.build_model(member.config, train_split.num_classes)
        writer = MetricWriter(member.workdir)
        keep = member.config.keep_checkpoints
        manager = checkpointing.make_manager(member.workdir, keep=keep)
        runs.append(_MemberRun(member, method, model, writer, manager))
    feed, steps_per_epoch, seeds = _make_feed(config, train_split, mesh, data_mode, configs)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    vmapped = jax.default_backend() != "cpu" or VMAP_ON_CPU
    layout = _group_layout(runs, seeds, vmapped)
    for members in layout.groups:  # one module per group: stacked states share its apply_fn
        for k in members:
            runs[k].model = runs[members[0]].model
    cohort = _Cohort(
        config, mesh, run_data, feed, layout, steps_per_epoch, mean, std, eval_batch_size
    )
    return cohort, runs


def _log_start(cohort: _Cohort, runs: list[_MemberRun]) -> None:
    c, split = cohort.config, cohort.data.train
    who = runs[0].workdir if len(runs) == 1 else f"a cohort of {len(runs)} members"
    logging.info(
        "%s: %s-LT IF %g, %d train images, %d classes, %d/%d/%d many/medium/few, %d devices; "
        "%s at %s, %d steps per epoch x %d epochs, batches built %s (a time estimate follows "
        "the first chunk after compilation)",
        *(who, c.data.name, c.data.imbalance_factor, len(split), split.num_classes),
        *np.bincount(cohort.data.class_groups, minlength=3),
        *(cohort.mesh.devices.size, c.model.name, "x".join(map(str, split.image_shape))),
        *(cohort.steps_per_epoch, c.num_epochs),
        cohort.feed.description,
    )
    if len(runs) > 1:
        for g, members in enumerate(cohort.layout.groups):
            names = ", ".join(runs[k].member.name for k in members)
            form = "vmapped" if cohort.layout.vmapped and len(members) > 1 else "one by one"
            logging.info(
                "group %d (%s, %s): %s", g, runs[members[0]].config.model.name, form, names
            )


def _task_record(cohort: _Cohort) -> dict:
    """task.json: what a later stage (teacher loading, evaluation, export) needs to know."""
    split = cohort.data.train
    return {
        "dataset": cohort.config.data.name,
        "num_classes": split.num_classes,
        "image_shape": list(split.image_shape),
        "class_counts": cohort.data.class_counts,
        "class_groups": cohort.data.class_groups,
        "steps_per_epoch": cohort.steps_per_epoch,
        "num_devices": cohort.mesh.devices.size,
        **cohort.data.info,
    }


def _fresh_state(cohort: _Cohort, run: _MemberRun, tx, init) -> networks.TrainState:
    shape = cohort.data.train.image_shape
    state = networks.create_train_state(run.model, tx, shape, run.config.seed, cohort.mesh)
    if init is not None:
        frozen = run.method.needs.frozen_backbone
        return networks.start_from(state, init, fresh_classifier=frozen)
    return state


def _restore(cohort: _Cohort, runs: list[_MemberRun], fresh: list) -> list:
    """Each member's checkpoint at the newest step all members saved (a kill between the
    members' saves leaves some ahead: theirs are set aside and written again)."""
    saved = [set(r.manager.all_steps()) for r in runs]
    if not any(saved):
        return fresh
    common = set.intersection(*saved)
    limit = max(common) if common else -1
    while True:
        item = cohort.feed.checkpoint_item(0)
        restored = [
            checkpointing.restore_latest(r.manager, s, item, max_step=limit)
            for r, s in zip(runs, fresh, strict=True)
        ]
        at = {None if s is None else int(s.step) for s in restored}
        if len(at) == 1:
            break
        limit = min(a if a is not None else -1 for a in at)  # an unreadable one fell back
    if restored[0] is None:
        return fresh
    logging.info("resumed from step %d", int(restored[0].step))
    return restored


def _initial_state(cohort: _Cohort, runs, schedule, inits) -> steps.CohortState:
    """Every member's latest checkpoint, else its fresh state (from its init run, when
    given), stacked by group; members frozen before a resume stay frozen."""
    tx = optim.make_optimizer(cohort.config.optim, schedule)
    txs = [optim.only_classifier(tx) if r.method.needs.frozen_backbone else tx for r in runs]
    fresh = [_fresh_state(cohort, r, t, i) for r, t, i in zip(runs, txs, inits, strict=True)]
    states = _restore(cohort, runs, fresh)
    stack = jax.jit(steps.stack_members, out_shardings=sharding.replicated(cohort.mesh))
    groups = tuple(
        states[members[0]] if len(members) == 1 else stack([states[k] for k in members])
        for members in cohort.layout.groups
    )
    alive = np.array([r.stopped is None for r in runs])
    return steps.CohortState(groups, jax.device_put(alive, sharding.replicated(cohort.mesh)))


def _read_stopped(workdir: str) -> dict | None:
    path = os.path.join(workdir, STOPPED_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_finite(cohort: _Cohort, runs, t0: int, chunk: list[dict]) -> None:
    """A member's first non-finite step stops it: one run raises (progress.check_finite); a
    cohort member is frozen (the step already dropped its update), recorded in its
    workdir's stopped.json, and the others go on, unless none is left."""
    for run, member_chunk in zip(runs, chunk, strict=True):
        if run.stopped is not None:
            continue
        if len(runs) == 1:
            progress.check_finite(t0, member_chunk, run.workdir, run.manager.latest_step())
        bad = progress.first_non_finite(t0, member_chunk)
        if bad:
            run.stopped = {"step": bad[0], "values": bad[1]}
            run.writer.write_json(STOPPED_FILE, run.stopped)
            logging.error(
                "%s stopped: non-finite %s at step %d; kept frozen at its last good state, the "
                "other members go on",
                run.member.name or run.workdir,
                ", ".join(bad[1]),
                bad[0],
            )
    if all(r.stopped is not None for r in runs):
        raise FloatingPointError(
            f"every member of the cohort stopped on a non-finite loss (first at step "
            f"{min(r.stopped['step'] for r in runs)}); lower config.optim.lr, check the data "
            "and the loss hyper-parameters"
        )


def _evaluate(cohort, run, member, teachers, t1: int, evaluators: dict, splits=("test", "val")):
    """Writes the `splits` records of a member's state after step t1; returns ({split:
    counts}, the results that choose the best checkpoint: val's when there is a val split)."""
    epoch = t1 // cohort.steps_per_epoch
    counts, results = {}, None
    for split, evaluate in evaluators.items():  # val, when there is one, chooses the best
        if split not in splits:
            continue
        counts[split] = evaluate(networks.variables_of(member), teachers)
        results = metrics.summarize(counts[split], cohort.data.class_groups)
        run.writer.write_scalars(t1, results, epoch=epoch, split=split)
    return counts, results


def _evaluate_and_save(cohort, runs, state, teachers, t1: int, evaluators) -> list[dict]:
    """Test (and val) results of every member after step t1, written into its records, and
    its asynchronous checkpoint; returns the members' test counts."""
    test_counts = []
    for k, run in enumerate(runs):
        member = cohort.layout.member(state, k)
        counts, results = _evaluate(cohort, run, member, teachers, t1, evaluators[k])
        test_counts.append(counts["test"])
        run.writer.sync()  # the records are on disk before the checkpoint that covers them
        # Asynchronous: the next chunk runs while orbax writes this one.
        item = cohort.feed.checkpoint_item(t1)
        checkpointing.save(run.manager, t1, member, item, {"top1": results["top1"]})
    return test_counts


def _evaluate_again_if_lost(cohort, runs, state, teachers, evaluators) -> None:
    """A restored checkpoint at an evaluated step whose records are missing from a member's
    metrics.jsonl (a torn or lost line) is evaluated again, so the records, and the summary
    read from them, are complete."""
    step = int(cohort.layout.member(state, 0).step)
    if step == 0 or not _evaluates_after(cohort, step):
        return
    for k, run in enumerate(runs):
        wanted = tuple(evaluators[k])
        lost = writers.missing_splits(run.writer.path, step, wanted) if run.writer.active else []
        if jax.process_count() > 1:  # evaluation is collective: process 0's file decides
            flags = multihost_utils.broadcast_one_to_all(np.array([s in lost for s in wanted]))
            lost = [s for s, flag in zip(wanted, flags, strict=True) if flag]
        if not lost:
            continue
        logging.warning(
            "metrics.jsonl in %s has no %s record of step %d (a torn or lost line): "
            "evaluating that checkpoint again",
            run.workdir,
            "/".join(lost),
            step,
        )
        member = cohort.layout.member(state, k)
        _evaluate(cohort, run, member, teachers, step, evaluators[k], splits=tuple(lost))
        run.writer.sync()


def _evaluates_after(cohort: _Cohort, t1: int) -> bool:
    """Whether step t1 ends an epoch that is evaluated (every config.eval_every_epochs, and
    the last)."""
    epochs_done, steps_into_epoch = divmod(t1, cohort.steps_per_epoch)
    if steps_into_epoch:
        return False
    return epochs_done % cohort.config.eval_every_epochs == 0 or t1 == cohort.total_steps


def _save_all(cohort, runs, state, t1: int) -> None:
    for k, run in enumerate(runs):
        run.writer.sync()
        if run.manager.latest_step() != t1:
            member = cohort.layout.member(state, k)
            checkpointing.save(run.manager, t1, member, cohort.feed.checkpoint_item(t1), None)


def _train_loop(cohort, runs, state, teachers, train_fn, evaluators, bar, on_evaluated, shapes):
    """Runs the chunks from the state's step to the end; evaluates and saves at epoch ends;
    stops at a chunk end on SIGTERM / SIGINT (`preemption.Preempted`). Returns the final
    state and the members' last test counts (None when nothing was evaluated)."""
    size = cohort.feed.chunk_steps or cohort.steps_per_epoch
    total, test_counts = cohort.total_steps, [None] * len(runs)
    start = int(cohort.layout.member(state, 0).step)
    for n, (t0, t1) in enumerate(progress.chunks(start, total, cohort.steps_per_epoch, size)):
        for run, shape in zip(runs, shapes, strict=True):  # a failed save stops the run now
            checkpointing.raise_if_save_failed(run.manager, shape)
        epoch = t0 // cohort.steps_per_epoch
        ctx = tuple(r.method.epoch_context(epoch) for r in runs)
        ctx = jax.device_put(ctx, sharding.replicated(cohort.mesh))
        started = time.perf_counter()
        state, chunk_metrics = train_fn(state, teachers, ctx, t0, t1)
        chunk_metrics = jax.device_get(chunk_metrics)  # the one host sync of the chunk
        seconds = time.perf_counter() - started
        _check_finite(cohort, runs, t0, chunk_metrics)
        for run, member_metrics in zip(runs, chunk_metrics, strict=True):
            if run.stopped is None:
                run.log.add(t0, member_metrics, seconds)
        if n == 0:  # the first chunk holds the compile: no estimate from it
            logging.info(progress.compile_note(seconds, t1 - t0))
        elif n == 1 and t1 < total:
            logging.info(progress.time_estimate(seconds / (t1 - t0), total - t1))
        bar.update(t1 - t0)
        if _evaluates_after(cohort, t1):
            bar.set_postfix_str(f"epoch {t1 // cohort.steps_per_epoch}: evaluating")
            test_counts = _evaluate_and_save(cohort, runs, state, teachers, t1, evaluators)
            if on_evaluated is not None:
                on_evaluated(t1)
        if t1 < total and progress.any_process_stopping():  # at a chunk's end
            _save_all(cohort, runs, state, t1)
            raise preemption.Preempted(t1, ", ".join(r.workdir for r in runs))
    return state, test_counts


def _make_evaluators(cohort: _Cohort, runs, compiler_options: dict | None) -> list[dict]:
    """Per member {'test': evaluate, 'val': evaluate (with a val split)}; one compiled
    evaluator per group, shared by its members."""
    splits = {"test": cohort.data.test, "val": cohort.data.val}
    by_group = {}
    for members in cohort.layout.groups:
        model = runs[members[0]].model
        by_group[members] = {
            name: evaluation.make_evaluator(
                model,
                split,
                cohort.mesh,
                batch_size=cohort.eval_batch_size,
                mean=cohort.mean,
                std=cohort.std,
                compiler_options=compiler_options,
                resident=cohort.config.data.device_resident,
            )
            for name, split in splits.items()
            if split is not None
        }
    return [next(v for g, v in by_group.items() if k in g) for k in range(len(runs))]


def _close(runs: list[_MemberRun], shapes: list) -> None:
    """Every member's last save finished and its records closed, all of them whatever fails;
    then the first failure is raised: a failed save's SaveError (the last good checkpoint
    kept, no orbax thread left) before the full disk's OSError of the records."""
    failures = []
    for run, shape in zip(runs, shapes, strict=True):
        finish = functools.partial(checkpointing.finish, run.manager, shape)
        for close in (finish, run.writer.close):
            try:
                close()
            except Exception as e:  # noqa: BLE001 - raised below, after every member closed
                failures.append(e)
    if failures:
        raise failures[0]


def train_cohort(
    members: Sequence[Member],
    *,
    teachers: tuple[networks.Teacher, ...] = (),
    task: data.TaskSplits | None = None,
    inits: Sequence[dict | None] | None = None,
    data_mode: str = "shared",
    on_evaluated: Callable[[int], None] | None = None,
) -> list[TrainResult]:
    """Trains (or resumes) every member, in its own workdir, in one compiled program.

    `teachers` are shared; `task` is the data (`data.load_task`, read here when not given);
    `inits` each member's starting variables (cRT) or None; `data_mode` shared (every member
    sees the batches of the first member's seed) or per_seed (each member the batches of
    its own seed, exactly as its single run); `on_evaluated(step)` runs after every
    evaluation. Each member's config must be valid (`config.checks.validate_config`) and, for
    a resumed run, its resume checked (`runs.rundir.check_resume_config`): `runs.job` does
    both.
    """
    if data_mode not in DATA_MODES:
        raise ValueError(f"data_mode={data_mode!r}; choose one of {DATA_MODES}")
    inits = list(inits or [None] * len(members))
    for member, init in zip(members, inits, strict=True):
        if methods.needs_of(member.config).init_run and init is None:
            raise ValueError(
                f"config.method={member.config.method!r} starts from a finished run: pass its "
                "variables as `init` (runs.finished.load_init), as job.run does"
            )
    cohort, runs = _setup(members, teachers, task, data_mode)
    for run in runs:
        run.writer.write_json("config.json", run.config.to_dict())
        run.stopped = _read_stopped(run.workdir) if len(runs) > 1 else None
    _log_start(cohort, runs)
    schedule = optim.make_schedule(
        cohort.config.optim, cohort.steps_per_epoch, cohort.config.num_epochs
    )
    state = _initial_state(cohort, runs, schedule, inits)
    start_step = int(cohort.layout.member(state, 0).step)
    bar = progress.progress_bar(cohort.config, cohort.total_steps, start_step)
    for run in runs:
        run.writer.trim_after(start_step)  # records after the restored checkpoint are replayed
        run.writer.write_json("task.json", _task_record(cohort))
        run.log = progress.TrainLog(run.writer, run.config, cohort.steps_per_epoch, bar)
    options = networks.compiler_options(cohort.config)
    step = functools.partial(
        steps.cohort_step,
        layout=cohort.layout,
        member_methods=tuple(r.method for r in runs),
        schedule=schedule,
        mean=cohort.mean,
        std=cohort.std,
    )
    train_fn = cohort.feed.compile(step, options)
    evaluators = _make_evaluators(cohort, runs, options)
    # Each member's state as shapes: what a checkpoint holds (the states themselves are
    # donated to the step).
    shapes = [
        jax.eval_shape(lambda s, k=k: cohort.layout.member(s, k), state) for k in range(len(runs))
    ]
    for run, shape in zip(runs, shapes, strict=True):
        checkpointing.warn_if_short_of_space(run.workdir, shape, run.config.keep_checkpoints)
    _evaluate_again_if_lost(cohort, runs, state, teachers, evaluators)
    try:
        state, test_counts = _train_loop(
            cohort, runs, state, teachers, train_fn, evaluators, bar, on_evaluated, shapes
        )
    finally:
        bar.close()
        _close(runs, shapes)
    if start_step >= cohort.total_steps:
        logging.info(
            "%s already complete (step %d)", ", ".join(r.workdir for r in runs), start_step
        )
    for run in runs:
        run.manager.close()
    return [TrainResult(cohort.layout.member(state, k), test_counts[k]) for k in range(len(runs))]


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    teachers: tuple[networks.Teacher, ...] = (),
    task: data.TaskSplits | None = None,
    init: dict | None = None,
) -> TrainResult:
    """Trains (or resumes) the run in `workdir` with frozen `teachers`: a cohort of one
    (`train_cohort`). `init` is a finished run's variables to start from (cRT)."""
    (result,) = train_cohort([Member(config, workdir)], teachers=teachers, task=task, inits=[init])
    return result
