"""`python -m ltkd_jax.evaluate`: the command of `ltkd_jax.deploy.evaluate` (see its docstring)."""

import sys

from ltkd_jax.deploy.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
