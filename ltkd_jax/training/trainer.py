"""The trainer: `train_and_evaluate(config, workdir)`, one loop over chunks of steps
(`steps.py`), evaluating and checkpointing at epoch ends."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax import data, methods
from ltkd_jax.config import checks
from ltkd_jax.models import cpu_ops
from ltkd_jax.runs import finished, rundir
from ltkd_jax.training import (
    checkpointing,
    evaluation,
    feeds,
    metrics,
    networks,
    optim,
    progress,
    sharding,
    steps,
)
from ltkd_jax.training.writers import MetricWriter


def scans_steps(config: ml_collections.ConfigDict) -> bool:
    """Whether the device-resident path runs a chunk as one `lax.scan` (config.device_loop).

    auto: on accelerators, not on the CPU, where XLA runs a ResNet train step inside a while
    loop about 2.6-3x slower than the same step called on its own
    (results/device_resident_cpu.md), while Python's per-step dispatch costs nothing there.
    """
    if config.device_loop == "auto":
        return jax.default_backend() != "cpu"
    return config.device_loop == "scan"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class _Run:
    """What a run's loop needs, built once by `_setup`."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    data: data.TaskSplits
    task: methods.Task  # with the teacher's class feature means when the method needs them
    method: methods.Method
    feed: Any  # feeds.DeviceFeed | feeds.HostFeed
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


def _setup(config: ml_collections.ConfigDict, workdir: str, teachers: tuple) -> _Run:
    """Checks the config, reads the data, makes the method and the feed."""
    mesh = sharding.make_mesh(config.num_devices)
    checks.validate_config(config, num_devices=mesh.devices.size)
    _check_teachers(config, teachers)
    run_data = data.load_task(config.data)
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
        "on the device" if run.feed.on_device else "by grain on the host",
    )


def _initial_state(run: _Run, model, schedule, manager) -> networks.TrainState:
    """A fresh state, the run's latest checkpoint, or (cRT) a finished run's weights."""
    config, split = run.config, run.data.train
    tx = optim.make_optimizer(config.optim, schedule)
    if run.method.needs.frozen_backbone:
        tx = optim.only_classifier(tx)
    state = networks.create_train_state(model, tx, split.image_shape, config.seed, run.mesh)
    restored = checkpointing.restore_latest(manager, state, run.feed.checkpoint_item(0))
    if restored is not None:
        logging.info("resumed from step %d in %s", int(restored.step), run.workdir)
        return restored
    if config.init.workdir:
        return finished.init_from_run(state, config, split.num_classes, split.image_shape)
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


def _evaluate_and_save(run: _Run, state, t1: int, evaluators, writer, manager) -> None:
    """Test (and val) results of the state after step t1; an asynchronous checkpoint."""
    epoch = t1 // run.steps_per_epoch
    results = None
    for split, evaluate in zip(("test", "val"), evaluators, strict=True):
        if evaluate is not None:  # val, when there is one, chooses the best checkpoint
            results = metrics.summarize(
                evaluate(networks.variables_of(state)), run.task.class_groups
            )
            writer.write_scalars(t1, results, epoch=epoch, split=split)
    # Asynchronous: the next chunk runs while orbax writes this one.
    checkpointing.save(manager, t1, state, run.feed.checkpoint_item(t1), {"top1": results["top1"]})


def _evaluates_after(run: _Run, t1: int) -> bool:
    """Whether step t1 ends an epoch that is evaluated (every config.eval_every_epochs, and
    the last)."""
    epochs_done, steps_into_epoch = divmod(t1, run.steps_per_epoch)
    if steps_into_epoch:
        return False
    return epochs_done % run.config.eval_every_epochs == 0 or t1 == run.total_steps


def _train_loop(run: _Run, state, teachers, train_fn, evaluators, writer, manager, bar):
    """Runs the chunks from the state's step to the end; evaluates and saves at epoch ends;
    stops at a chunk end on SIGTERM / SIGINT (`rundir.Preempted`)."""
    log = progress.TrainLog(writer, run.config, run.steps_per_epoch, bar)
    size = (run.config.scan_steps if run.feed.on_device else run.config.log_every_steps) or (
        run.steps_per_epoch
    )
    total = run.total_steps
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
        if n == 0:  # the first chunk holds the compile: no estimate from it
            logging.info(progress.compile_note(seconds, t1 - t0))
        elif n == 1 and t1 < total:
            logging.info(progress.time_estimate(seconds / (t1 - t0), total - t1))
        bar.update(t1 - t0)
        if _evaluates_after(run, t1):
            bar.set_postfix_str(f"epoch {t1 // run.steps_per_epoch}: evaluating")
            _evaluate_and_save(run, state, t1, evaluators, writer, manager)
        if t1 < total and progress.any_process_stopping():  # at a chunk's end
            if manager.latest_step() != t1:
                checkpointing.save(manager, t1, state, run.feed.checkpoint_item(t1), None)
            raise rundir.Preempted(t1, run.workdir)
    return state


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    teachers: tuple[networks.Teacher, ...] = (),
) -> networks.TrainState:
    """Trains (or resumes) the run in `workdir` with frozen `teachers`; returns the final state."""
    run = _setup(config, workdir, teachers)
    rundir.check_resume_config(workdir, config)  # before anything is written
    rundir.check_resume_data(workdir, run.data.info["data_fingerprint"])
    writer = MetricWriter(workdir)
    writer.write_json("config.json", config.to_dict())
    _log_start(run)
    model = networks.build_model(config, run.data.train.num_classes)
    schedule = optim.make_schedule(config.optim, run.steps_per_epoch, config.num_epochs)
    manager = checkpointing.make_manager(workdir, keep=config.keep_checkpoints)
    state = _initial_state(run, model, schedule, manager)
    start_step = int(state.step)
    writer.trim_after(start_step)  # records after the restored checkpoint are replayed
    writer.write_json("task.json", _task_record(run))
    step_kwargs = dict(method=run.method, schedule=schedule, mean=run.mean, std=run.std)
    train_fn = _compile_train(config, run.mesh, run.feed, step_kwargs)
    evaluators = tuple(
        None
        if split is None
        else evaluation.make_evaluator(
            config, run.mesh, model, split, run.eval_batch_size, run.mean, run.std
        )
        for split in (run.data.test, run.data.val)
    )
    bar = progress.progress_bar(config, run.total_steps, start_step)
    try:
        state = _train_loop(run, state, teachers, train_fn, evaluators, writer, manager, bar)
    finally:
        bar.close()
        manager.wait_until_finished()
        writer.close()
    if start_step >= run.total_steps:
        logging.info("run in %s is already complete (step %d)", workdir, start_step)
    manager.close()
    return state


def _compile_train(config: ml_collections.ConfigDict, mesh, feed, step_kwargs: dict):
    """train_fn(state, teachers, ctx, t0, t1) -> (state, stacked [t1 - t0] metrics)."""
    repl = sharding.replicated(mesh)
    options = cpu_ops.compiler_options(networks.cpu_kernels(config))
    if feed.on_device:
        kwargs = dict(batch_sharding=sharding.data_sharded(mesh), **step_kwargs)
        jit = functools.partial(
            jax.jit, donate_argnums=(0,), out_shardings=(repl, repl), compiler_options=options
        )
        if scans_steps(config):
            p_chunk = jit(functools.partial(steps.train_chunk, **kwargs))
            return lambda state, teachers, ctx, t0, t1: p_chunk(
                state, teachers, feed.data, feed.plan(t0, t1), ctx
            )
        p_planned = jit(functools.partial(steps.train_planned_step, **kwargs))

        def planned_steps(state, teachers, ctx, t0, t1):
            plan, outputs = feed.plan(t0, t1), []
            for i in range(t1 - t0):  # dispatched asynchronously: no host sync in between
                state, step_metrics = p_planned(state, teachers, feed.data, plan, np.int32(i), ctx)
                outputs.append(step_metrics)
            return state, progress.stack(outputs)

        return planned_steps
    p_step = jax.jit(
        functools.partial(steps.train_step, **step_kwargs),
        donate_argnums=(0,),
        out_shardings=(repl, repl),
        compiler_options=options,
    )

    def host_chunk(state, teachers, ctx, t0, t1):
        outputs = []
        for batch in feed.batches(t1 - t0):
            state, step_metrics = p_step(state, teachers, batch, ctx)
            outputs.append(step_metrics)
        return state, progress.stack(outputs)

    return host_chunk
