"""Every config under configs/ loads, is locked, and bad values stop the run early."""

import importlib.util
import pathlib

import pytest

from ltkd_jax import methods
from ltkd_jax.config import checks, defaults, recipes
from ltkd_jax.runs import rundir
from ltkd_jax.training import sharding

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.py"))


def _load(path: pathlib.Path, arg: str | None = None):
    spec = importlib.util.spec_from_file_location("cfg_" + path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, mod.get_config(arg)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_loads_locks_and_validates(path):
    mod, config = _load(path)
    assert "python -m ltkd_jax.main" in mod.__doc__, "docstring must show the launch command"
    assert config.is_locked
    with pytest.raises(AttributeError):
        config.no_such_field = 1
    if "members" in config:  # a cohort: every member is a run config
        for member in config.members.values():
            checks.validate_config(member)
        return
    if methods.needs_of(config).init_run:  # starts from a finished run: a required path
        with pytest.raises(ValueError, match="config.init.workdir"):
            checks.validate_config(config)
        config.init.workdir = "/some/finished/run"
    checks.validate_config(config)


def test_distillation_configs_take_pairs_and_recipes():
    _, config = _load(
        CONFIG_DIR / "krdistill_cifar.py", "teacher=resnet32x4,student=resnet8x4,recipe=mdistiller"
    )
    assert (config.teacher.model, config.model.name) == ("resnet32x4", "resnet8x4")
    assert (config.num_epochs, config.batch_size, config.optim.lr) == (240, 64, 0.05)
    _, config = _load(CONFIG_DIR / "cbd_cifar.py", "teachers=4,dataset=cifar10")
    assert (config.method, config.teacher.count, config.data.name) == ("cbd_ensemble", 4, "cifar10")
    _, config = _load(CONFIG_DIR / "bkd_cifar.py", "dataset=cifar10")
    assert config.loss.class_weighting == "drw"  # BKD's CIFAR-10 rule (ltkd_jax/methods/bkd.py)


def test_config_argument_selects_dataset_and_imbalance():
    _, config = _load(CONFIG_DIR / "ce_cifar.py", "dataset=cifar10,imb=50")
    assert config.data.name == "cifar10"
    assert config.data.imbalance_factor == 50.0
    with pytest.raises(ValueError, match="not understood"):
        _load(CONFIG_DIR / "ce_cifar.py", "imbalance=3")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("data.name", "mnist", "config.data.name='mnist' is not known"),
        ("model.name", "resnet9", "config.model.name='resnet9' is not known"),
        ("data.sampler", "random", "config.data.sampler='random' is not known"),
        ("data.imbalance_factor", 0.5, "must be >= 1"),
        ("data.archive", "/no/such/cifar.zip", "does not exist"),
        ("method", "magic", "config.method='magic' is not known"),
    ],
)
def test_invalid_values_name_the_field_and_the_fix(field, value, message):
    config = defaults.base_config()
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    with pytest.raises(ValueError, match=message):
        checks.validate_config(config)


def test_batch_size_must_divide_over_devices():
    mesh = sharding.make_mesh(8)
    sharding.check_batch_size(104, mesh)
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        sharding.check_batch_size(100, mesh)


def test_a_wrong_method_hyper_parameter_fails_before_any_data():
    """Method checks run in validate_config, which the command line calls first."""
    _, config = _load(CONFIG_DIR / "ltkd_cifar.py")
    config.loss.rebalance = "batchh"
    with pytest.raises(ValueError, match=r"config.loss.rebalance='batchh' is not known"):
        checks.validate_config(config)
    _, config = _load(CONFIG_DIR / "dkd_cifar.py")
    config.loss.temperature = 0.0
    with pytest.raises(ValueError, match=r"config.loss.temperature=0.0 must be > 0"):
        checks.validate_config(config)


def test_a_method_takes_only_its_own_hyper_parameters():
    _, config = _load(CONFIG_DIR / "bkd_cifar.py")
    with pytest.raises(AttributeError):  # locked: LTKD's field does not exist for BKD
        config.loss.rebalance = "batch"
    config.method = "ltkd"  # switched after the config was built: its section is BKD's
    with pytest.raises(ValueError, match="the method was changed after the config was built"):
        checks.validate_config(config)


def test_old_run_configs_upgrade_to_the_method_sections():
    saved = {
        "method": "kd",
        "model": {"name": "resnet8", "projection_dim": 0},
        "loss": {"temperature": None, "alpha": 0.5, "rebalance": "batch", "ce_weight": None},
    }
    upgraded = defaults.upgrade_saved_config(saved)
    assert "projection_dim" not in upgraded["model"]
    assert upgraded["loss"] == {**defaults.loss_section("kd").to_dict(), "alpha": 0.5}
    # What runs before data.norm_stats / model.weight_init used: the dataset's statistics
    # and the LDAM-DRW init, so the mdistiller recipe's values read as a change.
    assert upgraded["model"]["weight_init"] == "ldam"
    old_mdistiller = _load(CONFIG_DIR / "kd_cifar.py", "recipe=mdistiller")[1].to_dict()
    del old_mdistiller["data"]["norm_stats"], old_mdistiller["model"]["weight_init"]
    now = _load(CONFIG_DIR / "kd_cifar.py", "recipe=mdistiller")[1].to_dict()
    refused, _ = rundir.config_changes(defaults.upgrade_saved_config(old_mdistiller), now)
    assert set(refused) == {"data.norm_stats", "model.weight_init"}


def test_large_scale_configs_take_the_benchmark_as_an_argument():
    _, ce = _load(CONFIG_DIR / "ce_large_scale.py")
    assert (ce.data.name, ce.model.name, ce.num_epochs) == ("imagenet_lt", "resnext50_32x4d", 90)
    _, ce = _load(CONFIG_DIR / "ce_large_scale.py", "dataset=inat2018,epochs=200")
    assert (ce.data.name, ce.model.name, ce.num_epochs) == ("inat2018", "resnet50", 200)
    _, cbd = _load(CONFIG_DIR / "cbd_large_scale.py", "dataset=inat2018")
    assert (cbd.method, cbd.num_epochs, cbd.teacher.count) == ("cbd", 200, 1)
    _, ens = _load(CONFIG_DIR / "cbd_large_scale.py", "teachers=4")
    assert (ens.method, ens.teacher.count, ens.teacher.color_jitter_teachers) == (
        "cbd_ensemble",
        4,
        2,
    )
    with pytest.raises(ValueError, match="no large-scale recipe"):
        _load(CONFIG_DIR / "bkd_large_scale.py", "dataset=cifar100")


@pytest.mark.parametrize("method", sorted(methods.NAMES))
def test_print_config_explains_every_field_and_lists_its_choices(method):
    config = defaults.base_config(method)
    lines = [line for line in defaults.describe_config(config).splitlines() if " = " in line]
    fields = {line.split(" = ")[0] for line in lines}
    assert {"data.name", "model.name", "optim.lr"} <= fields
    silent = [line for line in lines if "  # " not in line or not line.split("  # ", 1)[1]]
    assert not silent, silent
    for field, names in defaults.field_choices().items():
        shown = [line for line in lines if line.startswith(f"{field} = ")]
        if shown:
            assert f"One of: {' | '.join(names)}." in shown[0], field


def test_a_method_carried_onto_another_recipe_brings_what_its_spec_declares(tmp_path):
    """recipes.with_method (configs/folder.py, scripts/compare.py) reads only the method's
    Spec: its sampler, head, ensemble size and loss, epoch-counted fields rescaled."""
    recipe = recipes.folder_config(f"root={tmp_path},epochs=100", "ce")
    for name, spec in methods.METHODS.items():
        c = recipes.with_method(recipe, name, "folder")
        assert (c.method, c.data.name, c.num_epochs, c.optim.schedule) == (
            name,
            "folder",
            100,
            "cosine",
        )
        assert c.data.sampler == spec.sampler
        assert c.model.head == (spec.head or recipe.model.head), name
        assert (c.teacher.count, c.teacher.color_jitter_teachers) == (
            spec.teacher_count,
            spec.color_jitter_teachers,
        )
        for field in spec.epoch_fields:  # 100 of the defaults' 200 epochs
            assert c.loss[field] == round(spec.config()[field] / 2), (name, field)
        if methods.needs_of(c).init_run:
            c.init.workdir = "/a/finished/run"
        checks.validate_config(c)


def test_the_library_never_reads_a_file_under_configs():
    """configs/ is the user's copy (a wheel install has none): the package only exports the
    recipes the files there call."""
    package = pathlib.Path(recipes.__file__).resolve().parents[1]
    hits = [str(p) for p in package.rglob("*.py") if '"configs"' in p.read_text()]
    assert not hits
