"""The index's searches: person names whatever their case, time ranges, checked dates, UID lists, counts."""

from __future__ import annotations

import pytest

from uronode.db import Database
from uronode.queries import InvalidQuery, search_instances, search_series, search_studies

STUDIES = {  # study UID -> (PatientName, ReferringPhysicianName, StudyDate, StudyTime)
    "1.2.1": ("SMITH^JOHN", "Doe^Jane", "20260101", "120000"),
    "1.2.2": ("Müller^Jörg", "", "20260102", "0930"),
    "1.2.3": ("Yamada^Tarou=山田^太郎=やまだ^たろう", "SATO^KEN", "20260103", ""),
    "1.2.4": ("smithson^anna", "", "20260104", "235959.5"),
    "1.2.5": ("Brackets[1]^Odd", "", "", "13"),
}


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Database:
    db = Database(tmp_path_factory.mktemp("queries") / "index.sqlite3", durable=False)
    with db.transaction() as conn:
        for n, (study, (name, referring, date, time)) in enumerate(STUDIES.items()):
            conn.execute(
                "INSERT INTO studies (study_instance_uid, patient_name, patient_id, referring_physician_name,"
                " study_date, study_time, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0)",
                (study, name, f"P{n}", referring, date, time),
            )
            modality = "MR" if study == "1.2.2" else "CT"
            for s in range(2 if study == "1.2.1" else 1):
                series = f"{study}.{s}"
                conn.execute(
                    "INSERT INTO series (series_instance_uid, study_instance_uid, modality, series_number, state,"
                    " first_received_at, last_received_at) VALUES (?, ?, ?, ?, 'complete', 0, 0)",
                    (series, study, "SEG" if s else modality, s + 1),
                )
                for i in range(3 - s):
                    conn.execute(
                        "INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid,"
                        " sop_class_uid, transfer_syntax_uid, instance_number, received_at, path, size)"
                        " VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', ?, 0, 'x', 0)",
                        (f"{series}.{i}", series, study, i + 1),
                    )
    return db


def studies(database: Database, keyword: str, value: str) -> list[str]:
    found = search_studies(database, [(keyword, value)], limit=100, offset=0)
    return sorted(f["StudyInstanceUID"] for f in found)


@pytest.mark.parametrize(("value", "expected"), [
    ("*smith*", ["1.2.1", "1.2.4"]),
    ("smith*", ["1.2.1", "1.2.4"]),
    ("SMITH^JOHN", ["1.2.1"]),
    ("smith^john", ["1.2.1"]),  # a single value: the whole name, whatever its case
    ("smith", []),  # not a wildcard: the whole name
    ("sm?th^j*", ["1.2.1"]),
    ("MÜLLER*", ["1.2.2"]),  # beyond ASCII, which SQLite's lower() leaves as they are
    ("müller^jörg", ["1.2.2"]),
    ("yamada*", ["1.2.3"]),
    ("*=山田*", ["1.2.3"]),
    ("brackets[1]*", ["1.2.5"]),  # a [ is a character, not a GLOB class
])
def test_person_names_match_whatever_the_case(database: Database, value: str, expected: list[str]) -> None:
    assert studies(database, "PatientName", value) == expected


def test_other_text_still_matches_case_sensitively(database: Database) -> None:
    assert studies(database, "ReferringPhysicianName", "*sato*") == ["1.2.3"]  # a person name too
    assert studies(database, "PatientID", "p0") == []
    assert studies(database, "PatientID", "P0") == ["1.2.1"]


@pytest.mark.parametrize(("value", "expected"), [
    ("110000-130000", ["1.2.1", "1.2.5"]),  # "13" is 13:00 to 13:59
    ("-130000", ["1.2.1", "1.2.2", "1.2.5"]),  # an empty time is in no range
    ("110000-", ["1.2.1", "1.2.4", "1.2.5"]),
    ("0900-1000", ["1.2.2"]),
    ("-12", ["1.2.1", "1.2.2"]),  # an end given to the hour spans it
    ("235959-", ["1.2.4"]),
    ("120000", ["1.2.1"]),
    ("0930", ["1.2.2"]),
    ("140000-150000", []),
    ("-235959", ["1.2.1", "1.2.2", "1.2.4", "1.2.5"]),  # an end to the second spans it (probe 39: 235959.5 missed)
    ("235959-235959", ["1.2.4"]),
    ("230000-2359", ["1.2.4"]),
    ("235959.4-235959.5", ["1.2.4"]),  # .5 spans .5 to .599999
    ("235959.4-235959.49", []),
    ("235959.50-", ["1.2.4"]),  # a start's trailing zeros name the same instant (review 36)
    ("120000.0-120000", ["1.2.1"]),
    ("120000.000000-1200", ["1.2.1"]),
])
def test_time_ranges(database: Database, value: str, expected: list[str]) -> None:
    assert studies(database, "StudyTime", value) == expected


@pytest.mark.parametrize(("keyword", "value", "reason"), [
    ("StudyDate", "20261301", "'20261301' is not a date: month must be in 1..12"),
    ("StudyDate", "20260101-20260230", "'20260230' is not a date: day is out of range for month"),
    ("PatientBirthDate", "00000101", "'00000101' is not a date: year 0 is out of range"),
    ("StudyDate", "2026-01-01", "is not YYYYMMDD or a range of them"),
    ("StudyTime", "250000", "'250000' is not a time of day"),
    ("StudyTime", "1260", "'1260' is not a time of day"),
    ("StudyTime", "12:00", "is not HHMMSS"),
    ("StudyTime", "12*", "is not HHMMSS"),
    ("StudyTime", "123", "is not HHMMSS"),
    ("StudyTime", "-", "a range without either end"),
])
def test_impossible_dates_and_times_are_refused_with_the_reason(
        database: Database, keyword: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidQuery, match=reason.replace("(", r"\(").replace("*", r"\*")):
        studies(database, keyword, value)


def test_date_ranges_leave_out_empty_dates(database: Database) -> None:
    assert studies(database, "StudyDate", "-20260102") == ["1.2.1", "1.2.2"]
    assert studies(database, "StudyDate", "20260103-") == ["1.2.3", "1.2.4"]
    assert studies(database, "StudyDate", "20260102") == ["1.2.2"]


@pytest.mark.parametrize("value", ["1.2.1\\1.2.3", "1.2.1,1.2.3", "1.2.1\\1.2.3,1.2.9"])
def test_uid_lists_take_backslashes_and_commas(database: Database, value: str) -> None:
    assert studies(database, "StudyInstanceUID", value) == ["1.2.1", "1.2.3"]


def test_modality_lists_take_backslashes(database: Database) -> None:
    assert studies(database, "ModalitiesInStudy", "MR\\SEG") == ["1.2.1", "1.2.2"]
    found = search_series(database, [("Modality", "SEG\\MR")], limit=100, offset=0)
    assert sorted(f["SeriesInstanceUID"] for f in found) == ["1.2.1.1", "1.2.2.0"]


def test_series_and_instances_carry_their_study_and_its_counts(database: Database) -> None:
    (series,) = search_series(database, [("PatientName", "*john*"), ("Modality", "SEG")], limit=100, offset=0,
                              study_counts=True)
    assert series["PatientName"] == "SMITH^JOHN" and series["StudyDate"] == "20260101"
    assert series["ModalitiesInStudy"] == ["CT", "SEG"]
    assert (series["NumberOfStudyRelatedSeries"], series["NumberOfStudyRelatedInstances"]) == (2, 5)
    instances = search_instances(database, [], limit=100, offset=0, study="1.2.1", series_counts=True)
    assert [(i["SeriesInstanceUID"], i["Modality"], i["NumberOfSeriesRelatedInstances"]) for i in instances] == [
        ("1.2.1.0", "CT", 3), ("1.2.1.0", "CT", 3), ("1.2.1.0", "CT", 3), ("1.2.1.1", "SEG", 2), ("1.2.1.1", "SEG", 2)]
    assert instances[0]["PatientName"] == "SMITH^JOHN"
    (one,) = search_instances(database, [("SOPInstanceUID", "1.2.3.0.2")], limit=100, offset=0, study_counts=True)
    assert (one["PatientName"], one["ModalitiesInStudy"], one["NumberOfStudyRelatedInstances"]) == (
        "Yamada^Tarou=山田^太郎=やまだ^たろう", ["CT"], 3)
    assert "NumberOfStudyRelatedSeries" not in search_series(database, [], limit=1, offset=0)[0]
