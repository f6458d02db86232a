"""Findings as standard DICOM results in the source study: SEG, Secondary Captures, SR.

::

    results = write_results(volume, findings)       # Results(seg, secondary_captures, sr)
    paths = save_results(results, folder)           # Part 10 files

Every output carries Manufacturer "uronode" (the node and Orthanc's routing
never re-process it), the model's name as ManufacturerModelName and its version
as SoftwareVersions, the source StudyInstanceUID, a fixed SeriesNumber (SEG 901,
SC 902, SR 903) and UIDs derived from the source series UID and the model, so a
re-run gives the same UIDs. No stone: no SEG, and the SR says "Calculus: Absent".
"""

from inference.writers.errors import WriterError
from inference.writers.results import Results, save_results, write_results
from inference.writers.sources import (
    MANUFACTURER,
    SC_SERIES_NUMBER,
    SEG_SERIES_NUMBER,
    SR_SERIES_NUMBER,
)

__all__ = [
    "MANUFACTURER",
    "SC_SERIES_NUMBER",
    "SEG_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
    "Results",
    "WriterError",
    "save_results",
    "write_results",
]
