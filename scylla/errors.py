"""The one exception type for bad user input: the CLI prints its message as a single line and exits with 2."""


class ScyllaError(ValueError):
    """Bad input or configuration, with a message that says what is wrong and how to fix it."""
