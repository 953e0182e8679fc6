"""`Network`: a backbone, optional method-owned modules, and the classifier head.

``(logits, features) = Network(...).apply(variables, x, train=...)``::

    pooled = backbone(x)              # [B, backbone.feature_dim]
    h = neck(pooled) if neck else pooled
    logits = classifier(h)            # params['classifier']
    features = side(h) if side else h

The backbone shares the network's scope (`nn.share_scope`), so its variables sit at the top
level of the tree (``params['Conv_0']``, ``params['BasicBlockA_0']``, ...), as in every
checkpoint written before the backbone and the head were separate modules. ``neck`` and
``side`` belong to a distillation method (e.g. CBD's projection, KRDistill's regressor); the
network only places them, at ``params['neck']`` and ``params['side']``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ltkd_jax.models.heads import make_head

# Top-level params keys of the method-owned Dense layers before they moved out of the
# backbones: the CBD projection and the KRDistill regressor, both {kernel, bias}.
LEGACY_KEYS = {"projection": "neck", "regressor": "side"}


def _width(module: nn.Module, role: str) -> int:
    width = getattr(module, "features", None)
    if not isinstance(width, int):
        raise TypeError(
            f"the {role} module {type(module).__name__} needs an int attribute `features` "
            "(its output width), as nn.Dense has"
        )
    return width


class Network(nn.Module):
    """A classifier around a backbone that returns pooled features (see the module doc)."""

    backbone: nn.Module
    num_classes: int
    head: str = "linear"  # heads.HEADS
    dtype: Any = jnp.float32
    neck: nn.Module | None = None  # features -> features the head sees (and returns)
    side: nn.Module | None = None  # head input -> returned features; the head never sees it
    weight_init: str = "ldam"  # the linear head's kernel init (layers.WEIGHT_INITS)

    @property
    def feature_dim(self) -> int:
        """Width D of the returned features."""
        if self.side is not None:
            return _width(self.side, "side")
        if self.neck is not None:
            return _width(self.neck, "neck")
        return self.backbone.feature_dim

    @property
    def foldable(self) -> bool:
        """Whether `cpu_ops.fold_batchnorm` applies (post-activation backbones)."""
        return self.backbone.foldable

    def with_ops(self, ops: str) -> Network:
        """The same network with the backbone's layers implemented by `ops` (`cpu_ops.OPS`);
        backbones without CPU kernels keep Flax's own layers for ``ops='cpu'``."""
        if self.backbone.supports_cpu_ops:
            return self.clone(backbone=self.backbone.clone(ops=ops))
        if ops == "folded":
            raise ValueError(f"{type(self.backbone).__name__} cannot fold its BatchNorm")
        return self

    def setup(self) -> None:
        nn.share_scope(self, self.backbone)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        features = self.backbone(x, train)
        if self.neck is not None:
            features = self.neck(features)
        head = make_head(
            self.head,
            self.num_classes,
            features.shape[-1],
            dtype=self.dtype,
            weight_init=self.weight_init,
        )
        logits = head(features)
        if self.side is not None:
            features = self.side(features)
        return logits, features


def needs_migration(params: dict) -> bool:
    """Whether `params` (a params tree) uses the keys of the layout before `Network`."""
    return any(old in params for old in LEGACY_KEYS)


def _rename(variables: dict, renames: dict[str, str]) -> dict:
    params = dict(variables["params"])
    for old, new in renames.items():
        if old in params:
            if new in params:
                raise ValueError(f"params have both {old!r} and {new!r}: a mixed layout")
            params[new] = params.pop(old)
    return {**variables, "params": params}


def migrate_variables(variables: dict) -> dict:
    """Renames the old method-owned params: 'projection' -> 'neck', 'regressor' -> 'side'.

    Everything else is unchanged (the backbone and the head kept their keys); a tree already
    in the new layout is returned as it is.
    """
    return _rename(variables, LEGACY_KEYS)


def legacy_variables(variables: dict) -> dict:
    """The inverse of `migrate_variables`: a new-layout tree (or its `jax.eval_shape`) with
    the old keys, e.g. as the restore target for a checkpoint written in the old layout."""
    return _rename(variables, {new: old for old, new in LEGACY_KEYS.items()})
