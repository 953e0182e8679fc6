"""The error types of user mistakes, shared by every layer."""


class UserError(ValueError):
    """A mistake in the command line or config: the command line prints its message alone
    (no traceback) and exits 2."""


class WorkdirError(UserError):
    """The workdir cannot be used: a file, not writable, held by another process, or
    holding a run whose config or data conflicts with this one."""
