"""Pins the variable trees and init numerics of the registered models.

Checkpoints store variables by key path, so a refactor of the model code that renames a
submodule (or changes a shape or dtype) silently breaks every existing run directory. The
expected values below were computed on the pre-refactor code (commit 532d9be) and must not
change: for each model, the sha256 of its sorted ``"path shape dtype"`` lines (params and
batch_stats of ``init`` on a [2, 32, 32, 3] input, 10 classes), plus some explicit paths.
"""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltkd_jax.models import get_model

# (name, head) -> (number of leaves, sha256 of the sorted "path shape dtype" lines).
LAYOUTS = {
    ("resnet8", "linear"): (
        37,
        "baefbdcdf36974cd439f7e0e03fc3d26ec6ce69bdff892a0250b82f1b9e99e07",
    ),
    ("resnet8", "normed"): (
        36,
        "dab1ac46efc7bb5cf66930dec4cf60923797feff83c469cec1b5adc918db9d90",
    ),
    ("resnet8", "cosine"): (
        36,
        "dab1ac46efc7bb5cf66930dec4cf60923797feff83c469cec1b5adc918db9d90",
    ),
    ("resnet8x4", "linear"): (
        52,
        "55335773e080e00ea6d3ed5a2d701916ac01086c3bae6773e81751a0503e3d65",
    ),
    ("wrn16_2", "linear"): (
        70,
        "72b4abf6b85f628c39b4fccecc230c5c8b4780cb95cfc1c06bb52678f4158888",
    ),
    ("resnet32", "linear"): (
        157,
        "34cf1182a864b44555a1c6bdfdc9ca6809d938e1105dccedbca2753a03b2f18f",
    ),
    ("resnet10", "linear"): (
        62,
        "eb12d23e044a173931af21debdcb48a3f3b4a9a62e2fa509f68c7990b22fb334",
    ),
}

# A few lines spelled out, so a failure shows what kind of key moved.
EXPLICIT = {
    "resnet8": [
        "params/Conv_0/kernel (3, 3, 3, 16) float32",
        "params/BatchNorm_0/scale (16,) float32",
        "batch_stats/BatchNorm_0/mean (16,) float32",
        "params/BasicBlockA_0/Conv_0/kernel (3, 3, 16, 16) float32",
        "params/BasicBlockA_2/Conv_1/kernel (3, 3, 64, 64) float32",
        "batch_stats/BasicBlockA_2/BatchNorm_1/var (64,) float32",
        "params/classifier/kernel (64, 10) float32",
        "params/classifier/bias (10,) float32",
    ],
    "resnet8x4": [
        "params/Conv_0/kernel (3, 3, 3, 32) float32",
        "params/BasicBlockB_0/shortcut_conv/kernel (1, 1, 32, 64) float32",
        "batch_stats/BasicBlockB_1/shortcut_bn/mean (128,) float32",
        "params/BasicBlockB_2/Conv_1/kernel (3, 3, 256, 256) float32",
        "params/classifier/kernel (256, 10) float32",
    ],
    "wrn16_2": [
        "params/WideBasicBlock_0/shortcut_conv/kernel (1, 1, 16, 32) float32",
        "params/WideBasicBlock_5/Conv_1/kernel (3, 3, 128, 128) float32",
        "batch_stats/BatchNorm_0/var (128,) float32",
    ],
    "resnet10": [
        "params/stem_conv/kernel (7, 7, 3, 64) float32",
        "batch_stats/stem_bn/mean (64,) float32",
        "params/BasicBlock_1/shortcut_conv/kernel (1, 1, 64, 128) float32",
        "params/classifier/kernel (512, 10) float32",
    ],
}

# Row 0 of the eval-mode logits of init(key(0)) on x = 1.5 * normal(key(1), [2, 8, 8, 3]) + 0.2,
# and sum(features), computed on the pre-refactor code.
LOGITS_ROW0 = {
    "resnet8": (
        [-3.702471971511841, -7.012783527374268, -1.5958362817764282, 2.7745351791381836,
         3.660276412963867, 3.8382456302642822, -2.5477685928344727, 0.4723093807697296,
         -1.2590218782424927, 2.6669907569885254],
        185.22286987304688,
    ),
    "resnet8x4": (
        [4.757471084594727, -5.002906322479248, -0.8986557722091675, 1.5929629802703857,
         1.2955893278121948, -0.05066806077957153, -2.196742534637451, -3.4949185848236084,
         -3.4393234252929688, -0.7454371452331543],
        740.4986572265625,
    ),
}  # fmt: skip


def layout_lines(model, shape=(2, 32, 32, 3)) -> list[str]:
    """Sorted ``"path shape dtype"`` lines of the model's init variables (nothing compiled)."""
    variables = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    return sorted(
        "/".join(str(k.key) for k in path) + f" {tuple(leaf.shape)} {leaf.dtype}"
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
    )


@pytest.mark.parametrize("name, head", list(LAYOUTS))
def test_variable_tree_is_unchanged(name, head):
    lines = layout_lines(get_model(name, 10, head=head))
    for line in EXPLICIT.get(name, []) if head == "linear" else []:
        assert line in lines, (line, lines)
    count, digest = LAYOUTS[name, head]
    assert len(lines) == count, lines
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == digest, lines


@pytest.mark.slow  # two full-model compiles; the tree pins above stay in the quick suite
@pytest.mark.parametrize("name", list(LOGITS_ROW0))
def test_init_and_forward_are_unchanged(name):
    """Same init keys (parameters live at the same scope paths) and the same forward pass.

    The logits are O(1)-O(10) results of ~10 layers of float32 sums with fan-in <= 576; a
    reordering of those sums (another XLA fusion) moves them by ~sqrt(576) * 2**-24 relative
    per layer, well under 1e-5 of the largest logit in all.
    """
    model = get_model(name, 10)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3)) * 1.5 + 0.2
    variables = model.init(jax.random.key(0), x, train=False)
    logits, features = model.apply(variables, x, train=False)
    expected, feature_sum = LOGITS_ROW0[name]
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(logits[0], expected, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(float(jnp.sum(features)), feature_sum, rtol=1e-5)
