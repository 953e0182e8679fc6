"""The trainer: `train_and_evaluate(config, workdir)` and its pure, jitted steps.

The train step is a pure function of (student state, teacher variables, batch, per-epoch
context). It is compiled once with `jax.jit` over a 1-D data mesh: the batch is sharded,
the state replicated and donated, the teacher passed as an explicit constant argument
(never closed over, never donated, applied in inference mode behind stop_gradient).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct
from flax.training import train_state

from ltkd_jax import checkpointing, config_lib, data, methods, metrics, models, optim, sharding
from ltkd_jax.methods import ModelOutput
from ltkd_jax.writers import MetricWriter


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


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    m = config.model
    return models.get_model(
        m.name,
        num_classes,
        head=m.head,
        dtype=compute_dtype(m.dtype),
        projection_dim=m.projection_dim or None,
    )


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


def preprocess(images: jnp.ndarray, mean, std) -> jnp.ndarray:
    """uint8 NHWC -> normalised float32, on device (a quarter of the bytes cross to it)."""
    return data.normalize(images, mean, std)


def apply_teacher(teacher: Teacher | None, images: jnp.ndarray) -> ModelOutput | None:
    if teacher is None:
        return None
    logits, features = teacher.model.apply(teacher.variables, images, train=False)
    return jax.lax.stop_gradient(ModelOutput(logits, features))


def train_step(
    state: TrainState,
    teacher: Teacher | None,
    batch: dict,
    ctx: dict,
    *,
    method: methods.Method,
    schedule: Callable,
    mean: tuple,
    std: tuple,
) -> tuple[TrainState, dict]:
    """One SGD step on the student; the teacher only feeds the loss."""
    images = preprocess(batch["image"], mean, std)
    labels = batch["label"]
    teacher_out = apply_teacher(teacher, images)

    def loss_fn(params):
        (logits, features), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        student = ModelOutput(logits.astype(jnp.float32), features)
        loss, parts = method.loss(student, labels, teacher_out, ctx)
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


def eval_step(variables: dict, batch: dict, *, model, mean: tuple, std: tuple) -> dict:
    logits, _ = model.apply(variables, preprocess(batch["image"], mean, std), train=False)
    return metrics.eval_counts(logits, batch["label"], batch["mask"])


def evaluate(eval_fn, variables, test_split, mesh, batch_size: int, class_groups) -> dict:
    """Every test image exactly once, on any number of processes (padding is masked)."""
    counts = None
    for local in data.eval_batches(
        test_split,
        batch_size=batch_size,  # global; each process yields its slice
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        counts = metrics.add_counts(counts, eval_fn(variables, sharding.global_batch(mesh, local)))
    return metrics.summarize(counts, class_groups)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _mean_metrics(window: list[dict]) -> dict:
    stacked = jax.device_get(window)
    return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _check_finite(step: int, scalars: dict, workdir: str) -> None:
    bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite training metrics at step {step}: {bad}. The last good checkpoint in "
            f"{checkpointing.checkpoint_dir(workdir)} is kept; lower config.optim.lr, check the "
            "data and the loss hyper-parameters, then rerun the same command to resume from it."
        )


@functools.lru_cache(maxsize=8)
def _cached_splits(name: str, data_dir: str, archive: str):
    return data.load_splits(name, data_dir=data_dir or None, archive=archive or None)


def load_task(config: ml_collections.ConfigDict):
    """(long-tailed train split, balanced test split, class counts, shot groups)."""
    d = config.data
    train, test = _cached_splits(d.name, d.data_dir, d.archive)
    train_lt = data.make_longtail(train, d.imbalance_factor, profile=d.profile, seed=d.lt_seed)
    counts = train_lt.class_counts()
    groups = data.shot_groups(counts, many=d.many_threshold, few=d.few_threshold)
    return train_lt, test, counts, groups


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, teacher: Teacher | None = None
) -> TrainState:
    """Trains (or resumes) the run in `workdir`; returns the final state."""
    mesh = sharding.make_mesh(config.num_devices)
    num_devices = mesh.devices.size
    config_lib.validate_config(config, num_devices=num_devices)
    writer = MetricWriter(workdir)
    writer.write_json("config.json", config.to_dict())

    train_split, test_split, class_counts, class_groups = load_task(config)
    num_classes = train_split.num_classes
    method = methods.make_method(config, class_counts)
    if method.needs_teacher and teacher is None:
        raise ValueError(f"config.method={config.method!r} needs a teacher; none was given")
    logging.info(
        "%s-LT IF %g: %d train images, %d classes, %d/%d/%d many/medium/few; %d devices",
        config.data.name,
        config.data.imbalance_factor,
        len(train_split),
        num_classes,
        *np.bincount(class_groups, minlength=3),
        num_devices,
    )

    iterator, steps_per_epoch = data.make_train_iterator(
        train_split,
        global_batch_size=config.batch_size,
        sampler=config.data.sampler,
        seed=config.seed,
        num_epochs=config.num_epochs,
        augment=config.data.augment,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=config.data.num_workers,
    )
    if steps_per_epoch < 1:
        raise ValueError(
            f"config.batch_size={config.batch_size} exceeds the {len(train_split)} training "
            "images; lower it"
        )
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.num_epochs
    mean, std = data.dataset_stats(config.data.name)

    model = build_model(config, num_classes)
    schedule = optim.make_schedule(config.optim, steps_per_epoch, config.num_epochs)
    tx = optim.make_optimizer(config.optim, schedule)
    state = create_train_state(model, tx, train_split.image_shape, config.seed, mesh)

    manager = checkpointing.make_manager(workdir, keep=config.keep_checkpoints)
    restored = checkpointing.restore_latest(manager, state, iterator)
    if restored is not None:
        state = restored
        logging.info("resumed from step %d in %s", int(state.step), workdir)
    start_step = int(state.step)

    repl = sharding.replicated(mesh)
    p_train_step = jax.jit(
        functools.partial(train_step, method=method, schedule=schedule, mean=mean, std=std),
        donate_argnums=(0,),
        out_shardings=(repl, repl),
    )
    p_eval_step = jax.jit(
        functools.partial(eval_step, model=model, mean=mean, std=std), out_shardings=repl
    )
    eval_batch_size = _round_up(config.eval_batch_size, num_devices)

    writer.write_json(
        "task.json",
        {
            "class_counts": class_counts,
            "class_groups": class_groups,
            "steps_per_epoch": steps_per_epoch,
            "num_devices": num_devices,
        },
    )
    progress = _progress_bar(config, total_steps, start_step)
    window: list[dict] = []
    window_start = time.perf_counter()
    ctx = None
    for step in range(start_step, total_steps):
        epoch = step // steps_per_epoch
        if ctx is None or step % steps_per_epoch == 0:
            ctx = jax.device_put(method.epoch_context(epoch), repl)
        batch = sharding.global_batch(mesh, next(iterator))
        state, step_metrics = p_train_step(state, teacher, batch, ctx)
        window.append(step_metrics)
        progress.update(1)
        end_of_epoch = (step + 1) % steps_per_epoch == 0
        if (step + 1) % config.log_every_steps == 0 or end_of_epoch:
            scalars = _mean_metrics(window)
            elapsed = time.perf_counter() - window_start
            scalars["images_per_sec"] = len(window) * config.batch_size / elapsed
            _check_finite(step + 1, scalars, workdir)
            writer.write_scalars(
                step + 1, scalars, log=progress.disable, epoch=epoch + 1, split="train"
            )
            progress.set_postfix(loss=f"{scalars['loss']:.3f}", epoch=epoch + 1)
            window, window_start = [], time.perf_counter()
        last_step = step + 1 == total_steps
        if end_of_epoch and ((epoch + 1) % config.eval_every_epochs == 0 or last_step):
            results = evaluate(
                p_eval_step, variables_of(state), test_split, mesh, eval_batch_size, class_groups
            )
            writer.write_scalars(step + 1, results, epoch=epoch + 1, split="test")
            checkpointing.save(manager, step + 1, state, iterator, {"top1": results["top1"]})
            window_start = time.perf_counter()  # evaluation time is not training time
    progress.close()
    manager.wait_until_finished()
    if start_step >= total_steps:
        logging.info("run in %s is already complete (step %d)", workdir, start_step)
    manager.close()
    writer.close()
    return state


def _progress_bar(config, total: int, initial: int):
    from tqdm import tqdm

    disable = not config.progress_bar or jax.process_index() != 0
    return tqdm(total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True)


def summarize_run(workdir: str) -> dict:
    """Final and best test results of a run, read from its metrics file."""
    import os

    from ltkd_jax.writers import read_jsonl

    tests = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "test"]
    if not tests:
        raise ValueError(f"no evaluation recorded in {workdir}/metrics.jsonl")
    best = max(tests, key=lambda r: r["top1"])
    return {"final": tests[-1], "best": best}


def format_summary(name: str, summary: dict) -> str:
    def pct(x):
        return "  n/a" if x is None or x != x else f"{100 * x:5.1f}"

    final, best = summary["final"], summary["best"]
    return (
        f"{name:<10} final (epoch {final['epoch']}): top-1 {pct(final['top1'])}%  "
        f"many {pct(final['many'])}%  medium {pct(final['medium'])}%  few {pct(final['few'])}%"
        f"  | best top-1 {pct(best['top1'])}% (epoch {best['epoch']})"
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The command-line job: train (or resume) and print the result table."""
    train_and_evaluate(config, workdir)
    summary = summarize_run(workdir)
    if jax.process_index() == 0:
        print(format_summary(config.method, summary), flush=True)
    return summary
