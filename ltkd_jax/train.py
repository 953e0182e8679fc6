"""The trainer: `train_and_evaluate(config, workdir)` and its pure, jitted steps.

The train step is a pure function of (student state, teacher variables, batch, per-epoch
context). It is compiled once with `jax.jit` over a 1-D data mesh: the batch is sharded,
the state replicated and donated, the teacher passed as an explicit constant argument
(never closed over, never donated, applied in inference mode behind stop_gradient).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct
from flax.training import train_state
from jax.experimental import multihost_utils

from ltkd_jax import (
    checkpointing,
    config_lib,
    data,
    feeds,
    methods,
    metrics,
    models,
    optim,
    rundir,
    sharding,
)
from ltkd_jax.data import device as device_data
from ltkd_jax.methods import ModelOutput
from ltkd_jax.models import cpu_ops
from ltkd_jax.writers import MetricWriter, read_metrics


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm running statistics."""

    batch_stats: Any = None


@struct.dataclass
class Teacher:
    """A frozen teacher: its module (static) and its variables (a constant pytree)."""

    variables: dict
    model: Any = struct.field(pytree_node=False)


def variables_of(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def compute_dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def build_model(
    config: ml_collections.ConfigDict,
    num_classes: int,
    *,
    teachers: tuple[Teacher, ...] = (),
):
    """The student of `config`, shaped to what its method needs from the teachers."""
    m = config.model
    needs = methods.needs_of(config) if teachers else methods.Needs()
    teacher_dims = [t.model.feature_dim for t in teachers]
    projection_dim = m.projection_dim or None
    if needs.projection:  # CBD: Dense(sum of teacher widths) + ReLU (methods.md 8.2)
        projection_dim = sum(teacher_dims)
    return models.get_model(
        m.name,
        num_classes,
        head=m.head,
        dtype=compute_dtype(m.dtype),
        projection_dim=projection_dim,
        regressor_dim=teacher_dims[0] if needs.regressor else None,
        ops=cpu_ops.model_ops(cpu_kernels(config)),
        # Runs recorded before the field existed lack it; it only changes the initial state.
        zero_init_residual=m.get("zero_init_residual", False),
    )


def cpu_kernels(config: ml_collections.ConfigDict) -> str:
    """config.model.cpu_kernels; 'auto' for runs recorded before the field existed."""
    return config.model.get("cpu_kernels", "auto")


def create_train_state(
    model, tx: optax.GradientTransformation, image_shape: tuple, seed: int, mesh
) -> TrainState:
    """Initialises the state directly replicated on the mesh (no host copy)."""

    def init(rng):
        variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=tx,
        )

    return jax.jit(init, out_shardings=sharding.replicated(mesh))(jax.random.key(seed))


def input_stats(config: ml_collections.ConfigDict, image_shape: tuple) -> tuple[tuple, tuple]:
    """(mean, std) the step normalises with; identity when config.data.normalize is off."""
    if config.data.normalize:
        return data.dataset_stats(config.data.name)
    channels = image_shape[-1]
    return (0.0,) * channels, (1.0,) * channels


def preprocess(images: jnp.ndarray, mean, std) -> jnp.ndarray:
    """uint8 NHWC -> normalised float32, on device (a quarter of the bytes cross to it)."""
    return data.normalize(images, mean, std)


def apply_teachers(teachers: tuple[Teacher, ...], images: jnp.ndarray) -> tuple:
    """Frozen teachers in inference mode (BatchNorm running statistics), no gradient."""
    outputs = []
    for teacher in teachers:
        logits, features = teacher.model.apply(teacher.variables, images, train=False)
        outputs.append(ModelOutput(logits.astype(jnp.float32), features.astype(jnp.float32)))
    return jax.lax.stop_gradient(tuple(outputs))


def train_step(
    state: TrainState,
    teachers: tuple[Teacher, ...],
    batch: dict,
    ctx: dict,
    *,
    method: methods.Method,
    schedule: Callable,
    mean: tuple,
    std: tuple,
) -> tuple[TrainState, dict]:
    """One SGD step on the student; the teachers only feed the loss."""
    images = preprocess(batch["image"], mean, std)
    labels = batch["label"]
    teacher_outputs = apply_teachers(teachers, images)
    # A frozen backbone (cRT) keeps its BatchNorm statistics: inference mode.
    train_mode = not method.needs.frozen_backbone

    def loss_fn(params):
        (logits, features), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=train_mode,
            mutable=["batch_stats"],
        )
        student = ModelOutput(logits.astype(jnp.float32), features.astype(jnp.float32))
        loss, parts = method.loss(student, labels, teacher_outputs, ctx)
        return loss, (parts, updates["batch_stats"], student.logits)

    (loss, (parts, batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    step_metrics = {
        "loss": loss,
        "train_top1": jnp.mean(jnp.argmax(logits, -1) == labels),
        "lr": schedule(state.step),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(state.params),
        **{f"loss_{k}": v for k, v in parts.items()},
    }
    return new_state, step_metrics


def eval_step(
    variables: dict,
    batch: dict,
    logit_offset: jnp.ndarray | None = None,
    *,
    model,
    mean: tuple,
    std: tuple,
) -> dict:
    """Per-class counts of one test batch; `logit_offset` [C] is added first (post-hoc LA)."""
    logits, _ = model.apply(variables, preprocess(batch["image"], mean, std), train=False)
    if logit_offset is not None:
        logits = logits.astype(jnp.float32) + logit_offset
    return metrics.eval_counts(logits, batch["label"], batch["mask"])


def _sum_eval_counts(eval_fn, variables, test_split, mesh, batch_size: int) -> dict:
    """Per-class counts over every test image exactly once, on any number of processes
    (padding is masked), batches fed from the host."""
    counts = None
    for local in data.eval_batches(
        test_split,
        batch_size=batch_size,  # global; each process yields its slice
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        counts = metrics.add_counts(counts, eval_fn(variables, sharding.global_batch(mesh, local)))
    return counts


def evaluate(eval_fn, variables, test_split, mesh, batch_size: int, class_groups) -> dict:
    """Every test image exactly once, on any number of processes (padding is masked)."""
    counts = _sum_eval_counts(eval_fn, variables, test_split, mesh, batch_size)
    return metrics.summarize(counts, class_groups)


def train_chunk(
    state: TrainState,
    teachers: tuple[Teacher, ...],
    data: dict,
    plan: dict,
    ctx: dict,
    *,
    batch_sharding,
    **step_kwargs,
) -> tuple[TrainState, dict]:
    """`train_step` over the K global batches of a plan, in one `lax.scan` on the device.

    `data` is the device-resident split, `plan` the [K, B] indices and crops
    (`data.device.plan_batches`). Returns the final state and the stacked [K] metrics.
    """

    def body(state, step_plan):
        batch = jax.lax.with_sharding_constraint(
            device_data.make_batch(data, step_plan), batch_sharding
        )
        return train_step(state, teachers, batch, ctx, **step_kwargs)

    return jax.lax.scan(body, state, plan)


def train_planned_step(
    state: TrainState,
    teachers: tuple[Teacher, ...],
    data: dict,
    plan: dict,
    index: jnp.ndarray,
    ctx: dict,
    *,
    batch_sharding,
    **step_kwargs,
) -> tuple[TrainState, dict]:
    """`train_step` on global batch `index` of a plan, built on the device: the loop-free
    form of `train_chunk`, for backends where a scanned step is slow (XLA:CPU)."""
    step_plan = jax.tree.map(lambda x: x[index], plan)
    batch = jax.lax.with_sharding_constraint(
        device_data.make_batch(data, step_plan), batch_sharding
    )
    return train_step(state, teachers, batch, ctx, **step_kwargs)


def scans_steps(config: ml_collections.ConfigDict) -> bool:
    """Whether the device-resident path runs a chunk as one `lax.scan` (config.device_loop).

    auto: on accelerators, not on the CPU, where XLA runs a ResNet train step inside a while
    loop about 2.6-3x slower than the same step called on its own
    (results/device_resident_cpu.md), while Python's per-step dispatch costs nothing there.
    """
    if config.device_loop == "auto":
        return jax.default_backend() != "cpu"
    return config.device_loop == "scan"


def evaluate_resident(
    variables: dict, layout: dict, logit_offset=None, *, model, mean: tuple, std: tuple
) -> dict:
    """Summed `eval_step` counts over a device-resident test split ([N, B, ...] layout)."""
    step = functools.partial(eval_step, model=model, mean=mean, std=std)
    first = jax.tree.map(lambda x: x[0], layout)
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(step, variables, first, logit_offset)
    )

    def body(total, batch):
        counts = step(variables, batch, logit_offset)
        return jax.tree.map(jnp.add, total, counts), None

    return jax.lax.scan(body, zeros, layout)[0]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _first_non_finite(step0: int, chunk: dict) -> tuple[int, dict] | None:
    """(step, bad values) of the first step in a chunk of stacked [K] metrics with a
    non-finite value, or None."""
    finite = np.all([np.isfinite(v) for v in chunk.values()], axis=0)
    if finite.all():
        return None
    i = int(np.argmin(finite))
    return step0 + i + 1, {k: float(v[i]) for k, v in chunk.items() if not np.isfinite(v[i])}


def _time_estimate(seconds_per_step: float, steps_left: int) -> str:
    """The time estimate, from a timed window after compilation (evaluation not included)."""
    minutes = seconds_per_step * steps_left / 60
    return (
        f"{1000 * seconds_per_step:.0f} ms per step: about {minutes:.0f} min for the remaining "
        f"{steps_left} steps (plus evaluation)"
    )


def _check_finite(step0: int, chunk: dict, workdir: str) -> None:
    bad = _first_non_finite(step0, chunk)
    if bad:
        raise FloatingPointError(
            f"non-finite training metrics at step {bad[0]}: {bad[1]}. The last good checkpoint "
            f"in {checkpointing.checkpoint_dir(workdir)} is kept; lower config.optim.lr, check "
            "the data and the loss hyper-parameters, then rerun the same command to resume "
            "from it."
        )


class _TrainLog:
    """Per-step metrics of finished chunks -> one train record per log window.

    Windows end every config.log_every_steps steps and at every epoch end, whatever the
    chunk size, so records land on the same steps on the device and the host path.
    """

    def __init__(self, writer: MetricWriter, config, steps_per_epoch: int, progress):
        self.writer, self.progress = writer, progress
        self.log_every, self.batch_size = config.log_every_steps, config.batch_size
        self.steps_per_epoch = steps_per_epoch
        self.window: list[dict] = []
        self.seconds = 0.0

    def add(self, step0: int, chunk: dict, seconds: float) -> None:
        """Chunk = stacked [K] metrics of steps step0 .. step0 + K - 1 (host numpy)."""
        k = len(next(iter(chunk.values())))
        for i in range(k):
            step = step0 + i + 1
            self.window.append({name: v[i] for name, v in chunk.items()})
            self.seconds += seconds / k
            if step % self.log_every == 0 or step % self.steps_per_epoch == 0:
                self._flush(step)

    def _flush(self, step: int) -> None:
        scalars = {k: float(np.mean([m[k] for m in self.window])) for k in self.window[0]}
        scalars["images_per_sec"] = len(self.window) * self.batch_size / max(self.seconds, 1e-9)
        epoch = (step - 1) // self.steps_per_epoch + 1
        self.writer.write_scalars(
            step, scalars, log=self.progress.disable, epoch=epoch, split="train"
        )
        self.progress.set_postfix(loss=f"{scalars['loss']:.3f}", epoch=epoch)
        self.window, self.seconds = [], 0.0


def _chunks(start: int, total: int, steps_per_epoch: int, size: int):
    """(t0, t1) ranges covering [start, total), never crossing an epoch end."""
    t = start
    while t < total:
        epoch_end = (t // steps_per_epoch + 1) * steps_per_epoch
        t1 = min(epoch_end, total, t + size)
        yield t, t1
        t = t1


@functools.lru_cache(maxsize=8)
def _cached_splits(name: str, data_dir: str, archive: str, options: tuple):
    return data.load_dataset(
        name, data_dir=data_dir or None, archive=archive or None, **dict(options)
    )


def _load_splits(d: ml_collections.ConfigDict) -> data.DataSplits:
    """The dataset's splits, prepared once: on several hosts process 0 prepares, the others wait."""
    key = (d.name, d.data_dir, d.archive, tuple(sorted(data.split_options(d).items())))
    if jax.process_count() > 1 and jax.process_index() != 0:
        multihost_utils.sync_global_devices("ltkd_jax:data_prepared")
        return _cached_splits(*key)
    splits = _cached_splits(*key)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ltkd_jax:data_prepared")
    return splits


class TaskData(NamedTuple):
    """What a run trains and evaluates on (`data.task_splits`), with its `methods.Task`."""

    train: data.Split
    test: data.Split
    task: methods.Task
    val: data.Split | None  # selects the best checkpoint when present
    info: dict  # class names, data fingerprint, shot thresholds, ...: goes into task.json


def load_task_data(config: ml_collections.ConfigDict) -> TaskData:
    """The run's splits and task (`data.task_splits`: long-tail cut, val, checks, groups)."""
    d = config.data
    t = data.task_splits(_load_splits(d), d)
    task = methods.Task(class_counts=t.class_counts, class_groups=t.class_groups, dataset=d.name)
    return TaskData(t.train, t.test, task, t.val, t.info)


def load_task(config: ml_collections.ConfigDict):
    """(long-tailed train split, test split, `methods.Task`)."""
    t = load_task_data(config)
    return t.train, t.test, t.task


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    teachers: tuple[Teacher, ...] = (),
) -> TrainState:
    """Trains (or resumes) the run in `workdir` with frozen `teachers`; returns the final state."""
    mesh = sharding.make_mesh(config.num_devices)
    num_devices = mesh.devices.size
    config_lib.validate_config(config, num_devices=num_devices)
    needs = methods.needs_of(config)
    wanted = methods.num_teachers(config)
    if len(teachers) != wanted:
        raise ValueError(
            f"config.method={config.method!r} needs {wanted} teacher(s), got {len(teachers)}; "
            "use train.run(), which trains or loads them from config.teacher"
        )
    task_data = load_task_data(config)
    train_split, test_split, task, val_split = task_data[:4]
    num_classes = train_split.num_classes
    mean, std = input_stats(config, train_split.image_shape)
    eval_batch_size = _round_up(config.eval_batch_size, num_devices)
    if needs.feature_means:
        task = dataclasses.replace(
            task,
            teacher_feature_means=class_feature_means(
                teachers[0], train_split, mesh, eval_batch_size, mean, std
            ),
        )
    method = methods.make_method(config, task)
    rundir.check_resume_config(workdir, config)  # before anything is written
    writer = MetricWriter(workdir)
    writer.write_json("config.json", config.to_dict())
    logging.info(
        "%s: %s-LT IF %g, %d train images, %d classes, %d/%d/%d many/medium/few, %d devices",
        workdir,
        config.data.name,
        config.data.imbalance_factor,
        len(train_split),
        num_classes,
        *np.bincount(task.class_groups, minlength=3),
        num_devices,
    )

    feed, steps_per_epoch = _make_feed(config, train_split, mesh)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.num_epochs
    logging.info(
        "%s at %s, %d steps per epoch x %d epochs = %d steps, batches built %s (a time "
        "estimate follows the first chunk of steps after compilation)",
        config.model.name,
        "x".join(map(str, train_split.image_shape)),
        steps_per_epoch,
        config.num_epochs,
        total_steps,
        "on the device" if feed.on_device else "by grain on the host",
    )

    model = build_model(config, num_classes, teachers=teachers)
    schedule = optim.make_schedule(config.optim, steps_per_epoch, config.num_epochs)
    tx = optim.make_optimizer(config.optim, schedule)
    if needs.frozen_backbone:
        tx = optim.only_classifier(tx)
    state = create_train_state(model, tx, train_split.image_shape, config.seed, mesh)

    manager = checkpointing.make_manager(workdir, keep=config.keep_checkpoints)
    restored = checkpointing.restore_latest(manager, state, feed.checkpoint_item(0))
    if restored is not None:
        state = restored
        logging.info("resumed from step %d in %s", int(state.step), workdir)
    elif config.init.workdir:
        state = init_from_run(state, config, num_classes, train_split.image_shape)
    start_step = int(state.step)
    writer.trim_after(start_step)  # records after the restored checkpoint are replayed

    writer.write_json(
        "task.json",
        {
            "dataset": config.data.name,
            "num_classes": num_classes,
            "image_shape": list(train_split.image_shape),
            "class_counts": task.class_counts,
            "class_groups": task.class_groups,
            "steps_per_epoch": steps_per_epoch,
            "num_devices": num_devices,
            **task_data.info,
        },
    )
    step_kwargs = dict(method=method, schedule=schedule, mean=mean, std=std)
    train_fn = _compile_train(config, mesh, feed, step_kwargs)
    evaluate_test, evaluate_val = (
        _make_evaluator(config, mesh, model, split, eval_batch_size, mean, std)
        if split is not None
        else None
        for split in (test_split, val_split)
    )
    progress = _progress_bar(config, total_steps, start_step)
    log = _TrainLog(writer, config, steps_per_epoch, progress)
    chunk = config.scan_steps if feed.on_device else config.log_every_steps
    for n, (t0, t1) in enumerate(
        _chunks(start_step, total_steps, steps_per_epoch, chunk or steps_per_epoch)
    ):
        epoch = t0 // steps_per_epoch
        ctx = jax.device_put(method.epoch_context(epoch), sharding.replicated(mesh))
        started = time.perf_counter()
        state, chunk_metrics = train_fn(state, teachers, ctx, t0, t1)
        chunk_metrics = jax.device_get(chunk_metrics)  # the one host sync of the chunk
        seconds = time.perf_counter() - started
        _check_finite(t0, chunk_metrics, workdir)
        log.add(t0, chunk_metrics, seconds)
        if n < 2 and t1 < total_steps:  # the first chunk holds the compile: an upper bound
            estimate = _time_estimate(seconds / (t1 - t0), total_steps - t1)
            logging.info(estimate + (" (compile included: an upper bound)" if n == 0 else ""))
        progress.update(t1 - t0)
        end_of_epoch = t1 % steps_per_epoch == 0
        if end_of_epoch and ((epoch + 1) % config.eval_every_epochs == 0 or t1 == total_steps):
            progress.set_postfix_str(f"epoch {epoch + 1}: evaluating")
            results = metrics.summarize(evaluate_test(variables_of(state)), task.class_groups)
            writer.write_scalars(t1, results, epoch=epoch + 1, split="test")
            if evaluate_val is not None:  # val, when there is one, chooses the best checkpoint
                results = metrics.summarize(evaluate_val(variables_of(state)), task.class_groups)
                writer.write_scalars(t1, results, epoch=epoch + 1, split="val")
            # Asynchronous: the next chunk runs while orbax writes this one.
            checkpointing.save(
                manager, t1, state, feed.checkpoint_item(t1), {"top1": results["top1"]}
            )
        if t1 < total_steps and _any_process_stopping():  # SIGTERM / SIGINT: at a chunk's end
            if manager.latest_step() != t1:
                checkpointing.save(manager, t1, state, feed.checkpoint_item(t1), None)
            manager.wait_until_finished()
            progress.close()
            writer.close()
            raise rundir.Preempted(t1, workdir)
    progress.close()
    manager.wait_until_finished()
    if start_step >= total_steps:
        logging.info("run in %s is already complete (step %d)", workdir, start_step)
    manager.close()
    writer.close()
    return state


def _stack(step_metrics: list[dict]) -> dict:
    """Per-step metric dicts -> one dict of [K] arrays, as `train_chunk` returns them."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *step_metrics)


def _any_process_stopping() -> bool:
    """Whether any process got SIGTERM / SIGINT: all of them stop at the same chunk end, so
    a preempted pod saves one consistent checkpoint instead of hanging in a collective."""
    stopping = rundir.stop_requested()
    if jax.process_count() == 1:
        return stopping
    return bool(multihost_utils.process_allgather(np.int32(stopping)).max())


def _make_feed(config: ml_collections.ConfigDict, train_split, mesh):
    """(feed, uncapped steps per epoch): on the device when the split allows it."""
    if config.batch_size > len(train_split):
        raise ValueError(
            f"config.batch_size={config.batch_size} exceeds the {len(train_split)} training "
            "images; lower it"
        )
    steps_per_epoch = len(train_split) // config.batch_size
    if feeds.uses_device(config, train_split):
        return feeds.DeviceFeed(train_split, config, mesh), steps_per_epoch
    iterator, _ = data.make_train_iterator(
        train_split,
        global_batch_size=config.batch_size,
        sampler=config.data.sampler,
        seed=config.seed,
        num_epochs=config.num_epochs,
        augment=config.data.augment,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=config.data.num_workers,
        crop_min_area=config.data.crop_min_area,
        color_jitter=config.data.color_jitter,
    )
    return feeds.HostFeed(iterator, mesh), steps_per_epoch


def _compile_train(config: ml_collections.ConfigDict, mesh, feed, step_kwargs: dict):
    """train_fn(state, teachers, ctx, t0, t1) -> (state, stacked [t1 - t0] metrics)."""
    repl = sharding.replicated(mesh)
    options = cpu_ops.compiler_options(cpu_kernels(config))
    if feed.on_device:
        kwargs = dict(batch_sharding=sharding.data_sharded(mesh), **step_kwargs)
        jit = functools.partial(
            jax.jit, donate_argnums=(0,), out_shardings=(repl, repl), compiler_options=options
        )
        if scans_steps(config):
            p_chunk = jit(functools.partial(train_chunk, **kwargs))
            return lambda state, teachers, ctx, t0, t1: p_chunk(
                state, teachers, feed.data, feed.plan(t0, t1), ctx
            )
        p_planned = jit(functools.partial(train_planned_step, **kwargs))

        def planned_steps(state, teachers, ctx, t0, t1):
            plan, outputs = feed.plan(t0, t1), []
            for i in range(t1 - t0):  # dispatched asynchronously: no host sync in between
                state, step_metrics = p_planned(state, teachers, feed.data, plan, np.int32(i), ctx)
                outputs.append(step_metrics)
            return state, _stack(outputs)

        return planned_steps
    p_step = jax.jit(
        functools.partial(train_step, **step_kwargs),
        donate_argnums=(0,),
        out_shardings=(repl, repl),
        compiler_options=options,
    )

    def host_chunk(state, teachers, ctx, t0, t1):
        outputs = []
        for batch in feed.batches(t1 - t0):
            state, step_metrics = p_step(state, teachers, batch, ctx)
            outputs.append(step_metrics)
        return state, _stack(outputs)

    return host_chunk


def _make_evaluator(config, mesh, model, test_split, batch_size: int, mean, std):
    """variables -> summed per-class counts over the test split (one call when resident)."""
    repl = sharding.replicated(mesh)
    options = cpu_ops.compiler_options(cpu_kernels(config))
    if config.data.device_resident and isinstance(test_split, data.ArraySplit):
        layout = device_data.eval_layout(test_split, batch_size, mesh)
        p_eval = jax.jit(
            functools.partial(evaluate_resident, model=model, mean=mean, std=std),
            out_shardings=repl,
            compiler_options=options,
        )
        return lambda variables: jax.device_get(p_eval(variables, layout))
    p_eval_step = jax.jit(
        functools.partial(eval_step, model=model, mean=mean, std=std),
        out_shardings=repl,
        compiler_options=options,
    )
    return lambda variables: _sum_eval_counts(p_eval_step, variables, test_split, mesh, batch_size)


# ---------------------------------------------------------------------------------------
# Teachers and runs that start from another run
# ---------------------------------------------------------------------------------------


def read_run_info(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
    """The config and task description a finished run wrote into its workdir."""
    paths = [os.path.join(workdir, name) for name in ("config.json", "task.json")]
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: {workdir} is not a ltkd_jax run directory (or the run never "
                "started); point the config at a finished run's --workdir"
            )
    with open(paths[0]) as f:
        run_config = ml_collections.ConfigDict(json.load(f))
    with open(paths[1]) as f:
        run_task = json.load(f)
    return run_config, run_task


def check_compatible(
    what: str, workdir: str, run_config, run_task: dict, config, num_classes, image_shape
) -> None:
    """A teacher / init run must match the student task: dataset (and, for prepared image
    data, its contents' fingerprint), classes, input shape."""
    problems, fixes = [], []
    if run_config.data.name != config.data.name:
        problems.append(
            f"it was trained on {run_config.data.name!r}, the student on {config.data.name!r}"
        )
    ours = _load_splits(config.data).train.fingerprint
    theirs = run_task.get("data_fingerprint", "")
    if ours and theirs and ours != theirs:
        problems.append(
            f"its data (fingerprint {theirs[:12]}) differs from the student's ({ours[:12]}): "
            "another folder, or the same one with images added, removed or changed"
        )
        fixes.append("retrain it on this data (omit config.teacher.workdir to train it first)")
    if run_task["num_classes"] != num_classes:
        problems.append(f"it has {run_task['num_classes']} classes, the student task {num_classes}")
    if tuple(run_task["image_shape"]) != tuple(image_shape):
        problems.append(
            f"its input shape is {tuple(run_task['image_shape'])}, the student's "
            f"{tuple(image_shape)}"
        )
        fixes.append(
            f"set the student's image size to the run's: --config.data.image_size="
            f"{run_task['image_shape'][0]} (size={run_task['image_shape'][0]} in the folder "
            "configs)"
        )
    if problems:
        fixes.append(f"point the config at a run trained on the same dataset ({config.data.name})")
        raise config_lib.UserError(
            f"{what} in {workdir} does not fit this task: "
            + "; ".join(problems)
            + ". Fix: "
            + ", or ".join(fixes)
            + "."
        )


def _abstract_variables(model, image_shape: tuple, mesh) -> dict:
    """Shapes, dtypes and (replicated) shardings of a model's variables, nothing allocated."""
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jnp.zeros((1, *image_shape), jnp.float32),
    )
    repl = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)


def load_frozen(workdir: str, run_config, num_classes: int, image_shape: tuple, mesh) -> Teacher:
    """A finished run's last checkpoint as a frozen model (methods.md 10.17: last epoch)."""
    model = build_model(run_config, num_classes)
    target = _abstract_variables(model, image_shape, mesh)
    variables, step = checkpointing.restore_variables(workdir, target)
    logging.info("%s (step %d) loaded from %s", run_config.model.name, step, workdir)
    return Teacher(variables=variables, model=model)


def fold_teacher(teacher: Teacher) -> Teacher:
    """The same frozen teacher with BatchNorm folded into its convs, where its architecture
    allows (cpu_ops.fold_batchnorm): equal outputs within float tolerance, fewer passes."""
    model, variables = models.fold_for_inference(teacher.model, teacher.variables)
    return Teacher(variables=variables, model=model)


def load_teacher(config, workdir: str, num_classes: int, image_shape: tuple, mesh) -> Teacher:
    """A teacher run, checked against the student task and `config.teacher.model`."""
    run_config, run_task = read_run_info(workdir)
    check_compatible("the teacher", workdir, run_config, run_task, config, num_classes, image_shape)
    if config.teacher.model and run_config.model.name != config.teacher.model:
        raise config_lib.UserError(
            f"the teacher in {workdir} is a {run_config.model.name}, but config.teacher.model="
            f"{config.teacher.model!r}; set --config.teacher.model={run_config.model.name} or "
            "point config.teacher.workdir at the intended teacher"
        )
    return load_frozen(workdir, run_config, num_classes, image_shape, mesh)


def init_from_run(state: TrainState, config, num_classes: int, image_shape: tuple) -> TrainState:
    """Starts from a finished run's weights; the classifier is re-initialised (cRT)."""
    workdir = config.init.workdir
    run_config, run_task = read_run_info(workdir)
    check_compatible(
        "the init run", workdir, run_config, run_task, config, num_classes, image_shape
    )
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        variables_of(state),
    )
    variables, step = checkpointing.restore_variables(workdir, target)
    params = dict(variables["params"])
    if methods.needs_of(config).frozen_backbone:
        params["classifier"] = state.params["classifier"]  # fresh classifier to re-train
    logging.info("initialised from %s (step %d)", workdir, step)
    return state.replace(
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=state.tx.init(params),
    )


def teacher_config(config: ml_collections.ConfigDict, index: int) -> ml_collections.ConfigDict:
    """Stage 1: the teacher recipe of a distillation config (plain CE, instance sampling).

    Teacher k trains with `config_lib.teacher_seed(config.seed, k)`, so no teacher shares the
    student's initial weights, sampler order or augmentation stream. The last
    config.teacher.color_jitter_teachers teachers add colour jitter + grayscale
    (data.color_jitter). So CBD_ENS's vanilla_seed1/2, data_aug_seed1/2 are here teachers 0-1
    and 2-3, four distinct seeds: the data-aug pair does not reuse the vanilla pair's seeds.
    """
    t = ml_collections.ConfigDict(config.to_dict())
    t.method = "ce"
    t.model.name = config.teacher.model
    t.model.head = config.teacher.head
    t.model.projection_dim = 0
    t.num_epochs = config.teacher.num_epochs
    t.seed = config_lib.teacher_seed(config.seed, index)
    t.data.color_jitter = index >= config.teacher.count - config.teacher.color_jitter_teachers
    t.data.sampler = "instance"
    t.loss.class_weighting = "none"
    t.teacher.workdir = ""
    t.init.workdir = ""
    return config_lib.lock(t)


def teacher_workdirs(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Where the teachers are: config.teacher.workdir, or WORKDIR/teacher[_k] to train."""
    count = methods.num_teachers(config)
    if config.teacher.workdir:
        dirs = [d.strip() for d in config.teacher.workdir.split(",") if d.strip()]
        if len(dirs) != count:
            raise config_lib.UserError(
                f"config.method={config.method!r} needs {count} teacher(s) but "
                f"config.teacher.workdir names {len(dirs)}"
            )
        return dirs
    if count == 1:
        return [os.path.join(workdir, "teacher")]
    return [os.path.join(workdir, f"teacher_{k}") for k in range(count)]


def prepare_teachers(config: ml_collections.ConfigDict, workdir: str) -> tuple[Teacher, ...]:
    """Loads the method's teachers, training them first (stage 1) when none is given."""
    dirs = teacher_workdirs(config, workdir)
    if not dirs:
        return ()
    if not config.teacher.workdir:
        for k, teacher_dir in enumerate(dirs):
            logging.info("stage 1: teacher %d of %d in %s", k + 1, len(dirs), teacher_dir)
            train_and_evaluate(teacher_config(config, k), teacher_dir)
    mesh = sharding.make_mesh(config.num_devices)
    train_split, _, _ = load_task(config)
    teachers = tuple(
        load_teacher(config, d, train_split.num_classes, train_split.image_shape, mesh)
        for d in dirs
    )
    if cpu_ops.cpu_kernels_enabled(cpu_kernels(config)):
        teachers = tuple(fold_teacher(t) for t in teachers)
    return teachers


def class_feature_means(
    teacher: Teacher, split, mesh, batch_size: int, mean: tuple, std: tuple
) -> np.ndarray:
    """Per-class mean teacher feature on un-augmented training images (methods.md 7.2)."""

    @jax.jit
    def sums(variables, batch):
        images = preprocess(batch["image"], mean, std)
        _, features = teacher.model.apply(variables, images, train=False)
        onehot = jax.nn.one_hot(batch["label"], split.num_classes) * batch["mask"][:, None]
        return onehot.T @ features.astype(jnp.float32), onehot.sum(0)

    totals = None
    for local in data.eval_batches(
        split,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        totals = metrics.add_counts(
            totals, sums(teacher.variables, sharding.global_batch(mesh, local))
        )
    feature_sums, counts = totals
    return feature_sums / np.maximum(counts, 1)[:, None]


def _progress_bar(config, total: int, initial: int):
    from tqdm import tqdm

    disable = not config.progress_bar or jax.process_index() != 0
    return tqdm(total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True)


def summarize_run(workdir: str) -> dict:
    """Final and best test results of a run, read from its metrics file (the current
    records only: those a resume replayed are dropped).

    "best" is the test record of the evaluation with the highest top-1 on the val split
    when the run has one (`selected_on` says which split chose it), else on test.
    """
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    tests = [r for r in records if r["split"] == "test"]
    if not tests:
        raise ValueError(f"no evaluation recorded in {workdir}/metrics.jsonl")
    vals = [r for r in records if r["split"] == "val"]
    if vals:
        chosen = max(vals, key=lambda r: r["top1"])["step"]
        best = next(r for r in tests if r["step"] == chosen)
    else:
        best = max(tests, key=lambda r: r["top1"])
    return {"final": tests[-1], "best": best, "selected_on": "val" if vals else "test"}


def format_summary(name: str, summary: dict) -> str:
    def pct(x):
        return "  n/a" if x is None or x != x else f"{100 * x:5.1f}"

    final, best = summary["final"], summary["best"]
    chosen = f", chosen on {summary.get('selected_on', 'test')}"
    return (
        f"{name:<10} final (epoch {final['epoch']}): top-1 {pct(final['top1'])}%  "
        f"mean-class {pct(final.get('mean_class_acc'))}%  many {pct(final['many'])}%  "
        f"medium {pct(final['medium'])}%  few {pct(final['few'])}%"
        f"  | best top-1 {pct(best['top1'])}% (epoch {best['epoch']}{chosen})"
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The command-line job: stage 1 teachers if needed, then the run; prints the results."""
    from ltkd_jax import posthoc  # it builds on this module

    if config.method in posthoc.POSTHOC:
        best = posthoc.run(config, workdir)
        rundir.write_summary(workdir, {"final": best, "best": best})
        if jax.process_index() == 0:
            print(format_summary("corrected", summarize_run(config.init.workdir)), flush=True)
            name = f"{config.method} tau={best['tau']:g}"
            print(format_summary(name, {"final": best, "best": best}), flush=True)
        return best
    teachers = prepare_teachers(config, workdir)
    stage = "stage 2, the student" if teachers else "training"
    logging.info("%s: %s in %s", stage, config.method, workdir)
    train_and_evaluate(config, workdir, teachers=teachers)
    summary = summarize_run(workdir)
    rundir.write_summary(workdir, summary)
    from ltkd_jax import report  # it builds on this module

    report.write_training_reports(config, workdir)  # WORKDIR/report/, labels, preprocessing
    if jax.process_index() == 0:
        lines = []
        for k, teacher_dir in enumerate(teacher_workdirs(config, workdir)):
            name = "teacher" if len(teachers) == 1 else f"teacher_{k}"
            lines.append(format_summary(name, summarize_run(teacher_dir)))
        lines.append(format_summary(config.method, summary))
        print("\n".join(lines), flush=True)
    return summary
