"""The runtime's one shape of validation error, in a leaf module every layer may import: the setting or field,
its value, and what is allowed."""

from __future__ import annotations


class InvalidValue(ValueError):
    """A setting or request field out of what the runtime allows (a ``ValueError``, as callers expect)."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        super().__init__(f"{name}={value!r} is invalid: must be {allowed}")
        self.name = name
        self.value = value
        self.allowed = allowed


def require(ok: bool, name: str, value: object, allowed: str) -> None:
    """Raise ``InvalidValue`` naming the field, its value and what is allowed, unless ``ok``."""
    if not ok:
        raise InvalidValue(name, value, allowed)
