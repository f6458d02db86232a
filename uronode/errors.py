"""Exceptions of the shared package. Each carries a reason meant for a person."""


class UronodeError(Exception):
    """Base class of the node's own errors."""


class StoreError(UronodeError):
    """An instance could not be stored."""


class OutOfResources(StoreError):
    """The disk is full, over its watermark, or a write failed: the sender may try again later."""


class InvalidInstance(StoreError):
    """The instance cannot be understood or lacks what the node needs (UIDs, ...)."""
