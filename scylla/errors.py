"""The exceptions for bad user input: the CLI prints the message as one line and exits with 2.

Internal invariants (what no input can break) are asserts, not these.
"""


class ScyllaError(ValueError):
    """Bad input or configuration, with a message that says what is wrong and how to fix it."""


class ConfigError(ScyllaError):
    """A setting is wrong: in a YAML file, a flag or a constructor argument. The message names the key."""


class InputError(ScyllaError):
    """Something given is wrong or missing: a path, a model, a drafter spec, records, a prompt."""
