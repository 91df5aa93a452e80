"""User-facing errors.

`UserError` is raised for mistakes a user can fix (bad prompt, missing file, wrong image size,
checkpoint/config mismatch, bad guidance value). Its message names the fix. It subclasses
`ValueError` so library callers can catch it as such; the CLI prints it in one line and exits
with status 2.
"""


class UserError(ValueError):
    """A mistake in the user's input; the message says how to fix it."""


class CheckpointError(UserError):
    """A checkpoint is missing, half-written, or does not match the config."""


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/Inf during training (message names the step)."""
