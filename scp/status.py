"""DIMSE status values the listener answers with (PS3.4 Annex B, PS3.7 Annex C)."""

import enum


class StoreStatus(enum.IntEnum):
    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    """Refused: the request's SOP Class is not the one negotiated for its presentation context."""
    OUT_OF_RESOURCES = 0xA700
    """Refused: out of resources (disk full, over the watermark, a write failed)."""
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    WARNING_DATA_SET_DOES_NOT_MATCH = 0xB007
    """Stored, with a warning: readable, but not as the standard encodes it (e.g. excess pixel data)."""
    PROCESSING_FAILURE = 0x0110


class RejectResult(enum.IntEnum):
    PERMANENT = 0x01
    TRANSIENT = 0x02


class RejectSource(enum.IntEnum):
    SERVICE_USER = 0x01
    SERVICE_PROVIDER_ACSE = 0x02
    SERVICE_PROVIDER_PRESENTATION = 0x03


class RejectReason(enum.IntEnum):
    """Reasons, as numbered for each source."""

    CALLING_AE_NOT_RECOGNISED = 0x03  # source: service user
    CALLED_AE_NOT_RECOGNISED = 0x07  # source: service user
    LOCAL_LIMIT_EXCEEDED = 0x02  # source: service provider (presentation)
