"""A cohort on CIFAR-LT: several methods and seeds trained by one program against one CE
teacher (ltkd_jax/runs/cohort.py).

    python -m ltkd_jax.main \
        --config configs/cohort_cifar.py:methods=ce,kd,bkd,dkd,ltkd,seeds=0,1,2 \
        --workdir runs/c100 --config.data.archive=../shared/data/cifar100-png.zip

Each member is exactly the config of `configs/<method>_cifar.py` (same argument) with its
seed, and trains in WORKDIR/<method>_s<seed>/; the teacher is trained once into
WORKDIR/teacher unless `teacher_workdir=` names a finished one. Arguments: methods, seeds,
data (shared | per_seed), and those of the method configs (dataset, imb, student, teacher,
teacher_workdir, recipe). Shared fields are set as in a run (`--config.num_epochs=2` reaches
every member); a member's own ones as `--config.members.<member>.loss.<field>=...`.
WORKDIR/cohort.md and cohort.png give per method the mean and std over seeds.
"""

import importlib.util
import pathlib

import ml_collections

from ltkd_jax.config import defaults

HERE = pathlib.Path(__file__).resolve().parent
METHOD_ARGS = ("dataset", "imb", "student", "teacher", "teacher_workdir", "recipe")


def method_config(method: str, arg: str | None) -> ml_collections.ConfigDict:
    """The config of the sibling file configs/<method>_cifar.py."""
    path = HERE / f"{method}_cifar.py"
    if not path.exists():
        known = sorted(p.name.removesuffix("_cifar.py") for p in HERE.glob("*_cifar.py"))
        raise ValueError(f"methods: no config {path.name}; choose among {known}")
    spec = importlib.util.spec_from_file_location(f"cohort_member_{method}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg=None):
    args = defaults.parse_arg(
        arg,
        methods="ce,kd,bkd",
        seeds="0",
        data="shared",
        dataset="cifar100",
        imb=100.0,
        student="resnet32",
        teacher="resnet32",
        teacher_workdir="",
        recipe="bkd",
    )
    method_arg = ",".join(f"{k}={args[k]}" for k in METHOD_ARGS)
    members = {}
    for method in (m.strip() for m in args.methods.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            member = ml_collections.ConfigDict(method_config(method, method_arg).to_dict())
            member.seed = seed
            members[f"{method}_s{seed}"] = member
    return defaults.lock(defaults.cohort_config(members, args.data))
