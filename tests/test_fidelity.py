"""Where the recipes follow the official code (or a documented account of a paper), checks
that would fail on the deviations found in review: CBD's weight decay, teacher seeds, the
BKD repository's KD row, LTKD's groups and evaluation groups, CBD's initialisers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_configs import CONFIG_DIR, _load

from ltkd_jax import config_lib, losses, methods, modeling, models, optim, stage1
from ltkd_jax.methods import ModelOutput


@pytest.mark.parametrize(
    "name, official_wd",
    [("cbd_imagenet_lt", 5e-4), ("cbd_inat18", 2e-4), ("cbd_ens_imagenet_lt", 5e-4)],
)
def test_cbd_effective_weight_decay_is_half_the_official_config(name, official_wd):
    # Official: loss += wd * 0.5 * tf.nn.l2_loss(theta) = wd / 4 * sum(theta^2), so the
    # gradient added to every variable is wd / 2 * theta.
    _, config = _load(CONFIG_DIR / f"{name}.py")
    tx = optim.make_optimizer(config.optim, optax.constant_schedule(1.0))
    theta = {"w": jnp.array([1.0, -2.0, 0.5])}
    updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(theta), theta)
    np.testing.assert_allclose(updates["w"], -(official_wd / 2) * theta["w"], rtol=1e-6)
    # The stage-1 teachers are built from the same optimiser section.
    assert stage1.teacher_config(config, 0).optim.weight_decay == config.optim.weight_decay


@pytest.mark.parametrize("name, arg", [("bkd_cifar", None), ("cbd_ens_imagenet_lt", None)])
def test_teacher_seeds_differ_from_the_student_and_each_other(name, arg):
    _, config = _load(CONFIG_DIR / f"{name}.py", arg)
    seeds = [stage1.teacher_config(config, k).seed for k in range(methods.num_teachers(config))]
    assert config.seed not in seeds
    assert len(set(seeds)) == len(seeds)
    # Across a table over seeds 0..999, no teacher reuses any student's seed.
    assert min(config_lib.teacher_seed(s, 0) for s in range(1000)) >= 1000


def _kd_loss_value(config, counts):
    task = methods.Task(class_counts=counts, class_groups=np.zeros(len(counts), np.int32))
    method = methods.make(config, task)
    rng = np.random.default_rng(0)
    student = ModelOutput(jnp.asarray(rng.normal(size=(6, len(counts)))), jnp.zeros((6, 1)))
    teacher = ModelOutput(jnp.asarray(rng.normal(size=(6, len(counts)))), jnp.zeros((6, 1)))
    labels = jnp.array([0, 0, 0, 1, 2, 2])
    ctx = method.epoch_context(0)
    return method.loss(student, labels, (teacher,), ctx), (student, teacher, labels)


def test_kd_config_is_the_bkd_repo_kd_row_on_cifar100():
    _, config = _load(CONFIG_DIR / "kd_cifar.py")
    assert config.loss.class_weighting == "reweight"
    counts = np.array([100, 20, 5])
    (loss, parts), (student, teacher, labels) = _kd_loss_value(config, counts)
    weighted, _ = losses.weighted_cross_entropy(
        student.logits, labels=labels, class_weights=losses.effective_number_weights(counts)
    )
    plain, _ = losses.cross_entropy(student.logits, labels=labels)
    np.testing.assert_allclose(parts["ce"], weighted, rtol=1e-6)
    assert abs(float(weighted) - float(plain)) > 1e-3  # the weighting really changes the CE


def test_kd_config_variants():
    _, c10 = _load(CONFIG_DIR / "kd_cifar.py", "dataset=cifar10")
    assert c10.loss.class_weighting == "drw"
    _, mdistiller = _load(CONFIG_DIR / "kd_cifar.py", "recipe=mdistiller")
    assert mdistiller.loss.class_weighting == "none"


def test_ltkd_defaults_follow_the_paper_digest():
    _, config = _load(CONFIG_DIR / "ltkd_cifar.py")
    assert (config.loss.rebalance, config.loss.groups) == ("batch", "tail33")
    _, pair = _load(
        CONFIG_DIR / "ltkd_cifar.py", "teacher=resnet32x4,student=resnet8x4,recipe=mdistiller"
    )
    assert pair.data.eval_groups == "tail33"  # the tail reported as the paper does
    assert (pair.model.name, pair.teacher.model, pair.num_epochs, pair.batch_size) == (
        "resnet8x4",
        "resnet32x4",
        240,
        64,
    )


def test_ltkd_unknown_choices_fail_in_validate_config():

    _, config = _load(CONFIG_DIR / "ltkd_cifar.py")
    for field, value in (("rebalance", "bacth"), ("groups", "tail3")):
        bad = config.copy_and_resolve_references()
        bad.loss[field] = value
        with pytest.raises(ValueError, match=f"config.loss.{field}"):
            config_lib.validate_config(bad)


def test_cbd_resnet50_zero_inits_the_last_batchnorm_of_each_block():
    _, config = _load(CONFIG_DIR / "cbd_imagenet_lt.py")
    assert config.model.zero_init_residual
    model = models.get_model("resnet10", 5, zero_init_residual=True)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    blocks = [k for k in params if k.startswith("BasicBlock")]
    assert blocks
    for block in blocks:
        bns = sorted(k for k in params[block] if k.startswith("BatchNorm"))
        np.testing.assert_array_equal(params[block][bns[-1]]["scale"], 0.0)
        np.testing.assert_array_equal(params[block][bns[0]]["scale"], 1.0)


def test_cbd_projection_is_glorot_uniform_with_zero_bias():
    config = config_lib.base_config("cbd")
    config.model.name = config.teacher.model = "resnet8"
    config.model.head = "cosine"
    model = modeling.build_model(config, 10)  # the projection as wide as the teacher's features
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)["params"]
    kernel, bias = params["neck"]["kernel"], params["neck"]["bias"]
    assert kernel.shape == (64, 64)
    np.testing.assert_array_equal(bias, 0.0)
    fan_in, fan_out = kernel.shape
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= limit
    # Uniform on [-limit, limit] has std limit / sqrt(3); Kaiming-normal would be ~2.4x wider.
    np.testing.assert_allclose(np.std(kernel), limit / np.sqrt(3), rtol=0.1)
