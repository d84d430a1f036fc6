"""Errors `medjax.main` reports in one line, without a traceback (`--debug` shows it)."""


class ConfigError(ValueError):
    """A problem the user can fix; the message names the thing, the expected form and the fix."""


class NonFiniteValue(ConfigError):
    """An input file holds NaN or an infinite value where a number must be finite."""


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient and `trainer.on_nonfinite` is "stop"."""


class Preempted(Exception):
    """SIGTERM or SIGINT arrived while training; a checkpoint of the current step was saved.
    Exit status 128 + the signal's number (143, 130)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
