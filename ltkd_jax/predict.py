"""`python -m ltkd_jax.predict`: the command of `ltkd_jax.deploy.predict` (see its docstring)."""

import sys

from ltkd_jax.deploy.predict import main

if __name__ == "__main__":
    sys.exit(main())
