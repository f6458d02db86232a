"""Exceptions of the inference package. Each carries a reason meant for a person."""

from uronode.errors import UronodeError


class InferenceError(UronodeError):
    """Base class of the errors raised while turning a series into findings."""


class VolumeError(InferenceError):
    """The instances cannot be assembled into a CT volume the model can read.

    ``reason`` is a short sentence for logs and job records (never patient data).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModelError(InferenceError):
    """A model folder is missing, incomplete, or its card does not match what the code needs."""
