"""The error the writers raise when the findings cannot become DICOM results."""

from inference.errors import InferenceError


class WriterError(InferenceError):
    """The volume and findings cannot be written as SEG, SC and SR.

    ``reason`` is a short sentence for logs and job records (never patient data).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
