"""The teacher inside the real, jitted train step (ltkd_jax/training/steps.py), as a KD
student on tests/tiny.py's digits sees it, with the CPU kernels on (BatchNorm folded into
the teacher's convolutions) and off (Flax's own layers, the path a GPU runs):

- the teacher outputs the loss receives equal the teacher applied in inference mode
  (BatchNorm running statistics) to the normalised batch;
- another teacher gives another loss and another gradient (the teacher is not ignored).

The method's loss is wrapped to return the teacher outputs it receives as loss parts; the
step returns loss parts with its metrics, so they leave the jitted step unchanged.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from test_train import float32_rtol
from tiny import tiny_config

from ltkd_jax import data, methods, models
from ltkd_jax.models import cpu_ops
from ltkd_jax.runs import teachers as teacher_stage
from ltkd_jax.training import networks, optim, sharding, steps

IMAGE_SHAPE, NUM_CLASSES, BATCH = (8, 8, 1), 10, 32
# ResNet-8 forward pass: 8 layers, the longest sums a 3 x 3 x 64 convolution's. ~3e-4: the
# folded teacher (kernels on) rounds differently from the unfolded reference.
FORWARD_RTOL = float32_rtol(depth=8, longest_sum=3 * 3 * 64)
# What runs as the teacher: BatchNorm folded away on the CPU path, Flax's layers otherwise.
TEACHER_OPS = {"on": "folded", "off": "xla"}


def student_config(teacher_dir: str, cpu_kernels: str):
    return tiny_config(
        method="kd",
        num_devices=1,
        **{
            "teacher.model": "resnet8",
            "teacher.workdir": teacher_dir,
            "model.cpu_kernels": cpu_kernels,
        },
    )


def with_seen_teacher(method: methods.Method) -> methods.Method:
    """`method`, its loss also returning the first teacher's outputs it was given."""

    def loss(student, labels, teachers, ctx):
        value, parts = method.loss(student, labels, teachers, ctx)
        logits, features = teachers[0]
        return value, {**parts, "seen_teacher_logits": logits, "seen_teacher_features": features}

    return dataclasses.replace(method, loss=loss)


def roll_classes(teacher: networks.Teacher) -> networks.Teacher:
    """The teacher with its classifier's class columns shifted by one: other predictions."""
    params = dict(teacher.variables["params"])
    classifier = dict(params["classifier"])
    for name in ("kernel", "bias"):
        old = classifier[name]  # kept on its devices: the compiled step is reused
        classifier[name] = jax.device_put(np.roll(np.asarray(old), 1, axis=-1), old.sharding)
    params["classifier"] = classifier
    return networks.Teacher({**teacher.variables, "params": params}, teacher.model)


@pytest.fixture(scope="module")
def batch():
    """32 training images (every class) of tests/tiny.py's digits, as uint8."""
    train = data.load_task(tiny_config().data).train
    picks = np.linspace(0, len(train) - 1, BATCH).astype(int)
    return {"image": train.images[picks], "label": train.labels[picks]}


@pytest.fixture(scope="module", params=list(TEACHER_OPS))
def step(request, reference_run, batch, tmp_path_factory):
    """The compiled step of a KD student whose teacher is the CE reference run."""
    teacher_dir, _ = reference_run
    config = student_config(teacher_dir, request.param)
    task = data.load_task(config.data)
    mesh = sharding.make_mesh(config.num_devices)
    student_dir = str(tmp_path_factory.mktemp("student"))
    (teacher,), _ = teacher_stage.prepare_teachers(config, student_dir, task, mesh)
    method = with_seen_teacher(
        methods.make(config, methods.Task(task.class_counts, task.class_groups))
    )
    schedule = optim.make_schedule(config.optim, 3, config.num_epochs)
    state = networks.create_train_state(
        networks.build_model(config, NUM_CLASSES),
        optim.make_optimizer(config.optim, schedule),
        IMAGE_SHAPE,
        config.seed,
        sharding.make_mesh(1),
    )
    mean, std = data.input_stats(config.data, IMAGE_SHAPE[-1])
    train_step = jax.jit(
        functools.partial(steps.train_step, method=method, schedule=schedule, mean=mean, std=std),
        compiler_options=cpu_ops.compiler_options(config.model.cpu_kernels),
    )
    ctx = method.epoch_context(0)
    run = lambda t: jax.device_get(train_step(state, (t,), batch, ctx))
    return dict(kernels=request.param, teacher=teacher, run=run)


@pytest.fixture(scope="module")
def inference_outputs(reference_run, batch):
    """The teacher run's final weights in Flax's layers, inference mode, on the normalised
    batch (logits, features)."""
    _, final = reference_run
    variables = jax.device_get({"params": final.params, "batch_stats": final.batch_stats})
    model = models.get_model("resnet8", NUM_CLASSES)  # ops="xla": Flax's layers
    mean, std = data.input_stats(tiny_config().data, IMAGE_SHAPE[-1])
    images = data.normalize(batch["image"], mean, std)
    return jax.device_get(jax.jit(functools.partial(model.apply, train=False))(variables, images))


def assert_close_to(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=FORWARD_RTOL * np.abs(expected).max())


def test_the_step_feeds_the_loss_the_inference_mode_teacher(step, inference_outputs):
    assert step["teacher"].model.backbone.ops == TEACHER_OPS[step["kernels"]]
    _, step_metrics = step["run"](step["teacher"])
    logits, features = inference_outputs
    assert_close_to(step_metrics["loss_seen_teacher_logits"], logits)
    assert_close_to(step_metrics["loss_seen_teacher_features"], features)


def test_another_teacher_changes_the_loss_and_the_gradient(step, inference_outputs):
    state_a, metrics_a = step["run"](step["teacher"])
    state_b, metrics_b = step["run"](roll_classes(step["teacher"]))
    logits, _ = inference_outputs
    # The step really used the other teacher: its logits, classes shifted by one.
    assert_close_to(metrics_b["loss_seen_teacher_logits"], np.roll(logits, 1, axis=-1))
    # The CE term does not see the teacher: the same program on the same student, exactly.
    assert metrics_a["loss_ce"] == metrics_b["loss_ce"]
    assert abs(metrics_a["loss_kd"] - metrics_b["loss_kd"]) > 0.1 * metrics_a["loss_kd"]
    assert abs(metrics_a["grad_norm"] - metrics_b["grad_norm"]) > 1e-3 * metrics_a["grad_norm"]
    kernel_a = state_a.params["classifier"]["kernel"]
    kernel_b = state_b.params["classifier"]["kernel"]
    assert np.abs(kernel_a - kernel_b).max() > 1e-3 * np.abs(kernel_a).max()
