"""Reading the index: instances by study, series or UID, and the searches QIDO-RS answers.

Searches take the attributes to match as DICOM keywords with their raw
values (as a query string has them) and return one dictionary per match,
keyed by DICOM keyword: the router picks and encodes what it returns and
holds no SQL. Matching: single values exactly; ``*`` and ``?`` wildcards
(case-sensitive, as DICOM's default) in text attributes; lists of UIDs
(comma-separated); date ranges ``YYYYMMDD-YYYYMMDD`` with either end open. A
malformed value is an :class:`InvalidQuery` naming it.
"""

from __future__ import annotations

import enum
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uronode.db import Database
from uronode.errors import UronodeError
from uronode.types import InstanceHeader, StoredInstance


class InvalidQuery(UronodeError):
    """A value to match is malformed (not a UID, a date, a number); the message says which."""


class Level(enum.Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


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
_DATE = re.compile(r"^\d{8}$")
_UID = re.compile(r"^[0-9.]+$")

Matches = Sequence[tuple[str, str]]
"""(DICOM keyword, raw value) pairs; an empty value matches everything."""


def matchable(level: Level, *, in_study: bool = False, in_series: bool = False) -> set[str]:
    """The keywords a search at ``level`` can match (a search within a study or series matches less).

    ``ModalitiesInStudy`` can be matched at every level (the study of a series or an instance has it).
    """
    if level is Level.STUDY:
        return {*STUDY_COLUMNS, "ModalitiesInStudy"}
    keywords = {"ModalitiesInStudy", *(SERIES_COLUMNS if not in_series else ())}
    if not in_study:
        keywords |= set(STUDY_COLUMNS)
    if level is Level.INSTANCE:
        keywords |= set(INSTANCE_COLUMNS)
    return keywords


class _Where:
    """SQL conditions and their parameters for the matches, checked on the way."""

    def __init__(self, matches: Matches, columns: dict[str, str]) -> None:
        self.clauses: list[str] = []
        self.params: list[object] = []
        for keyword, raw in matches:
            if raw == "":
                continue
            if keyword == "ModalitiesInStudy":
                self._modalities(raw)
            elif keyword in columns:
                self._match(keyword, columns[keyword], raw)
            else:
                raise InvalidQuery(f"{keyword} cannot be matched here")

    def add(self, clause: str, *params: object) -> None:
        self.clauses.append(clause)
        self.params += params

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""

    def _modalities(self, raw: str) -> None:
        values = [v for v in raw.split(",") if v != ""]
        marks = ",".join("?" * len(values))
        self.add(
            "EXISTS (SELECT 1 FROM series m WHERE m.study_instance_uid = st.study_instance_uid"
            f" AND m.modality IN ({marks}))",
            *values,
        )

    def _match(self, keyword: str, column: str, raw: str) -> None:
        values = [v for v in raw.split(",") if v != ""] if keyword in LIST_KEYWORDS else [raw]
        if keyword in UID_KEYWORDS and not all(_UID.match(v) for v in values):
            raise InvalidQuery(f"{keyword}: {raw[:80]!r} is not a UID or a list of UIDs")
        if keyword in DATE_KEYWORDS:
            self._date(keyword, column, raw)
        elif keyword in NUMBER_KEYWORDS:
            try:
                number = int(raw)
            except ValueError:
                raise InvalidQuery(f"{keyword}: {raw[:80]!r} is not a number") from None
            self.add(f"{column} = ?", number)
        elif len(values) > 1:
            self.add(f"{column} IN ({','.join('?' * len(values))})", *values)
        elif "*" in raw or "?" in raw:
            self.add(f"{column} GLOB ?", raw.replace("[", "[[]"))
        else:
            self.add(f"{column} = ?", raw)

    def _date(self, keyword: str, column: str, raw: str) -> None:
        start, dash, end = raw.partition("-")
        for part in (start, end):
            if part and not _DATE.match(part):
                raise InvalidQuery(f"{keyword}: {raw[:40]!r} is not YYYYMMDD or a range of them")
        if not dash:
            self.add(f"{column} = ?", start)
            return
        if start:
            self.add(f"{column} >= ?", start)
        if end:
            self.add(f"{column} <= ?", end)


def _study_values(row: sqlite3.Row) -> dict[str, Any]:
    return {
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
    }


def search_studies(database: Database, matches: Matches, *, limit: int, offset: int) -> list[dict[str, Any]]:
    """Studies, newest first, with their modalities and counts of series and instances."""
    where = _Where(matches, STUDY_COLUMNS)
    sql = (
        "SELECT st.*,"
        " (SELECT count(*) FROM series se WHERE se.study_instance_uid = st.study_instance_uid) AS n_series,"
        " (SELECT count(*) FROM instances i WHERE i.study_instance_uid = st.study_instance_uid) AS n_instances,"
        " (SELECT group_concat(DISTINCT se.modality) FROM series se"
        "   WHERE se.study_instance_uid = st.study_instance_uid) AS modalities"
        " FROM studies st" + where.sql() +
        " ORDER BY st.study_date DESC, st.study_time DESC, st.study_instance_uid LIMIT ? OFFSET ?"
    )
    found = []
    for row in database.conn().execute(sql, [*where.params, limit, offset]):
        values = _study_values(row)
        values["ModalitiesInStudy"] = sorted(m for m in (row["modalities"] or "").split(",") if m)
        values["NumberOfStudyRelatedSeries"] = row["n_series"]
        values["NumberOfStudyRelatedInstances"] = row["n_instances"]
        found.append(values)
    return found


def search_series(
    database: Database, matches: Matches, *, limit: int, offset: int, study: str | None = None
) -> list[dict[str, Any]]:
    """Series (of one study, or of all), by series number, with their study's attributes and instance count."""
    where = _Where(matches, {**SERIES_COLUMNS, **(STUDY_COLUMNS if study is None else {})})
    params: list[object] = []
    if study is not None:
        where.clauses.insert(0, "se.study_instance_uid = ?")
        params.append(study)
    sql = (
        "SELECT se.*, st.*, se.study_instance_uid AS study_uid,"
        " (SELECT count(*) FROM instances i WHERE i.series_instance_uid = se.series_instance_uid) AS n_instances"
        " FROM series se LEFT JOIN studies st ON st.study_instance_uid = se.study_instance_uid"
        + where.sql()
        + " ORDER BY se.series_number, se.series_instance_uid LIMIT ? OFFSET ?"
    )
    found = []
    for row in database.conn().execute(sql, [*params, *where.params, limit, offset]):
        values = _study_values(row) if row["patient_id"] is not None else {}
        values.update({
            "StudyInstanceUID": row["study_uid"],
            "SeriesInstanceUID": row["series_instance_uid"],
            "Modality": row["modality"],
            "SeriesDescription": row["series_description"],
            "SeriesNumber": row["series_number"],
            "NumberOfSeriesRelatedInstances": row["n_instances"],
        })
        found.append(values)
    return found


def search_instances(
    database: Database, matches: Matches, *, limit: int, offset: int,
    study: str | None = None, series: str | None = None,
) -> list[dict[str, Any]]:
    """Instances (of a study, a series, or all), by series and instance number."""
    columns = {**INSTANCE_COLUMNS, **(SERIES_COLUMNS if series is None else {}),
               **(STUDY_COLUMNS if study is None else {})}
    where = _Where(matches, columns)
    scope, params = [], []
    if study is not None:
        scope.append("i.study_instance_uid = ?")
        params.append(study)
    if series is not None:
        scope.append("i.series_instance_uid = ?")
        params.append(series)
    where.clauses[:0] = scope
    sql = (
        "SELECT i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid, i.sop_class_uid, i.instance_number,"
        " se.modality AS series_modality, se.series_number FROM instances i"
        " LEFT JOIN series se ON se.series_instance_uid = i.series_instance_uid"
        " LEFT JOIN studies st ON st.study_instance_uid = i.study_instance_uid"
        + where.sql()
        + " ORDER BY i.series_instance_uid, i.instance_number, i.sop_instance_uid LIMIT ? OFFSET ?"
    )
    return [
        {
            "StudyInstanceUID": row["study_instance_uid"],
            "SeriesInstanceUID": row["series_instance_uid"],
            "SOPInstanceUID": row["sop_instance_uid"],
            "SOPClassUID": row["sop_class_uid"],
            "InstanceNumber": row["instance_number"],
            "Modality": row["series_modality"],
            "SeriesNumber": row["series_number"],
        }
        for row in database.conn().execute(sql, [*params, *where.params, limit, offset])
    ]


def study_exists(database: Database, study: str) -> bool:
    return database.conn().execute(
        "SELECT 1 FROM studies WHERE study_instance_uid = ?", (study,)
    ).fetchone() is not None


# -- instances with their files ---------------------------------------------------------

_INSTANCE_QUERY = (
    "SELECT i.*, se.series_number, st.patient_name, st.patient_id, st.patient_birth_date, st.patient_sex,"
    " st.study_date, st.study_time, st.accession_number, st.referring_physician_name, st.study_description,"
    " st.study_id FROM instances i"
    " LEFT JOIN series se ON se.series_instance_uid = i.series_instance_uid"
    " LEFT JOIN studies st ON st.study_instance_uid = i.study_instance_uid"
)


def find_instances(
    database: Database, study: str, series: str | None = None, sop: str | None = None
) -> list[StoredInstance]:
    """A study's instances (or a series' or one), ordered by series and instance number, in one query."""
    where, params = ["i.study_instance_uid = ?"], [study]
    if series is not None:
        where.append("i.series_instance_uid = ?")
        params.append(series)
    if sop is not None:
        where.append("i.sop_instance_uid = ?")
        params.append(sop)
    rows = database.conn().execute(
        _INSTANCE_QUERY + " WHERE " + " AND ".join(where)
        + " ORDER BY i.series_instance_uid, i.instance_number, i.sop_instance_uid",
        params,
    ).fetchall()
    return [_stored(r) for r in rows]


def series_version(database: Database, study: str, series: str) -> tuple[int, float, str] | None:
    """What changes whenever a series' instances do: their count, latest arrival and greatest file path.

    One aggregate over the series' index rows, so a cache keyed by it is checked
    without reading the rows themselves. None when the series has no instance.
    """
    count, latest, path = database.conn().execute(
        "SELECT count(*), max(received_at), max(path) FROM instances"
        " WHERE study_instance_uid = ? AND series_instance_uid = ?",
        (study, series),
    ).fetchone()
    return (int(count), float(latest), str(path)) if count else None


def series_instances(database: Database, series: str) -> list[StoredInstance]:
    """A series' instances by instance number."""
    rows = database.conn().execute(
        _INSTANCE_QUERY + " WHERE i.series_instance_uid = ? ORDER BY i.instance_number, i.sop_instance_uid",
        (series,),
    ).fetchall()
    return [_stored(r) for r in rows]


def count_instances(database: Database) -> int:
    return int(database.conn().execute("SELECT count(*) FROM instances").fetchone()[0])


def series_row(database: Database, series: str) -> sqlite3.Row | None:
    """A series' row: its state, generation, disposition and reason, counts of replacements."""
    return database.conn().execute("SELECT * FROM series WHERE series_instance_uid = ?", (series,)).fetchone()


def get_instance(database: Database, sop: str) -> StoredInstance | None:
    row = database.conn().execute(_INSTANCE_QUERY + " WHERE i.sop_instance_uid = ?", (sop,)).fetchone()
    return _stored(row) if row is not None else None


def _stored(row: sqlite3.Row) -> StoredInstance:
    position = None
    if row["image_position"]:
        x, y, z = (float(v) for v in row["image_position"].split("\\"))
        position = (x, y, z)
    header = InstanceHeader(
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        transfer_syntax_uid=row["transfer_syntax_uid"],
        modality=row["modality"] or "",
        series_description=row["series_description"] or "",
        image_type=row["image_type"] or "",
        manufacturer=row["manufacturer"] or "",
        instance_number=row["instance_number"],
        image_position=position,
        series_number=row["series_number"],
        patient_name=row["patient_name"] or "",
        patient_id=row["patient_id"] or "",
        patient_birth_date=row["patient_birth_date"] or "",
        patient_sex=row["patient_sex"] or "",
        study_date=row["study_date"] or "",
        study_time=row["study_time"] or "",
        accession_number=row["accession_number"] or "",
        referring_physician_name=row["referring_physician_name"] or "",
        study_description=row["study_description"] or "",
        study_id=row["study_id"] or "",
    )
    return StoredInstance(
        header=header,
        path=Path(row["path"]),
        size=row["size"],
        calling_ae=row["calling_ae"] or "",
        received_at=row["received_at"],
    )
