"""The trainer: `train_and_evaluate(config, workdir)`, one loop over chunks of steps.

A chunk is run by the feed (`feeds.Feed.compile` of the pure `steps.train_step`); at the end
of an evaluated epoch the test (and val) split is evaluated (`evaluation.make_evaluator`),
the records written and a checkpoint saved asynchronously while the next chunk runs.

The caller owns what happens around a run, once: checking the config
(`config.checks.validate_config`) and a resumed run's config (`runs.rundir`), reading the task
(`data.load_task`), training or loading teachers and the init run. `runs.job.run` does all of
it for the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax import data, methods
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
)
from ltkd_jax.training.writers import MetricWriter


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The final state, and the test counts of the last evaluation this call made (of the
    final checkpoint when the run finished; None when it was already complete)."""

    state: networks.TrainState
    test_counts: dict | None


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class _Run:
    """What a run's loop needs, built once by `_setup`."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    data: data.TaskSplits
    task: methods.Task  # with the teacher's class feature means when the method needs them
    method: methods.Method
    feed: feeds.Feed
    steps_per_epoch: int
    mean: tuple
    std: tuple
    eval_batch_size: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.num_epochs


def _check_teachers(config: ml_collections.ConfigDict, teachers: tuple) -> None:
    wanted = methods.num_teachers(config)
    if len(teachers) != wanted:
        raise ValueError(
            f"config.method={config.method!r} needs {wanted} teacher(s), got {len(teachers)}; "
            "use job.run(), which trains or loads them from config.teacher"
        )


def _setup(
    config: ml_collections.ConfigDict, workdir: str, teachers: tuple, task: data.TaskSplits | None
) -> _Run:
    """The mesh, the task (read here unless given), the method and the feed."""
    mesh = sharding.make_mesh(config.num_devices)
    sharding.check_batch_size(config.batch_size, mesh)
    _check_teachers(config, teachers)
    run_data = task or data.load_task(config.data)
    train_split = run_data.train
    mean, std = data.input_stats(config.data, train_split.image_shape[-1])
    eval_batch_size = _round_up(config.eval_batch_size, mesh.devices.size)
    task = methods.Task(run_data.class_counts, run_data.class_groups, dataset=config.data.name)
    if methods.needs_of(config).feature_means:
        means = evaluation.class_feature_means(
            teachers[0], train_split, mesh, eval_batch_size, mean, std
        )
        task = dataclasses.replace(task, teacher_feature_means=means)
    feed, steps_per_epoch = feeds.make_feed(config, train_split, mesh)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    method = methods.make(config, task)
    return _Run(
        config, workdir, mesh, run_data, task, method, feed, steps_per_epoch, mean, std,
        eval_batch_size,
    )  # fmt: skip


def _log_start(run: _Run) -> None:
    c, split = run.config, run.data.train
    logging.info(
        "%s: %s-LT IF %g, %d train images, %d classes, %d/%d/%d many/medium/few, %d devices; "
        "%s at %s, %d steps per epoch x %d epochs, batches built %s (a time estimate follows "
        "the first chunk after compilation)",
        *(run.workdir, c.data.name, c.data.imbalance_factor, len(split), split.num_classes),
        *np.bincount(run.task.class_groups, minlength=3),
        *(run.mesh.devices.size, c.model.name, "x".join(map(str, split.image_shape))),
        *(run.steps_per_epoch, c.num_epochs),
        run.feed.description,
    )


def _initial_state(run: _Run, model, schedule, manager, init) -> networks.TrainState:
    """The run's latest checkpoint, else a fresh state, started from `init` (a finished
    run's variables: cRT) when given."""
    config, split = run.config, run.data.train
    tx = optim.make_optimizer(config.optim, schedule)
    if run.method.needs.frozen_backbone:
        tx = optim.only_classifier(tx)
    state = networks.create_train_state(model, tx, split.image_shape, config.seed, run.mesh)
    restored = checkpointing.restore_latest(manager, state, run.feed.checkpoint_item(0))
    if restored is not None:
        logging.info("resumed from step %d in %s", int(restored.step), run.workdir)
        return restored
    if init is not None:
        return networks.start_from(state, init, fresh_classifier=run.method.needs.frozen_backbone)
    return state


def _task_record(run: _Run) -> dict:
    """task.json: what a later stage (teacher loading, evaluation, export) needs to know."""
    split = run.data.train
    return {
        "dataset": run.config.data.name,
        "num_classes": split.num_classes,
        "image_shape": list(split.image_shape),
        "class_counts": run.task.class_counts,
        "class_groups": run.task.class_groups,
        "steps_per_epoch": run.steps_per_epoch,
        "num_devices": run.mesh.devices.size,
        **run.data.info,
    }


def _evaluate_and_save(run: _Run, state, teachers, t1: int, evaluators, writer, manager) -> dict:
    """Test (and val) results of the state after step t1, an asynchronous checkpoint; returns
    the test counts."""
    epoch = t1 // run.steps_per_epoch
    counts = {}
    for split, evaluate in evaluators.items():  # val, when there is one, chooses the best
        counts[split] = evaluate(networks.variables_of(state), teachers)
        results = metrics.summarize(counts[split], run.task.class_groups)
        writer.write_scalars(t1, results, epoch=epoch, split=split)
    # Asynchronous: the next chunk runs while orbax writes this one.
    checkpointing.save(manager, t1, state, run.feed.checkpoint_item(t1), {"top1": results["top1"]})
    return counts["test"]


def _evaluates_after(run: _Run, t1: int) -> bool:
    """Whether step t1 ends an epoch that is evaluated (every config.eval_every_epochs, and
    the last)."""
    epochs_done, steps_into_epoch = divmod(t1, run.steps_per_epoch)
    if steps_into_epoch:
        return False
    return epochs_done % run.config.eval_every_epochs == 0 or t1 == run.total_steps


def _train_loop(run: _Run, state, teachers, train_fn, evaluators, writer, manager, bar):
    """Runs the chunks from the state's step to the end; evaluates and saves at epoch ends;
    stops at a chunk end on SIGTERM / SIGINT (`preemption.Preempted`). Returns the final
    state and the last test counts (None when nothing was evaluated)."""
    log = progress.TrainLog(writer, run.config, run.steps_per_epoch, bar)
    size = run.feed.chunk_steps or run.steps_per_epoch
    total, test_counts = run.total_steps, None
    windows = progress.chunks(int(state.step), total, run.steps_per_epoch, size)
    for n, (t0, t1) in enumerate(windows):
        ctx = run.method.epoch_context(t0 // run.steps_per_epoch)
        ctx = jax.device_put(ctx, sharding.replicated(run.mesh))
        started = time.perf_counter()
        state, chunk_metrics = train_fn(state, teachers, ctx, t0, t1)
        chunk_metrics = jax.device_get(chunk_metrics)  # the one host sync of the chunk
        seconds = time.perf_counter() - started
        progress.check_finite(t0, chunk_metrics, run.workdir)
        log.add(t0, chunk_metrics, seconds)
        if n < 2 and t1 < total:  # the first chunk holds the compile: an upper bound
            estimate = progress.time_estimate(seconds / (t1 - t0), total - t1)
            logging.info(estimate + (" (compile included: an upper bound)" if n == 0 else ""))
        bar.update(t1 - t0)
        if _evaluates_after(run, t1):
            bar.set_postfix_str(f"epoch {t1 // run.steps_per_epoch}: evaluating")
            test_counts = _evaluate_and_save(run, state, teachers, t1, evaluators, writer, manager)
        if t1 < total and progress.any_process_stopping():  # at a chunk's end
            if manager.latest_step() != t1:
                checkpointing.save(manager, t1, state, run.feed.checkpoint_item(t1), None)
            raise preemption.Preempted(t1, run.workdir)
    return state, test_counts


def _make_evaluators(run: _Run, model, compiler_options: dict | None) -> dict:
    """{'test': evaluate, 'val': evaluate (when the task has a val split)}."""
    splits = {"test": run.data.test, "val": run.data.val}
    return {
        name: evaluation.make_evaluator(
            model,
            split,
            run.mesh,
            batch_size=run.eval_batch_size,
            mean=run.mean,
            std=run.std,
            compiler_options=compiler_options,
            resident=run.config.data.device_resident,
        )
        for name, split in splits.items()
        if split is not None
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    teachers: tuple[networks.Teacher, ...] = (),
    task: data.TaskSplits | None = None,
    init: dict | None = None,
) -> TrainResult:
    """Trains (or resumes) the run in `workdir` with frozen `teachers`.

    `task` is the run's data (`data.load_task(config.data)`, read here when not given);
    `init` a finished run's variables to start from (cRT). The config must be valid
    (`config.checks.validate_config`) and, for a resumed run, its resume checked
    (`runs.rundir.check_resume_config`): `runs.job.run` does both.
    """
    run = _setup(config, workdir, teachers, task)
    writer = MetricWriter(workdir)
    writer.write_json("config.json", config.to_dict())
    _log_start(run)
    model = networks.build_model(config, run.data.train.num_classes)
    schedule = optim.make_schedule(config.optim, run.steps_per_epoch, config.num_epochs)
    manager = checkpointing.make_manager(workdir, keep=config.keep_checkpoints)
    state = _initial_state(run, model, schedule, manager, init)
    start_step = int(state.step)
    writer.trim_after(start_step)  # records after the restored checkpoint are replayed
    writer.write_json("task.json", _task_record(run))
    options = networks.compiler_options(config)
    step = functools.partial(
        steps.train_step, method=run.method, schedule=schedule, mean=run.mean, std=run.std
    )
    train_fn = run.feed.compile(step, options)
    evaluators = _make_evaluators(run, model, options)
    bar = progress.progress_bar(config, run.total_steps, start_step)
    try:
        state, test_counts = _train_loop(
            run, state, teachers, train_fn, evaluators, writer, manager, bar
        )
    finally:
        bar.close()
        manager.wait_until_finished()
        writer.close()
    if start_step >= run.total_steps:
        logging.info("run in %s is already complete (step %d)", workdir, start_step)
    manager.close()
    return TrainResult(state, test_counts)
