"""The registry of methods and the `ltkd_jax.losses` namespace."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil

from ltkd_jax import losses, methods
from ltkd_jax.config import defaults
from ltkd_jax.methods import base

HERE = pathlib.Path(__file__).parent
INFRASTRUCTURE = ("base", "primitives")


def test_every_method_module_has_its_test_module():
    names = [m.name for m in pkgutil.iter_modules(methods.__path__)]
    modules = [n for n in names if not n.startswith("_") and n not in INFRASTRUCTURE]
    assert modules
    missing = [n for n in modules + ["primitives"] if not (HERE / f"test_{n}.py").exists()]
    assert not missing, f"add tests/methods/test_<module>.py for {missing}"


def _method_modules():
    names = [m.name for m in pkgutil.iter_modules(methods.__path__)]
    return [
        importlib.import_module(f"ltkd_jax.methods.{n}")
        for n in names
        if not n.startswith("_") and n not in INFRASTRUCTURE
    ]


def _loss_functions():
    """Every public `*_loss` function of every method module (a new module included)."""
    return [
        fn
        for module in _method_modules()
        for name, fn in vars(module).items()
        if name.endswith("_loss") and callable(fn) and fn.__module__ == module.__name__
    ]


def test_losses_reexports_losses_from_their_method_modules():
    for name in losses.__all__:
        fn = getattr(losses, name)
        assert fn.__module__.startswith("ltkd_jax.methods."), name
        assert getattr(inspect.getmodule(fn), name) is fn, name
    exported = {getattr(losses, n) for n in losses.__all__}
    seed = {"bkd", "cbd", "dkd", "dukd", "kd", "krdistill", "ltkd", "focal", "ldam_drw"}
    assert {fn for fn in _loss_functions() if fn.__module__.rsplit(".", 1)[1] in seed} <= exported


def test_calling_convention():
    """Student logits positional first; everything else keyword-only; shared names."""
    functions = [*_loss_functions(), losses.cross_entropy, losses.weighted_cross_entropy]
    assert len(functions) >= 14
    for fn in functions:
        name = fn.__name__
        params = list(inspect.signature(fn).parameters.values())
        assert params[0].name == "logits", name
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), name
        assert params[1].name == "labels", name
        assert inspect.getdoc(fn), name
    for fn in [losses.tgls_loss, losses.dukd_loss, losses.krdistill_loss, losses.ltkd_loss]:
        assert "RECONSTRUCTION" in inspect.getdoc(fn)


def test_every_spec_declares_its_kind_and_its_epoch_counted_loss_fields():
    """A loss field counted in epochs that a Spec forgets would not be rescaled when the
    method is carried onto a shorter schedule (recipes.with_method, reproduce.py --short)."""
    assert {s.kind for s in methods.METHODS.values()} == set(base.KINDS)
    for name, spec in methods.METHODS.items():
        trains = spec.kind == base.TRAINING
        assert (spec.make is not None, spec.correct is None) == (trains, trains), name
        counted = {f for f in spec.config() if f.endswith(("_epoch", "_epochs"))}
        assert set(spec.epoch_fields) == counted, name


def test_scaled_epoch_fields_keep_their_fraction_of_training_and_at_least_one_epoch():
    config = defaults.base_config("dkd")
    assert methods.scaled_epoch_fields(config, 0.5) == {"warmup_epochs": 10}
    assert methods.scaled_epoch_fields(config, 0.01) == {"warmup_epochs": 1}  # never 0
    config = defaults.base_config("ldam_drw")
    assert methods.scaled_epoch_fields(config, 240 / 200) == {"drw_epoch": 192}
    assert methods.scaled_epoch_fields(defaults.base_config("lskd"), 0.5) == {}
