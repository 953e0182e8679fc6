"""Model zoo tests: parameter counts, shapes, heads, init, BatchNorm state, dtypes.

Everything except the resnet8 / head tests runs under ``jax.eval_shape`` (no compilation).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from ltkd_jax.models import MODELS, Network, feature_dim, get_model, num_params
from ltkd_jax.models import heads as heads_lib
from ltkd_jax.models.layers import BasicBlock, option_a_shortcut

# Exact trainable parameter counts (BN scale/bias included, running statistics excluded, as
# PyTorch counts them): {name: (C=100, C=10)}.
EXPECTED_PARAMS = {
    "resnet8": (81_140, 75_290),
    "resnet20": (275_572, 269_722),
    "resnet32": (470_004, 464_154),
    "resnet56": (858_868, 853_018),
    "resnet110": (1_733_812, 1_727_962),
    "resnet8x4": (1_233_540, 1_210_410),
    "resnet32x4": (7_433_860, 7_410_730),
    "wrn16_2": (703_284, 691_674),
    "wrn40_2": (2_255_156, 2_243_546),
}

# Published sizes in millions, with the class count they were published for:
# He et al. 2016 (Table 6, CIFAR-10, option A) and CRD / mdistiller (CIFAR-100).
PUBLISHED_M = {
    "resnet20": (10, 0.27),
    "resnet32": (10, 0.46),
    "resnet56": (10, 0.85),
    "resnet110": (10, 1.7),
    "resnet8x4": (100, 1.23),
    "resnet32x4": (100, 7.43),
    "wrn16_2": (100, 0.70),
    "wrn40_2": (100, 2.26),
}

FEATURE_DIMS = {
    "resnet8": 64,
    "resnet20": 64,
    "resnet32": 64,
    "resnet56": 64,
    "resnet110": 64,
    "resnet8x4": 256,
    "resnet32x4": 256,
    "wrn16_2": 128,
    "wrn40_2": 128,
    "resnet10": 512,
    "resnet50": 2048,
    "resnext50_32x4d": 2048,
}


def _option_a_count(depth: int, num_classes: int) -> int:
    """Hand count for the option-A CIFAR ResNet (3x3 convs without bias, 2 params per BN).

    stem: 3*3*3*16 + 2*16 = 464
    stage 1, every block: 2 * 9*16*16 + 2 * 2*16 = 4_672
    stage 2, first block: 9*16*32 + 9*32*32 + 2 * 2*32 = 13_952; others 2*9*32*32 + 128 = 18_560
    stage 3, first block: 9*32*64 + 9*64*64 + 2 * 2*64 = 55_552; others 2*9*64*64 + 256 = 73_984
    head: 64*C + C
    ResNet-32 (n = 5), C = 100: 464 + 5*4_672 + 13_952 + 4*18_560 + 55_552 + 4*73_984 + 6_500
    = 470_004 (0.47M); C = 10: 464_154 (He et al.'s 0.46M).
    """
    n = (depth - 2) // 6
    stages = 4_672 * n + (13_952 + 18_560 * (n - 1)) + (55_552 + 73_984 * (n - 1))
    return 464 + stages + 65 * num_classes


def _init_shapes(model, shape, train=False):
    """(logits, features) and variables as ShapeDtypeStructs; nothing is compiled."""
    return jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=train),
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )


def _leaves_with_paths(tree):
    return [
        ("/".join(str(getattr(k, "key", k)) for k in path), leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    ]


@pytest.mark.slow
class ParamCountTest(parameterized.TestCase):
    @parameterized.parameters(*EXPECTED_PARAMS)
    def test_exact_counts(self, name):
        for num_classes, expected in zip((100, 10), EXPECTED_PARAMS[name], strict=True):
            _, variables = _init_shapes(get_model(name, num_classes), (2, 32, 32, 3))
            self.assertEqual(num_params(variables["params"]), expected, (name, num_classes))

    @parameterized.parameters(*PUBLISHED_M)
    def test_published_counts(self, name):
        num_classes, millions = PUBLISHED_M[name]
        count = EXPECTED_PARAMS[name][0 if num_classes == 100 else 1]
        digits = 1 if millions == 1.7 else 2  # He et al. print 1.7M
        self.assertEqual(round(count / 1e6, digits), millions, name)

    @parameterized.parameters(8, 20, 32, 56, 110)
    def test_option_a_hand_count(self, depth):
        for num_classes in (100, 10):
            self.assertEqual(
                EXPECTED_PARAMS[f"resnet{depth}"][0 if num_classes == 100 else 1],
                _option_a_count(depth, num_classes),
            )

    def test_counts_independent_of_input_size(self):
        _, variables = _init_shapes(get_model("resnet32", 100), (2, 8, 8, 1))
        # Only the stem conv sees the input channels: 3 -> 1 removes 9 * 2 * 16 weights.
        self.assertEqual(num_params(variables["params"]), 470_004 - 9 * 2 * 16)


class ShapeTest(parameterized.TestCase):
    @parameterized.product(name=list(MODELS), shape=[(2, 32, 32, 3), (3, 8, 8, 1)])
    def test_output_shapes(self, name, shape):
        model = get_model(name, 7)
        (logits, features), variables = _init_shapes(model, shape)
        self.assertEqual(logits.shape, (shape[0], 7))
        self.assertEqual(features.shape, (shape[0], FEATURE_DIMS[name]))
        self.assertEqual(feature_dim(name), FEATURE_DIMS[name])
        self.assertEqual(logits.dtype, jnp.float32)
        self.assertEqual(set(variables), {"params", "batch_stats"})
        kernel = variables["params"]["classifier"]["kernel"]
        self.assertEqual(kernel.shape, (FEATURE_DIMS[name], 7))

    @parameterized.parameters("linear", "normed", "cosine")
    def test_head_layout(self, head):
        (logits, _), variables = _init_shapes(get_model("resnet8", 5, head=head), (2, 8, 8, 3))
        classifier = variables["params"]["classifier"]
        expected = {"kernel", "bias"} if head == "linear" else {"kernel"}  # no sigma, no bias
        self.assertEqual(set(classifier), expected)
        self.assertEqual(classifier["kernel"].shape, (64, 5))
        self.assertEqual(logits.shape, (2, 5))

    def test_neck(self):
        model = get_model("wrn16_2", 10, head="cosine", neck=nn.Dense(48))
        (logits, features), variables = _init_shapes(model, (2, 8, 8, 3))
        self.assertEqual(features.shape, (2, 48))
        self.assertEqual(logits.shape, (2, 10))
        self.assertEqual(variables["params"]["neck"]["kernel"].shape, (128, 48))
        self.assertEqual(variables["params"]["classifier"]["kernel"].shape, (48, 10))
        self.assertEqual(model.feature_dim, 48)
        self.assertEqual(feature_dim("wrn16_2"), 128)  # the backbone's pooled width

    def test_side(self):
        model = get_model("resnet8", 10, neck=nn.Dense(48), side=nn.Dense(32))
        (logits, features), variables = _init_shapes(model, (2, 8, 8, 3))
        self.assertEqual(features.shape, (2, 32))
        self.assertEqual(logits.shape, (2, 10))
        self.assertEqual(variables["params"]["side"]["kernel"].shape, (48, 32))
        self.assertEqual(variables["params"]["classifier"]["kernel"].shape, (48, 10))
        self.assertEqual(model.feature_dim, 32)

    def test_neck_needs_a_width(self):
        model = get_model("resnet8", 10, neck=nn.relu)
        with self.assertRaisesRegex(TypeError, "neck module.*features"):
            _ = model.feature_dim

    @parameterized.parameters("resnet8", "resnet8x4", "wrn16_2")
    def test_bf16_compute_float32_params(self, name):
        model = get_model(name, 10, dtype=jnp.bfloat16)
        (logits, features), variables = _init_shapes(model, (2, 8, 8, 3), train=True)
        self.assertEqual(logits.dtype, jnp.bfloat16)
        self.assertEqual(features.dtype, jnp.bfloat16)
        for path, leaf in _leaves_with_paths(variables):
            self.assertEqual(leaf.dtype, jnp.float32, path)

    def test_unknown_names_raise(self):
        with self.assertRaisesRegex(ValueError, "unknown model 'resnet18'.*resnet32.*wrn40_2"):
            get_model("resnet18", 10)
        with self.assertRaisesRegex(ValueError, "unknown head 'arc'.*normed"):
            get_model("resnet32", 10, head="arc")
        with self.assertRaisesRegex(ValueError, "unknown ops 'gpu'.*folded"):
            get_model("resnet32", 10, ops="gpu")

    def test_ops_and_folding_are_declared_by_the_backbone(self):
        self.assertEqual(get_model("resnet8x4", 10, ops="cpu").backbone.ops, "cpu")
        self.assertEqual(get_model("wrn16_2", 10, ops="cpu").backbone.ops, "cpu")
        # ImageNet-style backbones have no CPU kernels: Flax's layers, and nothing to fold.
        imagenet = get_model("resnet10", 10, ops="cpu")
        self.assertFalse(hasattr(imagenet.backbone, "ops"))
        self.assertFalse(imagenet.foldable)
        with self.assertRaisesRegex(ValueError, "cannot fold"):
            imagenet.with_ops("folded")
        self.assertTrue(get_model("resnet8", 10).foldable)
        self.assertFalse(get_model("wrn16_2", 10).foldable)


@pytest.mark.slow
class Resnet8RealTest(parameterized.TestCase):
    """One real init + forward of the smallest model on 8x8 inputs (eager, tiny)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.model = get_model("resnet8", 10)
        cls.x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1)) * 2.0 + 0.5
        cls.variables = cls.model.init(jax.random.key(0), cls.x, train=False)

    def test_train_updates_batch_stats_eval_does_not(self):
        v = self.variables
        (logits, features), updates = self.model.apply(
            v, self.x, train=True, mutable=["batch_stats"]
        )
        self.assertTrue(np.all(np.isfinite(logits)))
        self.assertEqual(features.shape, (4, 64))
        old, new = v["batch_stats"], updates["batch_stats"]
        # momentum 0.9: new_mean = 0.9 * 0 + 0.1 * batch_mean for the stem BN.
        stem_mean = new["BatchNorm_0"]["mean"]
        self.assertGreater(float(jnp.max(jnp.abs(stem_mean))), 0.0)
        for (path, a), (_, b) in zip(_leaves_with_paths(old), _leaves_with_paths(new), strict=True):
            self.assertFalse(np.allclose(a, b), path)

        (logits_eval, _), same = self.model.apply(v, self.x, train=False, mutable=["batch_stats"])
        jax.tree_util.tree_map(np.testing.assert_array_equal, same["batch_stats"], old)
        logits_plain, _ = self.model.apply(v, self.x, train=False)
        np.testing.assert_array_equal(logits_eval, logits_plain)

    def test_bn_momentum_is_0_9(self):
        _, updates = self.model.apply(self.variables, self.x, train=True, mutable=["batch_stats"])
        params = self.variables["params"]
        conv = params["Conv_0"]["kernel"]
        stem = jax.lax.conv_general_dilated(
            self.x, conv, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        batch_mean = jnp.mean(stem, axis=(0, 1, 2))
        np.testing.assert_allclose(
            updates["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * batch_mean, rtol=1e-4, atol=1e-6
        )

    def test_init_statistics(self):
        params = self.variables["params"]
        # Largest conv of resnet8: stage 3, 3x3x64x64 (36 864 weights).
        big = params["BasicBlockA_2"]["Conv_1"]["kernel"]
        self.assertEqual(big.shape, (3, 3, 64, 64))
        target = math.sqrt(2.0 / (9 * 64))
        self.assertAlmostEqual(float(jnp.std(big)) / target, 1.0, delta=0.1)
        self.assertLess(abs(float(jnp.mean(big))), 0.1 * target)
        # Not truncated: a normal puts ~0.27% of mass beyond 3 sigma (a truncated one, none).
        self.assertGreater(int(jnp.sum(jnp.abs(big) > 3 * target)), 20)

        kernel, bias = params["classifier"]["kernel"], params["classifier"]["bias"]
        self.assertAlmostEqual(float(jnp.std(kernel)) / math.sqrt(2.0 / 64), 1.0, delta=0.1)
        self.assertLessEqual(float(jnp.max(jnp.abs(bias))), 1.0 / math.sqrt(64))
        self.assertGreater(float(jnp.std(bias)), 0.0)

        for path, leaf in _leaves_with_paths(params):
            if path.endswith("scale"):
                np.testing.assert_array_equal(leaf, 1.0)
            elif "BatchNorm" in path and path.endswith("bias"):
                np.testing.assert_array_equal(leaf, 0.0)
        for path, leaf in _leaves_with_paths(self.variables["batch_stats"]):
            np.testing.assert_array_equal(leaf, 1.0 if path.endswith("var") else 0.0)

    def test_bf16_forward_is_finite(self):
        model = get_model("resnet8", 10, dtype=jnp.bfloat16)
        logits, features = model.apply(self.variables, self.x, train=False)
        self.assertEqual(logits.dtype, jnp.bfloat16)
        self.assertTrue(np.all(np.isfinite(np.asarray(logits, np.float32))))
        ref, _ = self.model.apply(self.variables, self.x, train=False)
        np.testing.assert_allclose(np.asarray(logits, np.float32), ref, rtol=0.1, atol=0.1)


class HeadTest(parameterized.TestCase):
    def _head(self, name, num_classes=6, in_features=16):
        head = heads_lib.make_head(name, num_classes, in_features)
        x = jax.random.normal(jax.random.key(3), (8, in_features))
        params = head.init(jax.random.key(4), x)
        return head, params, x

    def test_normed_outputs_are_cosines(self):
        head, params, x = self._head("normed")
        out = head.apply(params, x)
        self.assertTrue(np.all(np.abs(out) <= 1.0 + 1e-6))
        # LDAM init: class columns have unit length.
        np.testing.assert_allclose(
            jnp.linalg.norm(params["params"]["kernel"], axis=0), 1.0, rtol=1e-6
        )
        # A feature parallel to column 2 has cosine 1 with it, whatever its length.
        col = params["params"]["kernel"][:, 2]
        np.testing.assert_allclose(head.apply(params, 7.0 * col[None])[0, 2], 1.0, rtol=1e-5)

    @pytest.mark.slow
    def test_cosine_logits_scaled_by_fixed_sigma(self):
        head, params, x = self._head("cosine")
        self.assertEqual(jax.tree_util.tree_structure(params["params"]).num_leaves, 1)
        out = head.apply(params, x)
        self.assertTrue(np.all(np.abs(out) <= 20.0 + 1e-4))
        col = params["params"]["kernel"][:, 0]
        np.testing.assert_allclose(head.apply(params, 0.3 * col[None])[0, 0], 20.0, rtol=1e-5)
        # Glorot uniform: bound sqrt(6 / (fan_in + fan_out)).
        bound = math.sqrt(6.0 / (16 + 6))
        self.assertLessEqual(float(jnp.max(jnp.abs(params["params"]["kernel"]))), bound)

    @parameterized.parameters("linear", "normed", "cosine")
    def test_zero_feature_is_finite(self, name):
        head, params, _ = self._head(name)
        zero = jnp.zeros((2, 16))
        out = head.apply(params, zero)
        self.assertTrue(np.all(np.isfinite(out)))
        grads = jax.grad(lambda p, z: jnp.sum(head.apply(p, z)), argnums=(0, 1))(params, zero)
        for leaf in jax.tree_util.tree_leaves(grads):
            self.assertTrue(np.all(np.isfinite(leaf)))

    @pytest.mark.slow
    def test_model_level_heads(self):
        x = jax.random.normal(jax.random.key(5), (2, 8, 8, 3))
        for head, limit in (("normed", 1.0), ("cosine", 20.0)):
            model = get_model("resnet8", 4, head=head)
            logits, _ = model.apply(model.init(jax.random.key(0), x, train=False), x, train=False)
            self.assertTrue(np.all(np.abs(logits) <= limit + 1e-4), head)


class ShortcutTest(absltest.TestCase):
    def test_option_a_subsamples_and_zero_pads(self):
        x = jnp.arange(2 * 4 * 4 * 16, dtype=jnp.float32).reshape(2, 4, 4, 16)
        y = option_a_shortcut(x, 32)
        self.assertEqual(y.shape, (2, 2, 2, 32))
        np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
        np.testing.assert_array_equal(y[..., :8], 0.0)
        np.testing.assert_array_equal(y[..., 24:], 0.0)
        with self.assertRaisesRegex(ValueError, "only doubles"):
            option_a_shortcut(x, 64)

    def test_shortcut_is_a_field_of_one_block(self):
        x = jnp.zeros((1, 8, 8, 16))
        shapes = lambda shortcut: jax.eval_shape(
            lambda: BasicBlock(32, 2, shortcut).init(jax.random.key(0), x, train=False)
        )["params"]
        self.assertNotIn("shortcut_conv", shapes("A"))  # parameter-free
        self.assertEqual(shapes("B")["shortcut_conv"]["kernel"].shape, (1, 1, 16, 32))
        with self.assertRaisesRegex(ValueError, "shortcut='C'"):
            shapes("C")

    @pytest.mark.slow
    def test_zero_init_residual(self):
        model = get_model("resnet8", 10, zero_init_residual=True)
        params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)), train=False)["params"]
        for block in ("BasicBlockA_0", "BasicBlockA_1", "BasicBlockA_2"):
            np.testing.assert_array_equal(params[block]["BatchNorm_1"]["scale"], 0.0)
            np.testing.assert_array_equal(params[block]["BatchNorm_0"]["scale"], 1.0)
        with self.assertRaisesRegex(ValueError, "zero_init_residual=False"):
            _init_shapes(get_model("wrn16_2", 10, zero_init_residual=True), (1, 8, 8, 3))


class TinyBackbone(nn.Module):
    """Pooled input channels through one Dense: a backbone in a few flops."""

    supports_cpu_ops = False
    foldable = False
    feature_dim = 4

    @nn.compact
    def __call__(self, x, train):
        del train
        return nn.Dense(self.feature_dim)(jnp.mean(x, axis=(1, 2)))


class NetworkTest(absltest.TestCase):
    """Network = backbone -> [neck] -> head, features -> [side]; backbone params at the top."""

    @pytest.mark.slow
    def test_wiring(self):
        net = Network(TinyBackbone(), 3, neck=nn.Dense(5), side=nn.Dense(6))
        x = jax.random.normal(jax.random.key(0), (2, 4, 4, 2))
        variables = net.init(jax.random.key(1), x, train=False)
        p = variables["params"]
        self.assertEqual(set(p), {"Dense_0", "neck", "classifier", "side"})
        self.assertEqual(net.feature_dim, 6)
        dense = lambda q, h: h @ q["kernel"] + q["bias"]
        h = dense(p["neck"], dense(p["Dense_0"], jnp.mean(x, axis=(1, 2))))
        logits, features = net.apply(variables, x, train=False)
        np.testing.assert_allclose(logits, dense(p["classifier"], h), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(features, dense(p["side"], h), rtol=1e-6, atol=1e-6)
        # The head never sees the side module: the same logits without it.
        plain = Network(TinyBackbone(), 3, neck=nn.Dense(5))
        no_side = {"params": {k: v for k, v in p.items() if k != "side"}}
        np.testing.assert_array_equal(plain.apply(no_side, x, train=False)[0], logits)


if __name__ == "__main__":
    absltest.main()
