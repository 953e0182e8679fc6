"""The error type of user mistakes, shared by every layer."""


class UserError(ValueError):
    """A mistake in the command line or config: the command line prints its message alone
    (no traceback) and exits 2."""
