"""Throughput of the jitted steps on whatever device JAX sees.

    python scripts/benchmark.py                      # ResNet-32, batch 128, CIFAR-sized input
    python scripts/benchmark.py --model=resnet8 --steps=5 --repeats=2

Times three pure-compute steps on a pre-built batch (no input pipeline):
- `teacher step`: a CE train step (what training a teacher costs);
- `student step`: a BKD train step with the frozen teacher's forward pass inside it;
- `eval`: the evaluation step at the evaluation batch size.
For each: compile time, images/s (median over repeats, with min-max spread), and peak
memory (host RSS on CPU, device peak on GPU/TPU).
"""

from __future__ import annotations

import functools
import resource
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from ltkd_jax import config_lib, methods, optim, train

_MODEL = flags.DEFINE_string("model", "resnet32", "Model name (student and teacher).")
_CLASSES = flags.DEFINE_integer("num_classes", 100, "Number of classes.")
_BATCH = flags.DEFINE_integer("batch", 128, "Training batch size.")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch", 100, "Evaluation batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats (the median is reported).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


def _peak_memory_gib() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _time(fn, steps: int, repeats: int, batch: int) -> list[float]:
    """images/s of `fn()` (which dispatches one step) over `repeats` runs of `steps` calls."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = fn()
        jax.block_until_ready(out)
        rates.append(steps * batch / (time.perf_counter() - start))
    return rates


def main(argv):
    del argv
    config = config_lib.base_config()
    config.model.name = _MODEL.value
    config.model.dtype = _DTYPE.value
    mesh = train.sharding.make_mesh(0)
    n, b = _CLASSES.value, _BATCH.value
    class_counts = np.maximum((500 * 0.01 ** (np.arange(n) / (n - 1))).astype(int), 1)
    model = train.build_model(config, n)
    schedule = optim.make_schedule(config.optim, 100, 200)
    tx = optim.make_optimizer(config.optim, schedule)
    rng = np.random.default_rng(0)
    repl = train.sharding.replicated(mesh)

    def make_batch(size):
        local = {
            "image": rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, n, (size,), dtype=np.int32),
            "mask": np.ones((size,), bool),
        }
        return train.sharding.global_batch(mesh, local)

    batch, eval_batch = make_batch(b), make_batch(_EVAL_BATCH.value)
    mean, std = train.data.CIFAR_MEAN, train.data.CIFAR_STD
    teacher_state = train.create_train_state(model, tx, (32, 32, 3), 1, mesh)
    teachers = (train.Teacher(variables=train.variables_of(teacher_state), model=model),)
    task = methods.Task(class_counts=class_counts, class_groups=np.zeros(n, np.int32))
    bkd = config_lib.base_config()
    bkd.method, bkd.loss.class_weighting = "bkd", "reweight"

    rows = []
    for name, method, step_teachers in (
        ("teacher step (CE)", methods.make_method(config, task), ()),
        ("student step (BKD + teacher fwd)", methods.make_method(bkd, task), teachers),
    ):
        step = jax.jit(
            functools.partial(
                train.train_step, method=method, schedule=schedule, mean=mean, std=std
            ),
            donate_argnums=(0,),
            out_shardings=(repl, repl),
        )
        state = train.create_train_state(model, tx, (32, 32, 3), 0, mesh)
        ctx = jax.device_put(method.epoch_context(0), repl)
        start = time.perf_counter()
        compiled = step.lower(state, step_teachers, batch, ctx).compile()
        compile_s = time.perf_counter() - start
        holder = {"state": state}

        def run_step(compiled=compiled, t=step_teachers, ctx=ctx, holder=holder):
            holder["state"], step_metrics = compiled(holder["state"], t, batch, ctx)
            return step_metrics["loss"]

        _time(run_step, 2, 1, b)  # warm-up
        rates = _time(run_step, _STEPS.value, _REPEATS.value, b)
        rows.append((name, b, compile_s, rates))

    eval_fn = jax.jit(
        functools.partial(train.eval_step, model=model, mean=mean, std=std), out_shardings=repl
    )
    variables = train.variables_of(teacher_state)
    start = time.perf_counter()
    compiled_eval = eval_fn.lower(variables, eval_batch).compile()
    compile_s = time.perf_counter() - start
    run_eval = functools.partial(compiled_eval, variables, eval_batch)
    _time(run_eval, 2, 1, 1)  # warm-up
    rates = _time(run_eval, _STEPS.value, _REPEATS.value, _EVAL_BATCH.value)
    rows.append(("eval", _EVAL_BATCH.value, compile_s, rates))

    device = jax.devices()[0]
    print(f"\nltkd_jax {_MODEL.value}, {_DTYPE.value}, {len(jax.devices())} x {device.device_kind}")
    print(f"{'step':<34} {'batch':>5} {'compile s':>9} {'images/s':>9} {'spread':>15}")
    for name, size, compile_s, rates in rows:
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        print(
            f"{name:<34} {size:>5} {compile_s:>9.1f} {statistics.median(rates):>9.1f} {spread:>15}"
        )
    print(f"peak memory: {_peak_memory_gib():.2f} GiB")


if __name__ == "__main__":
    app.run(main)
