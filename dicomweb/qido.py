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

import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from dicomweb.deps import StoreDep
from dicomweb.dicomjson import dataset, keyword_of

router = APIRouter(prefix="/dicom-web", tags=["QIDO-RS"])

MAX_LIMIT = 10_000
_DATE = re.compile(r"^\d{8}$")
_UID = re.compile(r"^[0-9.]+$")

STUDY_COLUMNS = {
    "StudyInstanceUID": "st.study_instance_uid",
    "PatientName": "st.patient_name",
    "PatientID": "st.patient_id",
    "PatientBirthDate": "st.patient_birth_date",
    "PatientSex": "st.patient_sex",
    "StudyDate": "st.study_date",
    "StudyTime": "st.study_time",
    "AccessionNumber": "st.accession_number",
    "ReferringPhysicianName": "st.referring_physician_name",
    "StudyDescription": "st.study_description",
    "StudyID": "st.study_id",
}
SERIES_COLUMNS = {
    "SeriesInstanceUID": "se.series_instance_uid",
    "Modality": "se.modality",
    "SeriesDescription": "se.series_description",
    "SeriesNumber": "se.series_number",
}
INSTANCE_COLUMNS = {
    "SOPInstanceUID": "i.sop_instance_uid",
    "SOPClassUID": "i.sop_class_uid",
    "InstanceNumber": "i.instance_number",
}
UID_KEYWORDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
DATE_KEYWORDS = {"StudyDate", "PatientBirthDate"}
NUMBER_KEYWORDS = {"SeriesNumber", "InstanceNumber"}
LIST_KEYWORDS = UID_KEYWORDS | {"Modality", "ModalitiesInStudy"}

DEFAULT_STUDY = ["SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                 "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                 "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                 "StudyDescription", "RetrieveURL"]
DEFAULT_SERIES = ["SpecificCharacterSet", "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances", "StudyInstanceUID", "RetrieveURL"]
DEFAULT_INSTANCE = ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceNumber",
                    "StudyInstanceUID", "SeriesInstanceUID", "RetrieveURL"]


class Query:
    """Filters and paging parsed from the query string."""

    def __init__(self, request: Request, columns: dict[str, str]) -> None:
        self.where: list[str] = []
        self.params: list[Any] = []
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
                if keyword is None or (keyword not in columns and keyword != "ModalitiesInStudy"):
                    self.ignored.append(name)
                    continue
                self.include.add(keyword)
                if raw != "":
                    self._match(keyword, columns.get(keyword, ""), raw)
        self.limit = min(self.limit, MAX_LIMIT)

    def _match(self, keyword: str, column: str, raw: str) -> None:
        values = [v for v in raw.split(",") if v != ""] if keyword in LIST_KEYWORDS else [raw]
        if keyword in UID_KEYWORDS and not all(_UID.match(v) for v in values):
            raise HTTPException(400, detail=f"{keyword}: {raw[:80]!r} is not a UID or a list of UIDs")
        if keyword == "ModalitiesInStudy":
            marks = ",".join("?" * len(values))
            self.where.append(
                f"EXISTS (SELECT 1 FROM series m WHERE m.study_instance_uid = st.study_instance_uid"
                f" AND m.modality IN ({marks}))"
            )
            self.params += values
        elif keyword in DATE_KEYWORDS:
            self._date(keyword, column, raw)
        elif keyword in NUMBER_KEYWORDS:
            try:
                self.params.append(int(raw))
            except ValueError:
                raise HTTPException(400, detail=f"{keyword}: {raw[:80]!r} is not a number") from None
            self.where.append(f"{column} = ?")
        elif len(values) > 1:
            self.where.append(f"{column} IN ({','.join('?' * len(values))})")
            self.params += values
        elif "*" in raw or "?" in raw:
            self.where.append(f"{column} GLOB ?")
            self.params.append(raw.replace("[", "[[]"))
        else:
            self.where.append(f"{column} = ?")
            self.params.append(raw)

    def _date(self, keyword: str, column: str, raw: str) -> None:
        start, dash, end = raw.partition("-")
        for part in (start, end):
            if part and not _DATE.match(part):
                raise HTTPException(400, detail=f"{keyword}: {raw[:40]!r} is not YYYYMMDD or a range of them")
        if not dash:
            self.where.append(f"{column} = ?")
            self.params.append(start)
            return
        if start:
            self.where.append(f"{column} >= ?")
            self.params.append(start)
        if end:
            self.where.append(f"{column} <= ?")
            self.params.append(end)

    def sql_where(self, *extra: str) -> str:
        clauses = [*extra, *self.where]
        return (" WHERE " + " AND ".join(clauses)) if clauses else ""

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
    return JSONResponse(items, media_type="application/dicom+json", headers=headers)


def _study_values(row: Any, base: str) -> dict[str, Any]:
    return {
        "SpecificCharacterSet": "ISO_IR 192",
        "StudyInstanceUID": row["study_instance_uid"],
        "PatientName": row["patient_name"],
        "PatientID": row["patient_id"],
        "PatientBirthDate": row["patient_birth_date"],
        "PatientSex": row["patient_sex"],
        "StudyDate": row["study_date"],
        "StudyTime": row["study_time"],
        "AccessionNumber": row["accession_number"],
        "ReferringPhysicianName": row["referring_physician_name"],
        "StudyDescription": row["study_description"],
        "StudyID": row["study_id"],
        "RetrieveURL": f"{base}/studies/{row['study_instance_uid']}",
    }




def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicom-web"


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, store: StoreDep) -> Response:
    query = Query(request, STUDY_COLUMNS)
    sql = (
        "SELECT st.*,"
        " (SELECT count(*) FROM series se WHERE se.study_instance_uid = st.study_instance_uid) AS n_series,"
        " (SELECT count(*) FROM instances i WHERE i.study_instance_uid = st.study_instance_uid) AS n_instances,"
        " (SELECT group_concat(DISTINCT se.modality) FROM series se"
        "   WHERE se.study_instance_uid = st.study_instance_uid) AS modalities"
        " FROM studies st" + query.sql_where() +
        " ORDER BY st.study_date DESC, st.study_time DESC, st.study_instance_uid LIMIT ? OFFSET ?"
    )
    rows = store.conn().execute(sql, [*query.params, query.limit, query.offset]).fetchall()
    keys = query.wanted(DEFAULT_STUDY, DEFAULT_STUDY)
    base = _base(request)
    items = []
    for row in rows:
        values = _study_values(row, base)
        values["ModalitiesInStudy"] = sorted(m for m in (row["modalities"] or "").split(",") if m)
        values["NumberOfStudyRelatedSeries"] = row["n_series"]
        values["NumberOfStudyRelatedInstances"] = row["n_instances"]
        items.append(dataset({k: values.get(k) for k in keys}))
    return _reply(items, query)


def _series(request: Request, store: StoreDep, study: str | None) -> Response:
    columns = {**SERIES_COLUMNS, **(STUDY_COLUMNS if study is None else {})}
    query = Query(request, columns)
    extra = ["se.study_instance_uid = ?"] if study is not None else []
    sql = (
        "SELECT se.*, st.*, se.study_instance_uid AS study_uid,"
        " (SELECT count(*) FROM instances i WHERE i.series_instance_uid = se.series_instance_uid) AS n_instances"
        " FROM series se LEFT JOIN studies st ON st.study_instance_uid = se.study_instance_uid"
        + query.sql_where(*extra)
        + " ORDER BY se.series_number, se.series_instance_uid LIMIT ? OFFSET ?"
    )
    params = ([study] if study is not None else []) + [*query.params, query.limit, query.offset]
    rows = store.conn().execute(sql, params).fetchall()
    if study is not None and not rows and query.offset == 0 and not query.where:
        if store.conn().execute("SELECT 1 FROM studies WHERE study_instance_uid = ?", (study,)).fetchone() is None:
            raise HTTPException(404, detail=f"no study {study[:64]}")
    available = DEFAULT_SERIES + ([] if study is not None else [k for k in DEFAULT_STUDY if k not in DEFAULT_SERIES])
    keys = query.wanted(DEFAULT_SERIES, available)
    base = _base(request)
    items = []
    for row in rows:
        values = _study_values(row, base) if row["patient_id"] is not None else {}
        values.update({
            "SpecificCharacterSet": "ISO_IR 192",
            "StudyInstanceUID": row["study_uid"],
            "SeriesInstanceUID": row["series_instance_uid"],
            "Modality": row["modality"],
            "SeriesDescription": row["series_description"],
            "SeriesNumber": row["series_number"],
            "NumberOfSeriesRelatedInstances": row["n_instances"],
            "RetrieveURL": f"{base}/studies/{row['study_uid']}/series/{row['series_instance_uid']}",
        })
        items.append(dataset({k: values.get(k) for k in keys}))
    return _reply(items, query)


@router.get("/series", summary="Search for series in all studies")
def search_all_series(request: Request, store: StoreDep) -> Response:
    return _series(request, store, None)


@router.get("/studies/{study}/series", summary="Search for a study's series")
def search_series(study: str, request: Request, store: StoreDep) -> Response:
    return _series(request, store, study)


def _instances(request: Request, store: StoreDep, study: str | None, series: str | None) -> Response:
    columns = {**INSTANCE_COLUMNS, **(SERIES_COLUMNS if series is None else {}),
               **(STUDY_COLUMNS if study is None else {})}
    query = Query(request, columns)
    extra = []
    params: list[Any] = []
    if study is not None:
        extra.append("i.study_instance_uid = ?")
        params.append(study)
    if series is not None:
        extra.append("i.series_instance_uid = ?")
        params.append(series)
    sql = (
        "SELECT i.*, se.modality AS series_modality, se.series_number, st.patient_id FROM instances i"
        " LEFT JOIN series se ON se.series_instance_uid = i.series_instance_uid"
        " LEFT JOIN studies st ON st.study_instance_uid = i.study_instance_uid"
        + query.sql_where(*extra)
        + " ORDER BY i.series_instance_uid, i.instance_number, i.sop_instance_uid LIMIT ? OFFSET ?"
    )
    rows = store.conn().execute(sql, [*params, *query.params, query.limit, query.offset]).fetchall()
    if (study or series) and not rows and query.offset == 0 and not query.where:
        raise HTTPException(404, detail="no such study or series")
    keys = query.wanted(DEFAULT_INSTANCE, DEFAULT_INSTANCE + ["Modality", "SeriesNumber"])
    base = _base(request)
    items = []
    for row in rows:
        values = {
            "SpecificCharacterSet": "ISO_IR 192",
            "StudyInstanceUID": row["study_instance_uid"],
            "SeriesInstanceUID": row["series_instance_uid"],
            "SOPInstanceUID": row["sop_instance_uid"],
            "SOPClassUID": row["sop_class_uid"],
            "InstanceNumber": row["instance_number"],
            "Modality": row["series_modality"],
            "SeriesNumber": row["series_number"],
            "RetrieveURL": f"{base}/studies/{row['study_instance_uid']}/series/{row['series_instance_uid']}"
            f"/instances/{row['sop_instance_uid']}",
        }
        items.append(dataset({k: values.get(k) for k in keys}))
    return _reply(items, query)


@router.get("/instances", summary="Search for instances in all studies")
def search_all_instances(request: Request, store: StoreDep) -> Response:
    return _instances(request, store, None, None)


@router.get("/studies/{study}/instances", summary="Search for a study's instances")
def search_study_instances(study: str, request: Request, store: StoreDep) -> Response:
    return _instances(request, store, study, None)


@router.get("/studies/{study}/series/{series}/instances", summary="Search for a series' instances")
def search_series_instances(study: str, series: str, request: Request, store: StoreDep) -> Response:
    return _instances(request, store, study, series)
