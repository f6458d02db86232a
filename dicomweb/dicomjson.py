"""Small builders of DICOM JSON (PS3.18 F.2) for query results made from the index."""

from __future__ import annotations

from typing import Any

# keyword -> (tag, VR) of every attribute the index can answer with
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "SpecificCharacterSet": ("00080005", "CS"),
    "StudyDate": ("00080020", "DA"),
    "StudyTime": ("00080030", "TM"),
    "AccessionNumber": ("00080050", "SH"),
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
    "NumberOfSeriesRelatedInstances": ("00201209", "IS"),
    "SOPClassUID": ("00080016", "UI"),
    "SOPInstanceUID": ("00080018", "UI"),
    "InstanceNumber": ("00200013", "IS"),
}
BY_TAG = {tag: keyword for keyword, (tag, _) in ATTRIBUTES.items()}


def keyword_of(name: str) -> str | None:
    """A query parameter's attribute: a keyword, or a tag as 8 hex digits."""
    if name in ATTRIBUTES:
        return name
    return BY_TAG.get(name.upper())


def element(keyword: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON element; an empty value gives an element without Value."""
    _, vr = ATTRIBUTES[keyword]
    out: dict[str, Any] = {"vr": vr}
    if value is None or value == "" or value == []:
        return out
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        out["Value"] = [{"Alphabetic": str(v)} for v in values]
    elif vr == "IS":
        out["Value"] = [int(v) for v in values]
    else:
        out["Value"] = [str(v) for v in values]
    return out


def dataset(values: dict[str, Any]) -> dict[str, Any]:
    """A DICOM JSON data set from keyword -> value, in tag order."""
    return {ATTRIBUTES[k][0]: element(k, v) for k, v in sorted(values.items(), key=lambda kv: ATTRIBUTES[kv[0]][0])}
