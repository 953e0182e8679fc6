"""`python -m ltkd_jax.export`: the command of `ltkd_jax.deploy.export` (see its docstring)."""

import sys

from ltkd_jax.deploy.export import main

if __name__ == "__main__":
    sys.exit(main())
