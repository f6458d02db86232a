"""Ask a real Orthanc what it holds, through its DICOMweb plugin and REST API."""

from __future__ import annotations

import json
import urllib.request


def qido(http: int, path: str) -> list[dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{http}/dicom-web/{path}", headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else []


def modalities_in_study(http: int, study: str) -> dict[str, int]:
    """Instances of the study in Orthanc, counted by the modality of their series."""
    found: dict[str, int] = {}
    for series in qido(http, f"studies/{study}/series"):
        modality = series.get("00080060", {}).get("Value", [""])[0]
        count = series.get("00201209", {}).get("Value", [0])[0]
        found[modality] = found.get(modality, 0) + int(count)
    return found


def sop_instance_uids_in_study(http: int, study: str) -> list[str]:
    """Every SOP Instance UID Orthanc holds for the study (a list: a UID twice would show)."""
    return [i["00080018"]["Value"][0] for i in qido(http, f"studies/{study}/instances?limit=100000")]

