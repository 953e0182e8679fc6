"""The registry of methods and the `ltkd_jax.losses` namespace."""

from __future__ import annotations

import inspect
import pathlib
import pkgutil

import pytest

from ltkd_jax import losses, methods

HERE = pathlib.Path(__file__).parent
INFRASTRUCTURE = ("base", "primitives")


def test_every_method_module_has_its_test_module():
    names = [m.name for m in pkgutil.iter_modules(methods.__path__)]
    modules = [n for n in names if not n.startswith("_") and n not in INFRASTRUCTURE]
    assert modules
    missing = [n for n in modules + ["primitives"] if not (HERE / f"test_{n}.py").exists()]
    assert not missing, f"add tests/methods/test_<module>.py for {missing}"


def test_losses_reexports_each_loss_from_its_method_module():
    for name, fn in losses.LOSSES.items():
        assert fn.__module__.startswith("ltkd_jax.methods."), name
        module = inspect.getmodule(fn)
        assert getattr(module, fn.__name__) is fn, name
        assert getattr(losses, fn.__name__) is fn, name
    assert losses.get_loss("bkd") is losses.bkd_loss
    with pytest.raises(KeyError, match="known"):
        losses.get_loss("nope")


def test_calling_convention():
    """Student logits positional first; everything else keyword-only; shared names."""
    for name, fn in losses.LOSSES.items():
        params = list(inspect.signature(fn).parameters.values())
        assert params[0].name == "logits", name
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), name
        assert params[1].name == "labels", name
        assert inspect.getdoc(fn), name
    for fn in [losses.tgls_loss, losses.dukd_loss, losses.krdistill_loss, losses.ltkd_loss]:
        assert "RECONSTRUCTION" in inspect.getdoc(fn)
