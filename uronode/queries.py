"""Reading the index: instances by study, series or UID, and the searches QIDO-RS answers.

Searches take the attributes to match as DICOM keywords with their raw
values (as a query string has them) and return one dictionary per match,
keyed by DICOM keyword: the router picks and encodes what it returns and
holds no SQL. Matching: single values exactly; ``*`` and ``?`` wildcards
in text attributes, case-sensitive (DICOM's default) except in person names,
which match whatever their letters' case (PS3.4 C.2.2.2.1 allows it: a user
types ``smith`` for ``SMITH^JOHN``); lists of UIDs (separated by commas or, as
in C-FIND, by backslashes); date and time ranges (``YYYYMMDD-YYYYMMDD``,
``HHMMSS-HHMMSS``) with either end open, PS3.4 C.2.2.2.5. A malformed value,
an impossible date or time included, is an :class:`InvalidQuery` naming it;
so are values SQLite cannot take, refused before they reach it: a number
outside IS's range (PS3.5), a wildcard or person-name pattern over
:data:`MAX_PATTERN` characters (SQLite refuses GLOB patterns over 50,000
bytes, and a person name's pattern is several times its length), more than
:data:`MAX_MATCHES` values to match (SQLite nests a query's conditions at
most 1,000 deep).
"""

from __future__ import annotations

import enum
import re
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import date
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
    "SeriesDate": "se.series_date",
    "SeriesTime": "se.series_time",
}
INSTANCE_COLUMNS = {
    "SOPInstanceUID": "i.sop_instance_uid",
    "SOPClassUID": "i.sop_class_uid",
    "InstanceNumber": "i.instance_number",
}
UID_KEYWORDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
DATE_KEYWORDS = {"StudyDate", "PatientBirthDate", "SeriesDate"}
TIME_KEYWORDS = {"StudyTime", "SeriesTime"}
NUMBER_KEYWORDS = {"SeriesNumber", "InstanceNumber"}
PERSON_NAME_KEYWORDS = {"PatientName", "ReferringPhysicianName"}
LIST_KEYWORDS = UID_KEYWORDS | {"Modality", "ModalitiesInStudy"}
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?$")
_UID = re.compile(r"^[0-9.]+$")
_LIST_SEPARATOR = re.compile(r"[,\\]")
_CHUNK = 500
"""UIDs per ``IN (...)`` when counting for a page of results (SQLite limits a statement's parameters)."""
MAX_PATTERN = 1024
"""The longest value matched with wildcards or as a person name, in characters: many times the 64 of an
LO or a person name's group."""
MAX_MATCHES = 100
"""The most values one search matches (a list of UIDs is one); there are about 20 attributes to match."""
IS_RANGE = (-(2**31), 2**31 - 1)
"""What an Integer String may hold (PS3.5 6.2)."""

Matches = Sequence[tuple[str, str]]
"""(DICOM keyword, raw value) pairs; an empty value matches everything."""


def matchable(level: Level) -> set[str]:
    """The keywords a search at ``level`` can match: its own level's and every level above it, also within a
    study or series (probe 32 #6: ``/studies/{uid}/instances?PatientID=X`` had answered every instance of the
    study, the key ignored with a warning; a study that is not X's now answers none).

    ``ModalitiesInStudy`` can be matched at every level (the study of a series or an instance has it).
    """
    keywords = {*STUDY_COLUMNS, "ModalitiesInStudy"}
    if level is not Level.STUDY:
        keywords |= set(SERIES_COLUMNS)
    if level is Level.INSTANCE:
        keywords |= set(INSTANCE_COLUMNS)
    return keywords


class _Where:
    """SQL conditions and their parameters for the matches, checked on the way."""

    def __init__(self, matches: Matches, columns: dict[str, str]) -> None:
        self.clauses: list[str] = []
        self.params: list[object] = []
        if len(matches) > MAX_MATCHES:
            raise InvalidQuery(f"the search has {len(matches)} values to match; at most {MAX_MATCHES} "
                               "(a list of UIDs goes in one value, separated by commas)")
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
        values = _list(raw)
        marks = ",".join("?" * len(values))
        self.add(
            "EXISTS (SELECT 1 FROM series m WHERE m.study_instance_uid = st.study_instance_uid"
            f" AND m.modality IN ({marks}))",
            *values,
        )

    def _match(self, keyword: str, column: str, raw: str) -> None:
        values = _list(raw) if keyword in LIST_KEYWORDS else [raw]
        if keyword in UID_KEYWORDS and not all(_UID.match(v) for v in values):
            raise InvalidQuery(f"{keyword}: {raw[:80]!r} is not a UID or a list of UIDs")
        if keyword in DATE_KEYWORDS:
            self._date(keyword, column, raw)
        elif keyword in TIME_KEYWORDS:
            self._time(keyword, column, raw)
        elif keyword in PERSON_NAME_KEYWORDS:
            _check_pattern(keyword, raw)
            self.add(f"{column} GLOB ?", _case_blind_glob(raw))
        elif keyword in NUMBER_KEYWORDS:
            try:
                number = int(raw)
            except ValueError:
                raise InvalidQuery(f"{keyword}: {raw[:80]!r} is not a number") from None
            if not IS_RANGE[0] <= number <= IS_RANGE[1]:
                raise InvalidQuery(f"{keyword}: {raw[:80]!r} is not an IS number ({IS_RANGE[0]} to {IS_RANGE[1]})")
            self.add(f"{column} = ?", number)
        elif len(values) > 1:
            self.add(f"{column} IN ({','.join('?' * len(values))})", *values)
        elif "*" in raw or "?" in raw:
            _check_pattern(keyword, raw)
            self.add(f"{column} GLOB ?", raw.replace("[", "[[]"))
        else:
            self.add(f"{column} = ?", raw)

    def _date(self, keyword: str, column: str, raw: str) -> None:
        start, dash, end = raw.partition("-")
        for part in (start, end):
            if part and not _DATE.match(part):
                raise InvalidQuery(f"{keyword}: {raw[:40]!r} is not YYYYMMDD or a range of them")
            if part:
                try:
                    date(int(part[:4]), int(part[4:6]), int(part[6:]))
                except ValueError as exc:  # says which: "month must be in 1..12", "day is out of range for month"
                    raise InvalidQuery(f"{keyword}: {part!r} is not a date: {exc}") from None
        if not dash:
            self.add(f"{column} = ?", start)
            return
        self._range(column, start, end)

    def _time(self, keyword: str, column: str, raw: str) -> None:
        """A time or a range of them; a bound given to the hour or minute spans that hour or minute."""
        start, dash, end = raw.partition("-")
        if not dash:
            _check_time(keyword, start, raw)
            self.add(f"{column} = ?", start)
            return
        for part in (start, end):
            if part:
                _check_time(keyword, part, raw)
        if not start and not end:
            raise InvalidQuery(f"{keyword}: {raw[:40]!r} is a range without either end")
        # stored times of less precision (HH, HHMM) compare as HHMMSS; legacy HH:MM:SS without colons
        bare = f"replace({column}, ':', '')"
        value = f"(CASE WHEN instr({bare}, '.') > 0 THEN {bare} ELSE substr({bare} || '0000', 1, 6) END)"
        self._range(column, _time_start(start) if start else "", _time_end(end) if end else "", value=value)

    def _range(self, column: str, start: str, end: str, *, value: str | None = None) -> None:
        """``start <= value <= end`` (``value``: the column, or an expression of it), either end open.

        An empty value is in no range: it is no date or time.
        """
        value = value or column
        self.add(f"{column} != ''")
        if start:
            self.add(f"{value} >= ?", start)
        if end:
            self.add(f"{value} <= ?", end)


def _time_start(start: str) -> str:
    """A range's start time as the first instant it names, to compare as text with stored times: ``12`` is
    ``120000``, ``120000.50`` is ``120000.5`` (a fraction's trailing zeros would sort it after a stored
    ``120000.5``: review 36)."""
    whole, _, fraction = start.partition(".")
    fraction = fraction.rstrip("0")
    return whole.ljust(6, "0") + (f".{fraction}" if fraction else "")


def _time_end(end: str) -> str:
    """A range's end time as the last instant it names, to compare as text with stored times: ``2359`` is
    ``235959.999999``, ``120030.2`` is ``120030.299999`` (probe 39: ``-235959`` missed a time of ``235959.5``,
    as the node's own results have them)."""
    whole, _, fraction = end.partition(".")
    whole = whole + "5959"[: max(0, 6 - len(whole))]
    return f"{whole}.{fraction.ljust(6, '9')}"


def _list(raw: str) -> list[str]:
    """The values of a list: separated by commas (PS3.18) or backslashes (PS3.4, as a C-FIND has them)."""
    return [v for v in _LIST_SEPARATOR.split(raw) if v != ""]


def _check_pattern(keyword: str, raw: str) -> None:
    if len(raw) > MAX_PATTERN:
        raise InvalidQuery(f"{keyword}: a pattern of {len(raw)} characters; at most {MAX_PATTERN}")


def _check_time(keyword: str, part: str, raw: str) -> None:
    found = _TIME.match(part)
    if found is None:
        raise InvalidQuery(f"{keyword}: {raw[:40]!r} is not HHMMSS (HH, HHMM, HHMMSS.FFFFFF) or a range of them")
    hours, minutes, seconds = (int(g) if g else 0 for g in found.groups()[:3])
    if hours > 23 or minutes > 59 or seconds > 60:  # 60: a leap second, as PS3.5 allows
        raise InvalidQuery(f"{keyword}: {part!r} is not a time of day")


def _case_blind_glob(raw: str) -> str:
    """A GLOB pattern matching ``raw`` (with its ``*`` and ``?``) whatever the case of its letters.

    Each cased letter becomes a class of both cases (``s`` -> ``[sS]``), so
    non-ASCII names match too (SQLite's own ``lower()`` folds ASCII only) and
    the wildcards keep their meaning; a ``[`` is taken literally.
    """
    out = []
    for char in raw:
        lower, upper = char.lower(), char.upper()
        if char == "[":
            out.append("[[]")
        elif lower != upper and len(lower) == 1 and len(upper) == 1:
            out.append(f"[{lower}{upper}]")
        else:
            out.append(char)
    return "".join(out)


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
    database: Database, matches: Matches, *, limit: int, offset: int, study: str | None = None,
    study_counts: bool = False,
) -> list[dict[str, Any]]:
    """Series (of one study, or of all), by series number, with their study's attributes and instance count.

    ``study_counts``: also each one's study's modalities and counts of series and instances.
    """
    where = _Where(matches, {**SERIES_COLUMNS, **STUDY_COLUMNS})
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
            "SeriesDate": row["series_date"],
            "SeriesTime": row["series_time"],
            "NumberOfSeriesRelatedInstances": row["n_instances"],
        })
        found.append(values)
    if study_counts:
        _add_study_counts(database, found)
    return found


_STUDY_OF_INSTANCE = ", ".join(f"{column} AS study_{column[3:]}" for column in STUDY_COLUMNS.values()
                               if column != "st.study_instance_uid")


def search_instances(
    database: Database, matches: Matches, *, limit: int, offset: int,
    study: str | None = None, series: str | None = None, study_counts: bool = False, series_counts: bool = False,
) -> list[dict[str, Any]]:
    """Instances (of a study, a series, or all), by series and instance number, with their series' and study's attributes.

    ``study_counts``: also each one's study's modalities and counts of series and
    instances; ``series_counts``: its series' count of instances.
    """
    where = _Where(matches, {**INSTANCE_COLUMNS, **SERIES_COLUMNS, **STUDY_COLUMNS})
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
        " i.rows, i.columns, i.bits_allocated, i.number_of_frames, se.modality AS series_modality, se.series_number, se.series_description, se.series_date, se.series_time, "
        + _STUDY_OF_INSTANCE + " FROM instances i"
        " LEFT JOIN series se ON se.series_instance_uid = i.series_instance_uid"
        " LEFT JOIN studies st ON st.study_instance_uid = i.study_instance_uid"
        + where.sql()
        + " ORDER BY i.series_instance_uid, i.instance_number, i.sop_instance_uid LIMIT ? OFFSET ?"
    )
    found = []
    for row in database.conn().execute(sql, [*params, *where.params, limit, offset]):
        values = {keyword: row[f"study_{column[3:]}"] for keyword, column in STUDY_COLUMNS.items()
                  if column != "st.study_instance_uid"}
        values.update({
            "StudyInstanceUID": row["study_instance_uid"],
            "SeriesInstanceUID": row["series_instance_uid"],
            "SOPInstanceUID": row["sop_instance_uid"],
            "SOPClassUID": row["sop_class_uid"],
            "InstanceNumber": row["instance_number"],
            "Rows": row["rows"],
            "Columns": row["columns"],
            "BitsAllocated": row["bits_allocated"],
            "NumberOfFrames": row["number_of_frames"],
            "Modality": row["series_modality"],
            "SeriesNumber": row["series_number"],
            "SeriesDescription": row["series_description"],
            "SeriesDate": row["series_date"],
            "SeriesTime": row["series_time"],
        })
        found.append(values)
    if study_counts:
        _add_study_counts(database, found)
    if series_counts:
        counts = _counts(database, "SELECT series_instance_uid, count(*) FROM instances"
                         " WHERE series_instance_uid IN ({}) GROUP BY series_instance_uid",
                         {v["SeriesInstanceUID"] for v in found})
        for values in found:
            values["NumberOfSeriesRelatedInstances"] = counts.get(values["SeriesInstanceUID"], 0)
    return found


def _add_study_counts(database: Database, found: list[dict[str, Any]]) -> None:
    """ModalitiesInStudy and the study's counts of series and instances, in three queries for the whole page."""
    studies = {values["StudyInstanceUID"] for values in found}
    n_series = _counts(database, "SELECT study_instance_uid, count(*) FROM series"
                       " WHERE study_instance_uid IN ({}) GROUP BY study_instance_uid", studies)
    n_instances = _counts(database, "SELECT study_instance_uid, count(*) FROM instances"
                          " WHERE study_instance_uid IN ({}) GROUP BY study_instance_uid", studies)
    modalities = _counts(database, "SELECT study_instance_uid, group_concat(DISTINCT modality) FROM series"
                         " WHERE study_instance_uid IN ({}) GROUP BY study_instance_uid", studies)
    for values in found:
        study = values["StudyInstanceUID"]
        values["ModalitiesInStudy"] = sorted(m for m in (modalities.get(study) or "").split(",") if m)
        values["NumberOfStudyRelatedSeries"] = n_series.get(study, 0)
        values["NumberOfStudyRelatedInstances"] = n_instances.get(study, 0)


def _counts(database: Database, sql: str, keys: Iterable[str]) -> dict[str, Any]:
    """``key -> value`` from ``sql`` (two columns; ``{}`` stands for the keys' marks), asked in chunks."""
    keys = sorted(keys)
    found: dict[str, Any] = {}
    for at in range(0, len(keys), _CHUNK):
        chunk = keys[at:at + _CHUNK]
        rows = database.conn().execute(sql.format(",".join("?" * len(chunk))), chunk)
        found.update((row[0], row[1]) for row in rows)
    return found


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
        contrast_agent=row["contrast_agent"] or "",
        convolution_kernel=row["convolution_kernel"] or "",
        image_orientation=row["image_orientation"] or "",
        rescale_type=row["rescale_type"] or "",
        rows=row["rows"],
        columns=row["columns"],
        bits_allocated=row["bits_allocated"],
        number_of_frames=row["number_of_frames"],
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


STUDIES_AT_MOST = 50
"""How many studies :func:`study_overview` gives at most (the newest)."""


def study_overview(database: Database, *, study: str | None = None, accession: str | None = None,
                   patient_id: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """What the node did with each series of the studies a person names (a Study Instance UID, an Accession
    Number or a Patient ID, the first given): each study's series that it received (not its own results), with
    their state, what became of them (``disposition``, ``reason``: skipped and why), their jobs and where each
    job's results went; the newest :data:`STUDIES_AT_MOST` studies, and whether more matched. For ``uronode
    study`` and ``GET /api/studies`` (probe 41: skipped series were in no command; probe 47: nor over HTTP)."""
    if study is not None:
        where, value = "study_instance_uid = ?", study
    elif accession is not None:
        where, value = "accession_number = ?", accession
    elif patient_id is not None:
        where, value = "patient_id = ?", patient_id
    else:
        raise ValueError("name a study, an accession number or a patient ID")
    conn = database.conn()
    rows = conn.execute(f"SELECT study_instance_uid, accession_number, study_date FROM studies WHERE {where}"
                        " ORDER BY study_date DESC, study_instance_uid LIMIT ?", (value, STUDIES_AT_MOST + 1)).fetchall()
    studies = []
    for row in rows[:STUDIES_AT_MOST]:
        series = []
        for s in conn.execute(
                "SELECT s.series_instance_uid, s.series_number, s.series_description, s.modality, s.state,"
                " s.disposition, s.reason, s.last_received_at, (SELECT count(*) FROM instances i"
                " WHERE i.series_instance_uid = s.series_instance_uid) AS instances FROM series s"
                " WHERE s.study_instance_uid = ? AND NOT EXISTS (SELECT 1 FROM instances i JOIN results r"
                " ON r.sop_instance_uid = i.sop_instance_uid WHERE i.series_instance_uid = s.series_instance_uid)"
                " ORDER BY s.series_number, s.series_instance_uid", (row["study_instance_uid"],)):
            jobs = [{**dict(job), "results": [dict(r) for r in conn.execute(
                "SELECT destination, state, count(*) AS instances FROM deliveries WHERE job_id = ?"
                " GROUP BY destination, state ORDER BY destination, state", (job["id"],))]}
                for job in conn.execute("SELECT id, state, reason, model, updated_at FROM jobs"
                                        " WHERE series_instance_uid = ? ORDER BY id", (s["series_instance_uid"],))]
            series.append({**dict(s), "jobs": jobs})
        studies.append({**dict(row), "series": series})
    return studies, len(rows) > STUDIES_AT_MOST
