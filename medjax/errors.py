"""Errors `medjax.main` reports in one line, without a traceback (`--debug` shows it)."""


class ConfigError(ValueError):
    """A problem the user can fix; the message names the thing, the expected form and the fix."""


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient and `trainer.on_nonfinite` is "stop"."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint of the current step was saved. Exit status 143."""
