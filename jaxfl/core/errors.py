"""Errors the library raises about settings (no JAX: the command line imports this for --help)."""


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message names the flag and the allowed values."""
