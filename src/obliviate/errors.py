"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class ObliviateError(Exception):
    """Bad input: an unknown name, a malformed spec or file, a request a method cannot satisfy."""


class SpecError(ObliviateError):
    """A forget spec that cannot be parsed or resolved."""


class ConfigError(ObliviateError):
    """An unknown configuration key or a value of the wrong type or range."""


class IntegrityError(ObliviateError):
    """A stored model whose bytes do not match their recorded sha256."""
