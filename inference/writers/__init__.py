"""Findings as standard DICOM results in the source study: SEG, Secondary Captures, key objects, SR.

::

    results = write_results(volume, findings)       # Results(seg, secondary_captures, sr, kos)
    paths = save_results(results, folder)           # Part 10 files

Every output carries Manufacturer "uronode" (the node and Orthanc's routing
never re-process it), the model's name as ManufacturerModelName and its version
as SoftwareVersions, the source StudyInstanceUID, a SeriesNumber after the source
series' number N (SEG 1000 x N + 901, SC 1000 x N + 902, SR 1000 x N + 903, key
object selection 1000 x N + 904; the fixed 901-904 where the source has no number
from 1, or one too large: ``Identity.series_number``), a SeriesDescription naming
the source series and the model version ("AI urinary stones report: series 3
(Abdomen) v3.8.0": ``Identity.description``) and UIDs derived from the source
series UID and the model, so a re-run gives the same UIDs. No stone: no SEG and
no key object selection, one overlay image that says so (the summary), and the
SR says "Calculus: Not detected" (SCT 260415000).
"""

from inference.writers.errors import WriterError
from inference.writers.results import Results, findings_record, save_results, write_results
from inference.writers.sources import (
    KOS_SERIES_NUMBER,
    MANUFACTURER,
    SC_SERIES_NUMBER,
    SEG_SERIES_NUMBER,
    SR_SERIES_NUMBER,
)

__all__ = [
    "KOS_SERIES_NUMBER",
    "MANUFACTURER",
    "SC_SERIES_NUMBER",
    "SEG_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
    "Results",
    "WriterError",
    "findings_record",
    "save_results",
    "write_results",
]
