"""Exceptions of the shared package. Each carries a reason meant for a person."""


class UronodeError(Exception):
    """Base class of the node's own errors."""


class StoreError(UronodeError):
    """An instance could not be stored."""


class OutOfResources(StoreError):
    """The disk is full, over its watermark, or a write failed: the sender may try again later."""


class InvalidInstance(StoreError):
    """The instance cannot be understood or lacks what the node needs (UIDs, ...)."""


class NotADataSet(InvalidInstance):
    """Bytes without a preamble and ``DICM`` that cannot be read as a bare data set either: no DICOM at all."""


class MalformedDataSet(InvalidInstance, ValueError):
    """The data set is broken (truncated, a length that does not fit, pixel data of the wrong size); says how.

    An :class:`InvalidInstance`: whoever refuses instances that cannot be
    understood (the C-STORE handler, STOW-RS, the upload) refuses these too.
    """
