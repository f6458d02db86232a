"""Small builders of DICOM JSON (PS3.18 F.2) for query results made from the index."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from starlette.responses import Response

# keyword -> (tag, VR) of every attribute the index can answer with
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "SpecificCharacterSet": ("00080005", "CS"),
    "StudyDate": ("00080020", "DA"),
    "StudyTime": ("00080030", "TM"),
    "AccessionNumber": ("00080050", "SH"),
    "InstanceAvailability": ("00080056", "CS"),
    "ModalitiesInStudy": ("00080061", "CS"),
    "ReferringPhysicianName": ("00080090", "PN"),
    "RetrieveURL": ("00081190", "UR"),
    "StudyDescription": ("00081030", "LO"),
    "PatientName": ("00100010", "PN"),
    "PatientID": ("00100020", "LO"),
    "PatientBirthDate": ("00100030", "DA"),
    "PatientSex": ("00100040", "CS"),
    "StudyInstanceUID": ("0020000D", "UI"),
    "StudyID": ("00200010", "SH"),
    "NumberOfStudyRelatedSeries": ("00201206", "IS"),
    "NumberOfStudyRelatedInstances": ("00201208", "IS"),
    "Modality": ("00080060", "CS"),
    "SeriesDescription": ("0008103E", "LO"),
    "SeriesInstanceUID": ("0020000E", "UI"),
    "SeriesNumber": ("00200011", "IS"),
    "SeriesDate": ("00080021", "DA"),
    "SeriesTime": ("00080031", "TM"),
    "NumberOfSeriesRelatedInstances": ("00201209", "IS"),
    "SOPClassUID": ("00080016", "UI"),
    "SOPInstanceUID": ("00080018", "UI"),
    "InstanceNumber": ("00200013", "IS"),
    "NumberOfFrames": ("00280008", "IS"),
    "Rows": ("00280010", "US"),
    "Columns": ("00280011", "US"),
    "BitsAllocated": ("00280100", "US"),
}
BY_TAG = {tag: keyword for keyword, (tag, _) in ATTRIBUTES.items()}


def keyword_of(name: str) -> str | None:
    """A query parameter's attribute: a keyword, or a tag as 8 hex digits."""
    if name in ATTRIBUTES:
        return name
    return BY_TAG.get(name.upper())


PERSON_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def person_name(value: str) -> dict[str, str]:
    """A PN value as DICOM JSON has it (PS3.18 F.2.2): its ``=``-separated component groups by name.

    Empty groups are left out (``Yamada^Tarou==やまだ^たろう`` has no Ideographic member).
    """
    return {name: group for name, group in zip(PERSON_NAME_GROUPS, value.split("="), strict=False) if group}


def _element(vr: str, value: Any) -> dict[str, Any]:
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [person_name(str(v)) for v in values]}
    if vr in ("IS", "US"):
        return {"vr": vr, "Value": [int(v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def _text_element(vr: str, value: Any) -> dict[str, Any]:
    """``_element`` of a VR whose values are strings, with the common case (one string) first."""
    if type(value) is str:
        return {"vr": vr, "Value": [value]} if value else {"vr": vr}
    return _element(vr, value)


def _number_element(vr: str, value: Any) -> dict[str, Any]:
    """``_element`` of an IS or a US, with the common case (one int) first."""
    if type(value) is int:
        return {"vr": vr, "Value": [value]}
    return _element(vr, value)


_BUILDERS = {"PN": _element, "IS": _number_element, "US": _number_element}


def datasets(keywords: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One DICOM JSON data set per row: the ``keywords`` (in tag order) with the row's values.

    The layout (tags in order, VRs, each one's builder) is worked out once for all rows: a
    300-instance QIDO answer is 300 data sets of the same attributes.
    """
    layout = [(keyword, *ATTRIBUTES[keyword]) for keyword in sorted(set(keywords), key=lambda k: ATTRIBUTES[k][0])]
    builders = [(keyword, tag, vr, _BUILDERS.get(vr, _text_element)) for keyword, tag, vr in layout]
    return [{tag: build(vr, row.get(keyword)) for keyword, tag, vr, build in builders} for row in rows]


def dumps(value: Any) -> bytes:
    """DICOM JSON text (UTF-8) of data sets built here or by pydicom; a NaN or infinite float becomes null."""
    return orjson.dumps(value)


class DicomJSONResponse(Response):
    """An ``application/dicom+json`` answer, encoded by ``dumps``."""

    media_type = "application/dicom+json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
