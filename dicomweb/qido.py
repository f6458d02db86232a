"""QIDO-RS (PS3.18 10.6): search for studies, series and instances in the node's index.

Matching: single values exactly; ``*`` and ``?`` wildcards in text
attributes (case-sensitive, as DICOM's default, except person names, which
match whatever the case: ``*smith*`` finds ``SMITH^JOHN``); lists of UIDs
(separated by commas or backslashes, or repeated); date and time ranges
(``YYYYMMDD-YYYYMMDD``, ``HHMMSS-HHMMSS``) with either end open; an empty
value matches everything and asks for the attribute. ``fuzzymatching=true``
is answered with a ``Warning`` that it is not done. ``limit``/``offset``
page; a result cut at the node's own limit says so in a ``Warning``.
``includefield`` (keywords, tags or ``all``) adds attributes the index holds.
A search without the study in its path returns the study's attributes too,
one without the series the series' (PS3.18 10.6.3.3). A search inside a study
or series matches keys of the levels above it too (``PatientID`` in a study's
instances: none where the study is another patient's). Unknown attributes are
ignored with a ``Warning`` header; malformed values (an ``offset`` beyond
SQLite's integers, a number that is no IS value, a wildcard pattern over 1,024
characters, more than 100 values to match: see :mod:`uronode.queries`), and
a path UID that is not a UID, are a 400 with the reason; a search of a study
or series that is not there is an empty result. Results are DICOM JSON only: an ``Accept`` (or
``accept`` parameter) that takes neither it nor JSON is a 406.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from dicomweb.accept import parse_accept
from dicomweb.deps import StoreDep
from dicomweb.dicomjson import DicomJSONResponse, datasets, keyword_of
from uronode import queries
from uronode.dicomfile import is_valid_uid
from uronode.queries import InvalidQuery, Level

router = APIRouter(prefix="/dicom-web", tags=["QIDO-RS"])

MAX_LIMIT = 10_000
"""The most results one search returns; more are there to page through with ``offset``."""
MAX_OFFSET = 2**63 - 1
"""The largest ``offset``: SQLite's largest integer (a larger one skips everything there can be anyway)."""
JSON_MEDIA_TYPES = {"application/dicom+json", "application/json", "application/*", "*/*"}

DEFAULT_STUDY = ["SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
                 "ModalitiesInStudy", "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
                 "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
                 "NumberOfStudyRelatedInstances", "StudyDescription", "RetrieveURL"]
DEFAULT_SERIES = ["SpecificCharacterSet", "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances", "StudyInstanceUID", "InstanceAvailability", "RetrieveURL"]
DEFAULT_INSTANCE = ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceNumber",
                    "StudyInstanceUID", "SeriesInstanceUID", "InstanceAvailability", "RetrieveURL",
                    "Rows", "Columns", "BitsAllocated", "NumberOfFrames"]
OPTIONAL_SERIES = ["SeriesDate", "SeriesTime"]
"""Series attributes the index holds beyond the defaults, returned through ``includefield`` (probe 32: two result
series of one series number, an earlier and a re-analysis, are told apart by them)."""
STUDY_COUNTS = {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"}
"""Study attributes counted over the study's series and instances (not columns of the index)."""

FUZZY_NOT_DONE = "The fuzzymatching parameter is not supported. Only literal matching has been performed."
MORE_RESULTS = "There are additional results that can be requested"
_NOT_HEADER_TEXT = re.compile(r'[^\x20-\x7e]|["\\]')
"""What a quoted warning text may not hold: replaced by '?'."""


class Query:
    """Matches and paging parsed from the query string; attributes that cannot be matched here are ignored."""

    def __init__(self, request: Request, matchable: set[str]) -> None:
        self.matches: list[tuple[str, str]] = []
        self.include: set[str] = set()
        self.include_all = False
        self.ignored: list[str] = []
        self.fuzzy = False
        self.limit = MAX_LIMIT
        self.offset = 0
        seen: set[str] = set()
        for name, raw in request.query_params.multi_items():
            if name in ("limit", "offset", "fuzzymatching"):
                _once(name, name, seen)
            if name == "limit":
                self.limit = _count(raw, "limit", 1)
            elif name == "offset":
                self.offset = _count(raw, "offset", 0, MAX_OFFSET)
            elif name == "includefield":
                for field in raw.split(","):
                    if field.strip() == "all":
                        self.include_all = True
                    elif (kw := keyword_of(field.strip())) is not None:
                        self.include.add(kw)
                    else:
                        self.ignored.append(field.strip())
            elif name == "fuzzymatching":
                if raw.lower() not in ("true", "false"):
                    raise HTTPException(400, detail=f"fuzzymatching must be true or false, not {raw[:20]!r}")
                self.fuzzy = self.fuzzy or raw.lower() == "true"
            elif name in ("accept", "charset"):
                continue  # accept: see _check_accept; the answer is UTF-8, whatever charset asks
            else:
                keyword = keyword_of(name)
                if keyword is None or keyword not in matchable:
                    self.ignored.append(name)
                    continue
                _once(keyword, name, seen)
                self.include.add(keyword)
                self.matches.append((keyword, raw))
        self.cut_by_node = self.limit > MAX_LIMIT or "limit" not in request.query_params
        """Whether the node's limit, not the client's, is the one that may cut the result."""
        self.limit = min(self.limit, MAX_LIMIT)

    def wanted(self, defaults: list[str], available: list[str]) -> list[str]:
        if self.include_all:
            return list(dict.fromkeys([*defaults, *available]))
        return list(dict.fromkeys([*defaults, *[k for k in self.include if k in available]]))


def _once(key: str, name: str, seen: set[str]) -> None:
    """400 when ``key`` was given before: whether both must match or either is unclear (several UIDs: one list)."""
    if key in seen:
        hint = "; give several UIDs as one comma-separated value" if key.endswith("UID") else ""
        raise HTTPException(400, detail=f"{name} is given more than once{hint}")
    seen.add(key)


def _count(raw: str, name: str, minimum: int, maximum: int | None = None) -> int:
    """``raw`` as an integer from ``minimum`` to ``maximum`` (none: any larger one; ``limit`` is cut to MAX_LIMIT)."""
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, detail=f"{name} must be an integer, not {raw[:20]!r}") from None
    if value < minimum:
        raise HTTPException(400, detail=f"{name} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise HTTPException(400, detail=f"{name} must be at most {maximum}")
    return value


def _check_accept(request: Request) -> None:
    """406 unless the client takes DICOM JSON or JSON (the ``accept`` parameter first, PS3.18 8.3.3.1, then Accept)."""
    asked = ",".join(request.query_params.getlist("accept")) or ",".join(request.headers.getlist("accept"))
    # an unencoded "+" in a query string arrives as a space: application/dicom json
    if any(r.media_type.replace(" ", "+") in JSON_MEDIA_TYPES for r in parse_accept(asked)):
        return
    raise HTTPException(406, detail="search results are given as application/dicom+json (or application/json) "
                                    f"only, DICOM XML is not produced; the request accepts {asked[:100]}")


def _check_uid(value: str, what: str) -> None:
    if not is_valid_uid(value):
        raise HTTPException(400, detail=f"the {what} in the path, {value[:80]!r}, is not a UID")


def _search(query: Query, search: Callable[[int], list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], bool]:
    """The page of results (one more row asked for, to know) and whether more matched than it holds."""
    try:
        found = search(query.limit + 1)
    except InvalidQuery as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    return found[:query.limit], len(found) > query.limit


def _reply(items: list[dict[str, Any]], query: Query, more: bool) -> Response:
    notes = []
    if query.ignored:
        notes.append(f"ignored unsupported attributes: {', '.join(sorted(query.ignored))[:200]}")
    if query.fuzzy:
        notes.append(FUZZY_NOT_DONE)
    if more and query.cut_by_node:
        notes.append(MORE_RESULTS)
    headers = {}
    if notes:
        headers["Warning"] = ", ".join(f'299 uronode "{_NOT_HEADER_TEXT.sub("?", note)}"' for note in notes)
    return DicomJSONResponse(items, headers=headers)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicom-web"


def _common(values: dict[str, Any], url: str) -> None:
    """What every result says the same way: UTF-8, online, and where to retrieve it."""
    values["SpecificCharacterSet"] = "ISO_IR 192"
    values["InstanceAvailability"] = "ONLINE"
    values["RetrieveURL"] = url


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, store: StoreDep) -> Response:
    _check_accept(request)
    query = Query(request, queries.matchable(Level.STUDY))
    found, more = _search(query, lambda limit: queries.search_studies(
        store.db, query.matches, limit=limit, offset=query.offset
    ))
    keys = query.wanted(DEFAULT_STUDY, DEFAULT_STUDY)
    base = _base(request)
    for values in found:
        _common(values, f"{base}/studies/{values['StudyInstanceUID']}")
    return _reply(datasets(keys, found), query, more)


def _series(request: Request, store: StoreDep, study: str | None) -> Response:
    _check_accept(request)
    if study is not None:
        _check_uid(study, "study")
    query = Query(request, queries.matchable(Level.SERIES))
    keys = query.wanted(DEFAULT_SERIES + ([] if study is not None else DEFAULT_STUDY),
                        DEFAULT_SERIES + OPTIONAL_SERIES + DEFAULT_STUDY)
    found, more = _search(query, lambda limit: queries.search_series(
        store.db, query.matches, limit=limit, offset=query.offset, study=study,
        study_counts=not STUDY_COUNTS.isdisjoint(keys),
    ))
    base = _base(request)
    for values in found:
        _common(values, f"{base}/studies/{values['StudyInstanceUID']}/series/{values['SeriesInstanceUID']}")
    return _reply(datasets(keys, found), query, more)


@router.get("/series", summary="Search for series in all studies")
def search_all_series(request: Request, store: StoreDep) -> Response:
    return _series(request, store, None)


@router.get("/studies/{study}/series", summary="Search for a study's series")
def search_series(study: str, request: Request, store: StoreDep) -> Response:
    return _series(request, store, study)


def _instances(request: Request, store: StoreDep, study: str | None, series: str | None) -> Response:
    _check_accept(request)
    if study is not None:
        _check_uid(study, "study")
    if series is not None:
        _check_uid(series, "series")
    query = Query(request, queries.matchable(Level.INSTANCE))
    defaults = [*DEFAULT_INSTANCE, *(DEFAULT_SERIES if series is None else []), *(DEFAULT_STUDY if study is None else [])]
    keys = query.wanted(defaults, DEFAULT_INSTANCE + DEFAULT_SERIES + OPTIONAL_SERIES + DEFAULT_STUDY)
    found, more = _search(query, lambda limit: queries.search_instances(
        store.db, query.matches, limit=limit, offset=query.offset, study=study, series=series,
        study_counts=not STUDY_COUNTS.isdisjoint(keys), series_counts="NumberOfSeriesRelatedInstances" in keys,
    ))
    base = _base(request)
    for values in found:
        _common(values, f"{base}/studies/{values['StudyInstanceUID']}/series/{values['SeriesInstanceUID']}"
                        f"/instances/{values['SOPInstanceUID']}")
    return _reply(datasets(keys, found), query, more)


@router.get("/instances", summary="Search for instances in all studies")
def search_all_instances(request: Request, store: StoreDep) -> Response:
    return _instances(request, store, None, None)


@router.get("/studies/{study}/instances", summary="Search for a study's instances")
def search_study_instances(study: str, request: Request, store: StoreDep) -> Response:
    return _instances(request, store, study, None)


@router.get("/studies/{study}/series/{series}/instances", summary="Search for a series' instances")
def search_series_instances(study: str, series: str, request: Request, store: StoreDep) -> Response:
    return _instances(request, store, study, series)
