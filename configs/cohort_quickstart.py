"""The quick-start as a cohort: a CE teacher, then CE, KD and BKD students trained together
by one program on scikit-learn's digits (no download):

    python -m ltkd_jax.main --config configs/cohort_quickstart.py --workdir /tmp/ltkd_cohort

Arguments: methods (default ce,kd,bkd), seeds (default 0), data (shared | per_seed). Every
member is the quick-start recipe (configs/quickstart.py) with the method's own defaults; each
trains in WORKDIR/<method>_s<seed>/, and WORKDIR/cohort.md compares them.
"""

import importlib.util
import pathlib

from ltkd_jax.config import defaults


def quickstart_recipe():
    spec = importlib.util.spec_from_file_location(
        "quickstart", pathlib.Path(__file__).resolve().with_name("quickstart.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg=None):
    args = defaults.parse_arg(arg, methods="ce,kd,bkd", seeds="0", data="shared")
    members = {}
    for method in (m.strip() for m in args.methods.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            member = defaults.set_method(quickstart_recipe(), method)
            member.seed = seed
            members[f"{method}_s{seed}"] = member
    return defaults.lock(defaults.cohort_config(members, args.data))
