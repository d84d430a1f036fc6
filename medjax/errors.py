"""The error raised for bad user input: a config, a path or a file the user can fix."""


class ConfigError(ValueError):
    """A problem the user can fix; the message names the thing, the expected form and the fix.

    `medjax.main` prints it without a traceback.
    """
