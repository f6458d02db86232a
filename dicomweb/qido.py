"""QIDO-RS (PS3.18 10.6): search for studies, series and instances in the node's index.

Matching: single values exactly; ``*`` and ``?`` wildcards (case-sensitive,
as DICOM's default) in text attributes; lists of UIDs (comma-separated or
repeated); date ranges ``YYYYMMDD-YYYYMMDD`` with either end open; an empty
value matches everything and asks for the attribute. ``limit``/``offset``
page; ``includefield`` (keywords, tags or ``all``) adds attributes the index
holds. Unknown attributes are ignored with a ``Warning`` header, malformed
values are a 400 with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from dicomweb.deps import StoreDep
from dicomweb.dicomjson import DicomJSONResponse, datasets, keyword_of
from uronode import queries
from uronode.queries import InvalidQuery, Level

router = APIRouter(prefix="/dicom-web", tags=["QIDO-RS"])

MAX_LIMIT = 10_000

DEFAULT_STUDY = ["SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                 "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                 "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                 "StudyDescription", "RetrieveURL"]
DEFAULT_SERIES = ["SpecificCharacterSet", "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances", "StudyInstanceUID", "RetrieveURL"]
DEFAULT_INSTANCE = ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceNumber",
                    "StudyInstanceUID", "SeriesInstanceUID", "RetrieveURL"]


class Query:
    """Matches and paging parsed from the query string; attributes that cannot be matched here are ignored."""

    def __init__(self, request: Request, matchable: set[str]) -> None:
        self.matches: list[tuple[str, str]] = []
        self.include: set[str] = set()
        self.include_all = False
        self.ignored: list[str] = []
        self.limit = MAX_LIMIT
        self.offset = 0
        for name, raw in request.query_params.multi_items():
            if name == "limit":
                self.limit = _count(raw, "limit", 1)
            elif name == "offset":
                self.offset = _count(raw, "offset", 0)
            elif name == "includefield":
                for field in raw.split(","):
                    if field.strip() == "all":
                        self.include_all = True
                    elif (kw := keyword_of(field.strip())) is not None:
                        self.include.add(kw)
                    else:
                        self.ignored.append(field.strip())
            elif name in ("fuzzymatching", "accept", "charset"):
                continue
            else:
                keyword = keyword_of(name)
                if keyword is None or keyword not in matchable:
                    self.ignored.append(name)
                    continue
                self.include.add(keyword)
                self.matches.append((keyword, raw))
        self.limit = min(self.limit, MAX_LIMIT)

    @property
    def filtered(self) -> bool:
        """Whether any attribute is matched against a value (an empty value asks for it only)."""
        return any(raw != "" for _, raw in self.matches)

    def wanted(self, defaults: list[str], available: list[str]) -> list[str]:
        if self.include_all:
            return list(dict.fromkeys([*defaults, *available]))
        return list(dict.fromkeys([*defaults, *[k for k in self.include if k in available]]))


def _count(raw: str, name: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, detail=f"{name} must be an integer, not {raw[:20]!r}") from None
    if value < minimum:
        raise HTTPException(400, detail=f"{name} must be at least {minimum}")
    return value


def _reply(items: list[dict[str, Any]], query: Query) -> Response:
    headers = {}
    if query.ignored:
        headers["Warning"] = f'299 uronode "ignored unsupported attributes: {", ".join(sorted(query.ignored))[:200]}"'
    return DicomJSONResponse(items, headers=headers)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicom-web"


def _search(search: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    try:
        return search()
    except InvalidQuery as exc:
        raise HTTPException(400, detail=str(exc)) from exc


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, store: StoreDep) -> Response:
    query = Query(request, queries.matchable(Level.STUDY))
    found = _search(lambda: queries.search_studies(store.db, query.matches, limit=query.limit, offset=query.offset))
    keys = query.wanted(DEFAULT_STUDY, DEFAULT_STUDY)
    base = _base(request)
    for values in found:
        values["SpecificCharacterSet"] = "ISO_IR 192"
        values["RetrieveURL"] = f"{base}/studies/{values['StudyInstanceUID']}"
    return _reply(datasets(keys, found), query)


def _series(request: Request, store: StoreDep, study: str | None) -> Response:
    query = Query(request, queries.matchable(Level.SERIES, in_study=study is not None))
    found = _search(lambda: queries.search_series(
        store.db, query.matches, limit=query.limit, offset=query.offset, study=study
    ))
    if study is not None and not found and query.offset == 0 and not query.filtered:
        if not queries.study_exists(store.db, study):
            raise HTTPException(404, detail=f"no study {study[:64]}")
    available = DEFAULT_SERIES + ([] if study is not None else [k for k in DEFAULT_STUDY if k not in DEFAULT_SERIES])
    keys = query.wanted(DEFAULT_SERIES, available)
    base = _base(request)
    for values in found:
        values["SpecificCharacterSet"] = "ISO_IR 192"
        values["RetrieveURL"] = f"{base}/studies/{values['StudyInstanceUID']}/series/{values['SeriesInstanceUID']}"
    return _reply(datasets(keys, found), query)


@router.get("/series", summary="Search for series in all studies")
def search_all_series(request: Request, store: StoreDep) -> Response:
    return _series(request, store, None)


@router.get("/studies/{study}/series", summary="Search for a study's series")
def search_series(study: str, request: Request, store: StoreDep) -> Response:
    return _series(request, store, study)


def _instances(request: Request, store: StoreDep, study: str | None, series: str | None) -> Response:
    query = Query(request, queries.matchable(Level.INSTANCE, in_study=study is not None, in_series=series is not None))
    found = _search(lambda: queries.search_instances(
        store.db, query.matches, limit=query.limit, offset=query.offset, study=study, series=series
    ))
    if (study or series) and not found and query.offset == 0 and not query.filtered:
        raise HTTPException(404, detail="no such study or series")
    keys = query.wanted(DEFAULT_INSTANCE, DEFAULT_INSTANCE + ["Modality", "SeriesNumber"])
    base = _base(request)
    for values in found:
        values["SpecificCharacterSet"] = "ISO_IR 192"
        values["RetrieveURL"] = (
            f"{base}/studies/{values['StudyInstanceUID']}/series/{values['SeriesInstanceUID']}"
            f"/instances/{values['SOPInstanceUID']}"
        )
    return _reply(datasets(keys, found), query)


@router.get("/instances", summary="Search for instances in all studies")
def search_all_instances(request: Request, store: StoreDep) -> Response:
    return _instances(request, store, None, None)


@router.get("/studies/{study}/instances", summary="Search for a study's instances")
def search_study_instances(study: str, request: Request, store: StoreDep) -> Response:
    return _instances(request, store, study, None)


@router.get("/studies/{study}/series/{series}/instances", summary="Search for a series' instances")
def search_series_instances(study: str, series: str, request: Request, store: StoreDep) -> Response:
    return _instances(request, store, study, series)
