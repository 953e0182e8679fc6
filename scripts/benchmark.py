"""Throughput of the jitted steps, side by side with the PyTorch original, in one process.

    python scripts/benchmark.py                      # ResNet-32, batch 128, CIFAR-sized input
    python scripts/benchmark.py --model=resnet8 --steps=5 --repeats=2 --nomemory
    python scripts/benchmark.py --loop --archive=../shared/data/cifar100-png.zip
    python scripts/benchmark.py --input              # ImageNet-style input pipeline
    python scripts/benchmark.py --convs              # the convolutions alone: the ceiling

Times three pure-compute steps on a pre-built batch (no input pipeline):
- `teacher step (CE)`: a CE train step (what training a teacher costs);
- `student step (BKD)`: a BKD train step with the frozen teacher's forward pass inside it;
- `eval`: the evaluation step at the evaluation batch size.
Each is run for ltkd_jax with the CPU fast paths on and off (`--cpu_kernels`, see
`ltkd_jax/models/cpu_ops.py`) and for the PyTorch reference (`scripts/torch_reference.py`,
the `bench` extra; skipped with a note when torch is missing). The variants alternate, repeat
by repeat, so machine drift hits all of them alike; the table gives the median images/s with
its min-max spread and the median of the per-repeat ratios ltkd_jax / PyTorch. Compile time
is JAX's lower + compile (PyTorch: its first step); peak memory is the peak RSS of a fresh
process running only that variant (`--memory`).

`--convs` times only the model's 3x3 convolutions, each followed by a ReLU (forward + backward
to the weights at the training batch, forward at the evaluation batch), for ltkd_jax and
PyTorch, next to PyTorch's whole CE and eval steps: a whole ltkd_jax step cannot be faster than
its convolutions, so `convs / PyTorch step` bounds the step ratio XLA's kernels allow.

`--loop` instead times whole training loops on CIFAR-100-LT (IF 100):
`trainer.train_and_evaluate` of a CE teacher and a BKD student, each two epochs of
`--loop_steps` steps, the second epoch timed (images/s as logged), once with the
device-resident epochs and once fed by grain from the host; next to the pure jitted steps
(one `loop/pure ratio` line per loop) and the PyTorch loop with a DataLoader and the BKD
repo's transforms. It ends with the peak host RSS and, where the backend reports it, the
peak device memory. `--loop_feeds` picks the loops, `--json` writes the numbers to a file;
`--archive`, `--imbalance_factor` and `--data_dir` choose the data (the GPU machine's already
long-tailed zip takes `--imbalance_factor=1`, see `scripts/gpu_check.sh`). `--input` times
the ImageNet-style input pipeline alone (JPEG decode + random-resized crop + flip at 224,
images/s per host with 0, 1, 2 grain workers; see `scripts/benchmark_input.py` for its own
options).
"""

from __future__ import annotations

import functools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ltkd_jax import data, methods
from ltkd_jax.config import defaults
from ltkd_jax.models import cpu_ops
from ltkd_jax.runs import teachers as teacher_stage
from ltkd_jax.training import evaluation, networks, optim, sharding, steps, trainer
from ltkd_jax.training.writers import read_jsonl

_MODEL = flags.DEFINE_string("model", "resnet32", "Model name (student and teacher).")
_CLASSES = flags.DEFINE_integer("num_classes", 100, "Number of classes.")
_BATCH = flags.DEFINE_integer("batch", 128, "Training batch size.")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch", 100, "Evaluation batch size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Repeats (the median is reported).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_CPU_KERNELS = flags.DEFINE_list(
    "cpu_kernels", ["on", "off"], "ltkd_jax variants: config.model.cpu_kernels values."
)
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads.")
_MEMORY = flags.DEFINE_bool("memory", True, "Peak RSS of each variant in a fresh process.")
_ONLY = flags.DEFINE_string("only", "", "Internal: run one variant (jax:on, torch) for --memory.")
_LOOP = flags.DEFINE_bool("loop", False, "Time whole training loops on CIFAR-100-LT instead.")
_ARCHIVE = flags.DEFINE_string(
    "archive", "../shared/data/cifar100-png.zip", "CIFAR-100 zip for --loop."
)
_IMBALANCE = flags.DEFINE_float(
    "imbalance_factor",
    100.0,
    "data.imbalance_factor for --loop (1 for an already long-tailed zip).",
)
_DATA_DIR = flags.DEFINE_string("data_dir", "", "data.data_dir for --loop; empty = the default.")
_LOOP_STEPS = flags.DEFINE_integer("loop_steps", 60, "Timed steps per loop (after warm-up).")
_LOOP_FEEDS = flags.DEFINE_list(
    "loop_feeds",
    ["resident", "grain"],
    "--loop variants: resident (device-resident epochs), grain.",
)
_JSON = flags.DEFINE_string("json", "", "--loop: also write the numbers to this JSON file.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Steps per logged window in --loop.")
_TORCH_WORKERS = flags.DEFINE_integer("torch_workers", 1, "DataLoader workers in --loop.")
_CONVS = flags.DEFINE_bool(
    "convs",
    False,
    "Time the model's convolutions alone (+ ReLU) against PyTorch's convolutions and whole steps: "
    "the ceiling XLA:CPU's convolution kernels put on the step ratios.",
)
_COHORT = flags.DEFINE_integer(
    "cohort",
    0,
    "K > 0: time K BKD students against one teacher as one cohort program and as K single "
    "runs of the same steps (ResNet-32 -> ResNet-32 and ResNet32x4 -> ResNet8x4); prints the "
    "speedup, per-member images/s and memory per member.",
)
_COHORT_PAIRS = flags.DEFINE_list(
    "cohort_pairs", ["resnet32:resnet32", "resnet32x4:resnet8x4"], "teacher:student pairs."
)
_COHORT_FORM = flags.DEFINE_enum(
    "cohort_form",
    "auto",
    ["auto", "vmapped", "one_by_one"],
    "How a cohort's members run: auto = the trainer's choice for this backend.",
)
_INPUT = flags.DEFINE_bool(
    "input",
    False,
    "Time the ImageNet-style input pipeline instead (JPEG decode + random-resized crop, "
    "images/s per host for 0/1/2 grain workers): runs scripts/benchmark_input.py.",
)

STEPS = ("teacher step (CE)", "student step (BKD)", "eval")
_PROBE = "PEAK_RSS_GIB"


def _class_counts(n: int) -> np.ndarray:
    return np.maximum((500 * 0.01 ** (np.arange(n) / max(n - 1, 1))).astype(int), 1)


def _peak_rss_gib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: a child's ru_maxrss starts at the RSS of
    the parent that forked it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _import_torch():
    """scripts/torch_reference (and torch), or None with a note when torch is missing."""
    try:
        import torch
    except ImportError:
        print("torch is not installed (pip install -e '.[bench]'): ltkd_jax numbers only.")
        return None
    torch.set_num_threads(_TORCH_THREADS.value)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference

    return torch_reference


def _torch_depth(model: str) -> int | None:
    """Depth of a CIFAR ResNet-(6n+2) name (the reference's only architecture)."""
    digits = model.removeprefix("resnet")
    return int(digits) if digits.isdigit() and (int(digits) - 2) % 6 == 0 else None


def _batches(n: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)

    def make(size: int) -> dict:
        return {
            "image": rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, n, (size,), dtype=np.int32),
            "mask": np.ones((size,), bool),
        }

    return make(_BATCH.value), make(_EVAL_BATCH.value)


def _step_config(setting: str, method: str = "ce"):
    c = defaults.base_config(method)
    c.model.name, c.model.dtype, c.model.cpu_kernels = _MODEL.value, _DTYPE.value, setting
    if method == "bkd":
        c.loss.class_weighting = "reweight"
    return c


def jax_steps(setting: str, batch: dict, eval_batch: dict) -> dict[str, tuple[Callable, float]]:
    """{step: (blocking callable, compile seconds)} of ltkd_jax with cpu_kernels=`setting`."""
    config, bkd = _step_config(setting), _step_config(setting, "bkd")
    mesh = sharding.make_mesh(1)
    repl = sharding.replicated(mesh)
    n = _CLASSES.value
    batch = sharding.global_batch(mesh, batch)
    eval_batch = sharding.global_batch(mesh, eval_batch)
    mean, std = data.CIFAR_MEAN, data.CIFAR_STD
    model = networks.build_model(config, n)
    schedule = optim.make_schedule(config.optim, 100, 200)
    tx = optim.make_optimizer(config.optim, schedule)
    options = cpu_ops.compiler_options(setting)
    teacher_vars = networks.variables_of(
        networks.create_train_state(model, tx, (32, 32, 3), 1, mesh)
    )
    teacher = networks.Teacher(variables=teacher_vars, model=model)
    if cpu_ops.cpu_kernels_enabled(setting):  # as teacher_stage.prepare_teachers does
        teacher = networks.fold_teacher(teacher)
    task = methods.Task(class_counts=_class_counts(n), class_groups=np.zeros(n, np.int32))

    out = {}
    for name, method_config, teachers in ((STEPS[0], config, ()), (STEPS[1], bkd, (teacher,))):
        method = methods.make(method_config, task)
        step = jax.jit(
            functools.partial(
                steps.train_step, method=method, schedule=schedule, mean=mean, std=std
            ),
            donate_argnums=(0,),
            out_shardings=(repl, repl),
            compiler_options=options,
        )
        state = networks.create_train_state(model, tx, (32, 32, 3), 0, mesh)
        ctx = jax.device_put(method.epoch_context(0), repl)
        start = time.perf_counter()
        compiled = step.lower(state, teachers, batch, ctx).compile()
        compile_s = time.perf_counter() - start
        holder = {"state": state}

        def run(compiled=compiled, teachers=teachers, ctx=ctx, holder=holder):
            holder["state"], metrics = compiled(holder["state"], teachers, batch, ctx)
            jax.block_until_ready(metrics["loss"])

        out[name] = (run, compile_s)

    eval_fn = jax.jit(
        functools.partial(evaluation.eval_step, model=model, mean=mean, std=std),
        out_shardings=repl,
        compiler_options=options,
    )
    start = time.perf_counter()
    compiled_eval = eval_fn.lower(teacher_vars, (), eval_batch).compile()
    compile_s = time.perf_counter() - start
    out[STEPS[2]] = (
        lambda: jax.block_until_ready(compiled_eval(teacher_vars, (), eval_batch)),
        compile_s,
    )
    return out


def torch_steps(ref, batch: dict, eval_batch: dict) -> dict[str, tuple[Callable, float]]:
    """{step: (blocking callable, first-call seconds)} of the PyTorch reference."""
    fns = ref.make_steps(
        _torch_depth(_MODEL.value),
        _CLASSES.value,
        _class_counts(_CLASSES.value),
        batch,
        eval_batch,
        data.CIFAR_MEAN,
        data.CIFAR_STD,
    )
    out = {}
    for name, key in zip(STEPS, ("ce", "bkd", "eval"), strict=True):
        start = time.perf_counter()
        fns[key]()
        out[name] = (fns[key], time.perf_counter() - start)
    return out


def _rate(fn: Callable, steps: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps * batch / (time.perf_counter() - start)


def alternate(variants: dict[str, Callable], steps: int, repeats: int, batch: int) -> dict:
    """{variant: [images/s per repeat]}; every repeat runs each variant once, in turn."""
    for fn in variants.values():  # warm-up
        _rate(fn, 2, batch)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            rates[name].append(_rate(fn, steps, batch))
    return rates


def _memory_probe(variant: str) -> float | None:
    """Peak RSS (GiB) of a fresh process that builds and runs only `variant`."""
    cmd = [sys.executable, os.path.abspath(__file__), f"--only={variant}", "--steps=3"]
    cmd += ["--repeats=1", "--nomemory", f"--model={_MODEL.value}", f"--dtype={_DTYPE.value}"]
    cmd += [f"--batch={_BATCH.value}", f"--eval_batch={_EVAL_BATCH.value}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(_PROBE):
            return float(line.split()[1])
    print(f"memory probe {variant} failed:\n{done.stderr[-2000:]}")
    return None


def _print_table(rows: list[tuple], has_torch: bool) -> None:
    head = f"{'step':<20} {'variant':<18} {'batch':>5} {'compile s':>9} {'images/s':>9}"
    head += f" {'spread':>11} {'peak GiB':>8}"
    print("\n" + head + (f" {'x PyTorch':>16}" if has_torch else ""))
    for step, variant, batch, compile_s, rates, peak, ratios in rows:
        line = f"{step:<20} {variant:<18} {batch:>5} {compile_s:>9.2f}"
        line += f" {statistics.median(rates):>9.1f} {min(rates):>5.0f}-{max(rates):<5.0f}"
        line += f" {peak:>8.2f}" if peak is not None else f" {'':>8}"
        if ratios:
            spread = f"({min(ratios):.2f}-{max(ratios):.2f})"
            line += f" {statistics.median(ratios):>5.2f} {spread:>10}"
        print(line)


def bench_steps() -> None:
    ref = _import_torch() if _TORCH.value and (not _ONLY.value or _ONLY.value == "torch") else None
    if ref is not None and _torch_depth(_MODEL.value) is None:
        print(f"the PyTorch reference has no {_MODEL.value}: ltkd_jax numbers only.")
        ref = None
    batch, eval_batch = _batches(_CLASSES.value)
    variants: dict[str, dict] = {}
    settings = _CPU_KERNELS.value
    if _ONLY.value:
        settings = [_ONLY.value.removeprefix("jax:")] if _ONLY.value.startswith("jax:") else []
    for setting in settings:
        variants[f"ltkd_jax cpu {setting}"] = jax_steps(setting, batch, eval_batch)
    if ref is not None:
        variants["pytorch"] = torch_steps(ref, batch, eval_batch)
    peaks: dict[str, float | None] = {k: None for k in variants}
    if _MEMORY.value and not _ONLY.value:
        probes = {f"ltkd_jax cpu {s}": f"jax:{s}" for s in settings}
        probes |= {"pytorch": "torch"} if ref is not None else {}
        peaks |= {k: _memory_probe(v) for k, v in probes.items()}

    rows = []
    for step in STEPS:
        size = _EVAL_BATCH.value if step == "eval" else _BATCH.value
        rates = alternate(
            {k: v[step][0] for k, v in variants.items()}, _STEPS.value, _REPEATS.value, size
        )
        for name in variants:
            ratios = []
            if "pytorch" in rates and name != "pytorch":
                ratios = [a / b for a, b in zip(rates[name], rates["pytorch"], strict=True)]
            rows.append(
                (step, name, size, variants[name][step][1], rates[name], peaks[name], ratios)
            )
    device = jax.devices()[0]
    print(f"\n{_MODEL.value}, {_DTYPE.value}, ltkd_jax on {device.device_kind} ({jax.__version__})")
    if ref is not None:
        import torch

        print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{_REPEATS.value} alternating repeats of {_STEPS.value} steps; x PyTorch = median")
    print("of per-repeat ratios (their range); compile s for PyTorch = its first step.")
    _print_table(rows, ref is not None)
    if _ONLY.value:
        print(f"{_PROBE} {_peak_rss_gib():.3f}")


# ---------------------------------------------------------------------------------------
# --convs: the convolutions alone
# ---------------------------------------------------------------------------------------


def conv_layers(depth: int) -> list[tuple[int, int, int]]:
    """(in, out, stride) of the 3x3 convolutions of a CIFAR ResNet-(6n+2), in order."""
    n = (depth - 2) // 6
    layers, width = [(3, 16, 1)], 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(n):
            layers += [(width, planes, stride if i == 0 else 1), (planes, planes, 1)]
            width = planes
    return layers


def jax_conv_steps(setting: str, layers: list) -> dict[str, Callable]:
    """`train` / `eval` of the convolution chain as ltkd_jax runs it under cpu_kernels=`setting`."""
    conv = (
        cpu_ops.conv_dwgemm
        if cpu_ops.cpu_kernels_enabled(setting)
        else jax.lax.conv_general_dilated
    )
    rng = np.random.default_rng(0)
    weights = [jnp.asarray(rng.normal(0, 0.1, (3, 3, i, o)), jnp.float32) for i, o, _ in layers]

    def forward(ws, x):
        for (_, _, stride), w in zip(layers, ws, strict=True):
            x = conv(
                x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            x = jax.nn.relu(x)
        return x

    options = cpu_ops.compiler_options(setting)
    out = {}
    for name, fn, size in (
        ("train", jax.grad(lambda ws, x: jnp.sum(forward(ws, x))), _BATCH.value),
        ("eval", forward, _EVAL_BATCH.value),
    ):
        x = jnp.asarray(rng.normal(size=(size, 32, 32, 3)), jnp.float32)
        compiled = jax.jit(fn, compiler_options=options).lower(weights, x).compile()
        out[name] = lambda c=compiled, x=x: jax.block_until_ready(c(weights, x))
    return out


def bench_convs() -> None:
    ref = _import_torch() if _TORCH.value else None
    depth = _torch_depth(_MODEL.value)
    if depth is None:
        raise app.UsageError(f"--convs needs a CIFAR ResNet-(6n+2), not {_MODEL.value}")
    layers = conv_layers(depth)
    variants = {f"ltkd_jax cpu {s}, convs": jax_conv_steps(s, layers) for s in _CPU_KERNELS.value}
    if ref is not None:
        variants["pytorch, convs"] = ref.make_conv_steps(layers, _BATCH.value, _EVAL_BATCH.value)
        whole = torch_steps(ref, *_batches(_CLASSES.value))
        variants["pytorch, whole step"] = {"train": whole[STEPS[0]][0], "eval": whole[STEPS[2]][0]}
    print(
        f"\n{_MODEL.value}: {len(layers)} 3x3 convolutions (+ ReLU); {_REPEATS.value} alternating"
    )
    print(f"repeats of {_STEPS.value} steps; 'ceiling' = median per-repeat ratio of the row to")
    print("PyTorch's whole step (train = its CE step)")
    for step, size in (("train", _BATCH.value), ("eval", _EVAL_BATCH.value)):
        rates = alternate(
            {k: v[step] for k, v in variants.items()}, _STEPS.value, _REPEATS.value, size
        )
        for name, r in rates.items():
            line = f"{step:<6} {name:<28} {size:>4} {statistics.median(r):>8.1f} images/s"
            line += f" ({min(r):.0f}-{max(r):.0f})"
            if "pytorch, whole step" in rates and name != "pytorch, whole step":
                base = rates["pytorch, whole step"]
                ceiling = statistics.median(a / b for a, b in zip(r, base, strict=True))
                line += f"  ceiling {ceiling:.2f}"
            print(line)


# ---------------------------------------------------------------------------------------
# --loop: whole training loops with the input pipeline
# ---------------------------------------------------------------------------------------


def _loop_config(method: str, resident: bool, workdir_teacher: str = ""):
    """Two epochs of --loop_steps steps: the first compiles, the second is timed."""
    c = defaults.base_config(method)
    c.data.archive = _ARCHIVE.value
    c.data.imbalance_factor = _IMBALANCE.value
    c.data.data_dir = _DATA_DIR.value
    c.data.device_resident = resident
    c.model.cpu_kernels = _CPU_KERNELS.value[0]
    c.model.name = c.teacher.model = _MODEL.value
    c.num_epochs = 2
    c.max_steps_per_epoch = _LOOP_STEPS.value
    c.log_every_steps = _LOOP_STEPS.value  # one train record per epoch
    c.eval_every_epochs = 2
    c.progress_bar = False
    c.teacher.workdir = workdir_teacher
    if method == "bkd":
        c.loss.class_weighting = "reweight"
    return defaults.lock(c)


def _logged_rate(workdir: str) -> float:
    """images/s of the second epoch's training (the first holds the compile)."""
    rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
    return rows[-1]["images_per_sec"]


def jax_loop(resident: bool, root: str) -> tuple[float, float]:
    """(teacher, student) in-loop images/s of train_and_evaluate."""
    teacher_dir = tempfile.mkdtemp(dir=root)
    trainer.train_and_evaluate(_loop_config("ce", resident), teacher_dir)
    student_config = _loop_config("bkd", resident, teacher_dir)
    student_dir = tempfile.mkdtemp(dir=root)
    task = data.load_task(student_config.data)
    mesh = sharding.make_mesh(student_config.num_devices)
    teachers, _ = teacher_stage.prepare_teachers(student_config, student_dir, task, mesh)
    trainer.train_and_evaluate(student_config, student_dir, teachers=teachers, task=task)
    return _logged_rate(teacher_dir), _logged_rate(student_dir)


def torch_loop(ref) -> tuple[float, float]:
    task = data.load_task(_loop_config("ce", False).data)
    split = task.train
    kwargs = {
        "num_classes": split.num_classes,
        "class_counts": task.class_counts,
        "mean": data.CIFAR_MEAN,
        "std": data.CIFAR_STD,
        "steps": _LOOP_STEPS.value,
        "skip": _LOG_EVERY.value,
        "num_workers": _TORCH_WORKERS.value,
    }
    return tuple(
        ref.time_training_loop(split.images, split.labels, distill=d, **kwargs)
        for d in (False, True)
    )


def _pure_step_rates() -> tuple[list[float], list[float]]:
    """images/s of the pure jitted CE and BKD steps on a pre-built batch, per repeat."""
    batch, eval_batch = _batches(_CLASSES.value)
    steps = jax_steps(_CPU_KERNELS.value[0], batch, eval_batch)
    rates = alternate(
        {name: steps[name][0] for name in STEPS[:2]}, _STEPS.value, _REPEATS.value, _BATCH.value
    )
    return rates[STEPS[0]], rates[STEPS[1]]


def _device_memory() -> str:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return "device memory: not reported by this backend"
    return f"device memory: peak {stats['peak_bytes_in_use'] / 2**30:.2f} GiB in use"


def bench_loop() -> None:
    """In-loop vs pure-step images/s, for the device-resident and the grain-fed loop."""
    ref = _import_torch() if _TORCH.value else None
    feeds = {
        "resident": ("ltkd_jax device-resident", True),
        "grain": ("ltkd_jax grain feed", False),
    }
    unknown = sorted(set(_LOOP_FEEDS.value) - set(feeds))
    if unknown or not _LOOP_FEEDS.value:
        raise app.UsageError(f"--loop_feeds: choose from {sorted(feeds)}, not {unknown}")
    variants = dict(feeds[f] for f in _LOOP_FEEDS.value)
    rates: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(_REPEATS.value):
            for name, resident in variants.items():
                rates.setdefault(name, []).append(jax_loop(resident, root))
            if ref is not None:
                rates.setdefault("pytorch", []).append(torch_loop(ref))
    pure = _pure_step_rates()
    device = jax.devices()[0]
    print(f"\ntraining loops on CIFAR-100-LT (IF 100), batch {_BATCH.value}, ltkd_jax on")
    print(f"{device.device_kind} ({jax.__version__}); epoch 2 of 2 x {_LOOP_STEPS.value} steps")
    print(f"timed, {_REPEATS.value} alternating repeats; pure = the jitted step alone")
    print(f"{'loop':<16} {'variant':<26} {'images/s':>9} {'spread':>11} {'x PyTorch':>9}")
    for k, loop in enumerate(("teacher (CE)", "student (BKD)")):
        print(f"{loop:<16} {'ltkd_jax pure step':<26} {statistics.median(pure[k]):>9.1f}")
        for name, runs in rates.items():
            r = [run[k] for run in runs]
            line = f"{loop:<16} {name:<26} {statistics.median(r):>9.1f}"
            line += f" {min(r):>5.0f}-{max(r):<5.0f}"
            if "pytorch" in rates and name != "pytorch":
                torch_r = [run[k] for run in rates["pytorch"]]
                ratio = statistics.median(a / b for a, b in zip(r, torch_r, strict=True))
                line += f" {ratio:>9.2f}"
            print(line)
    for k, loop in enumerate(("teacher (CE)", "student (BKD)")):
        for name in variants:
            ratio = statistics.median(run[k] for run in rates[name]) / statistics.median(pure[k])
            print(f"{loop} {name} loop/pure ratio: {ratio:.2f}")
    print(f"host memory: peak RSS {_peak_rss_gib():.2f} GiB; {_device_memory()}")
    if _JSON.value:
        _write_loop_json(_JSON.value, rates, pure, ref)


def _torch_info(ref) -> dict | None:
    return None if ref is None else {"version": ref.torch.__version__, "device": str(ref.DEVICE)}


def _write_loop_json(path: str, rates: dict, pure: tuple, ref) -> None:
    """--loop's numbers, per repeat: {loop: {variant: [images/s]}} and loop / pure ratios."""
    import json

    loops = {}
    for k, loop in enumerate(("ce", "bkd")):
        loops[loop] = {"pure step": list(pure[k])}
        loops[loop] |= {name: [run[k] for run in runs] for name, runs in rates.items()}
    ratios = {
        loop: {
            name: statistics.median(r) / statistics.median(v["pure step"])
            for name, r in v.items()
            if name not in ("pure step", "pytorch")
        }
        for loop, v in loops.items()
    }
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    record = {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax_version": jax.__version__,
        "model": _MODEL.value,
        "batch": _BATCH.value,
        "loop_steps": _LOOP_STEPS.value,
        "pure_steps": _STEPS.value,
        "repeats": _REPEATS.value,
        "images_per_sec": loops,
        "loop_over_pure": ratios,
        "torch": _torch_info(ref),
        "peak_rss_gib": _peak_rss_gib(),
        "device_peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {path}")


def bench_input() -> None:
    """The input pipeline alone, in its own process (it has flags of its own)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_input.py")
    subprocess.run([sys.executable, script], check=True)


def _cohort_programs(teacher_name: str, student_name: str, k: int, vmapped: bool):
    """(single step, its state, cohort step, its state, teachers, batch, ctxs): compiled BKD
    programs of one student and of a cohort of `k`, one teacher (folded on the CPU)."""
    config = _step_config(_CPU_KERNELS.value[0], "bkd")
    config.model.name, config.teacher.model = student_name, teacher_name
    mesh = sharding.make_mesh(1)
    repl = sharding.replicated(mesh)
    n = _CLASSES.value
    batch = sharding.global_batch(mesh, _batches(n)[0])
    teacher_config = _step_config(_CPU_KERNELS.value[0])
    teacher_config.model.name = teacher_name
    teacher_model = networks.build_model(teacher_config, n)
    schedule = optim.make_schedule(config.optim, 100, 200)
    tx = optim.make_optimizer(config.optim, schedule)
    teacher_state = networks.create_train_state(teacher_model, tx, (32, 32, 3), 1, mesh)
    teacher = networks.Teacher(networks.variables_of(teacher_state), teacher_model)
    if cpu_ops.cpu_kernels_enabled(_CPU_KERNELS.value[0]):
        teacher = networks.fold_teacher(teacher)
    model = networks.build_model(config, n)
    task = methods.Task(class_counts=_class_counts(n), class_groups=np.zeros(n, np.int32))
    method = methods.make(config, task)
    ctx = jax.device_put(method.epoch_context(0), repl)
    kwargs = dict(schedule=schedule, mean=data.CIFAR_MEAN, std=data.CIFAR_STD)
    options = cpu_ops.compiler_options(_CPU_KERNELS.value[0])
    jit = functools.partial(
        jax.jit, donate_argnums=(0,), out_shardings=(repl, repl), compiler_options=options
    )
    single = jit(functools.partial(steps.train_step, method=method, **kwargs))
    states = [networks.create_train_state(model, tx, (32, 32, 3), s, mesh) for s in range(k)]
    layout = steps.CohortLayout((tuple(range(k)),), None, vmapped)
    cohort = jit(
        functools.partial(steps.cohort_step, layout=layout, member_methods=(method,) * k, **kwargs)
    )
    cohort_state = steps.CohortState(
        (jax.jit(steps.stack_members, out_shardings=repl)(states),),
        jax.device_put(np.ones(k, bool), repl),
    )
    return single, states[0], cohort, cohort_state, (teacher,), batch, ctx, (ctx,) * k


def _stepper(compiled, state, teachers, batch, ctx) -> Callable:
    """A blocking call of one step that carries its (donated) state along."""
    holder = {"state": state}

    def run():
        holder["state"], step_metrics = compiled(holder["state"], teachers, batch, ctx)
        jax.block_until_ready(step_metrics)

    return run


def _program_bytes(compiled) -> int:
    """Arguments + outputs + temporaries of a compiled program (XLA's memory analysis)."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def bench_cohort() -> None:
    """K BKD members against one teacher: one cohort program vs K single runs."""
    k = _COHORT.value
    form = _COHORT_FORM.value
    vmapped = jax.default_backend() != "cpu" if form == "auto" else form == "vmapped"
    print(f"cohort of {k} BKD students, batch {_BATCH.value}, {jax.devices()[0].device_kind}, "
          f"members {'vmapped' if vmapped else 'one by one'}")  # fmt: skip
    lines = []
    for pair in _COHORT_PAIRS.value:
        teacher_name, student_name = pair.split(":")
        single, s_state, cohort, c_state, teachers, batch, ctx, ctxs = _cohort_programs(
            teacher_name, student_name, k, vmapped
        )
        single_c = single.lower(s_state, teachers, batch, ctx).compile()
        cohort_c = cohort.lower(c_state, teachers, batch, ctxs).compile()
        runners = {
            "single": _stepper(single_c, s_state, teachers, batch, ctx),
            "cohort": _stepper(cohort_c, c_state, teachers, batch, ctxs),
        }
        rates = alternate(runners, _STEPS.value, _REPEATS.value, 1)
        single_s = [1 / r for r in rates["single"]]  # seconds per step
        cohort_s = [1 / r for r in rates["cohort"]]
        speedups = [k * a / b for a, b in zip(single_s, cohort_s, strict=True)]
        b = _BATCH.value
        one_bytes, all_bytes = _program_bytes(single_c), _program_bytes(cohort_c)
        per_member = (all_bytes - one_bytes) / max(k - 1, 1)
        print(f"{teacher_name}->{student_name}: single run {b / statistics.median(single_s):.1f} "
              f"images/s; in the cohort {b / statistics.median(cohort_s):.1f} images/s per "
              f"member ({k * b / statistics.median(cohort_s):.1f} in all); program memory: "
              f"{one_bytes / 2**20:.0f} MiB for one student, {all_bytes / 2**20:.0f} MiB for "
              f"{k}, {per_member / 2**20:.1f} MiB per added member")  # fmt: skip
        for device, capacity in (("an 80 GB GPU", 80e9), ("this host's RAM", _host_ram())):
            fits = int((capacity - one_bytes) // per_member) + 1 if per_member > 0 else 0
            print(f"  members of this pair that fit in {device} by program memory: ~{fits}")
        lines.append(
            f"cohort speedup {teacher_name}->{student_name} K={k}: "
            f"{statistics.median(speedups):.2f}"
        )
    print("\n".join(lines))
    print(f"peak host RSS: {_peak_rss_gib():.2f} GiB")


def _host_ram() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def main(argv):
    del argv
    if _COHORT.value:
        bench_cohort()
    elif _INPUT.value:
        bench_input()
    elif _LOOP.value:
        bench_loop()
    elif _CONVS.value:
        bench_convs()
    else:
        bench_steps()


if __name__ == "__main__":
    app.run(main)
