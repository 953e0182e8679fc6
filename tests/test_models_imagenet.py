"""ImageNet-style ResNet / ResNeXt: parameter counts and shapes via jax.eval_shape (no compile)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from ltkd_jax import models


def _abstract(name, num_classes=1000, size=224, batch=2, **kwargs):
    model = models.get_model(name, num_classes, **kwargs)
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    return model, variables, out


@pytest.mark.parametrize(
    "name, expected, dim",
    [
        ("resnet10", 5_418_792, 512),  # torchvision-style BasicBlock [1, 1, 1, 1]
        ("resnet50", 25_557_032, 2048),  # torchvision resnet50
        ("resnext50_32x4d", 25_028_904, 2048),  # torchvision resnext50_32x4d
    ],
)
def test_parameter_counts_match_torchvision(name, expected, dim):
    model, variables, (logits, features) = _abstract(name)
    assert models.num_params(variables["params"]) == expected
    assert logits.shape == (2, 1000) and features.shape == (2, dim)
    assert model.feature_dim == dim
    assert set(variables["params"]["classifier"]) == {"kernel", "bias"}


def test_cbd_cosine_head_neck_and_bfloat16():
    """CBD's ImageNet student: cosine head (fixed sigma, no bias) after a Dense(2048 K) neck."""
    model, variables, (logits, features) = _abstract(
        "resnet50", 1000, 64, head="cosine", neck=nn.Dense(4096), dtype=jnp.bfloat16
    )
    params = variables["params"]
    assert set(params["classifier"]) == {"kernel"}  # sigma is not a parameter
    assert params["classifier"]["kernel"].shape == (4096, 1000)
    assert params["neck"]["kernel"].shape == (2048, 4096)
    assert features.shape == (2, 4096) and model.feature_dim == 4096
    # bf16 compute, float32 parameters and BatchNorm statistics.
    assert logits.dtype == jnp.bfloat16
    leaves = jax.tree.leaves(variables)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
