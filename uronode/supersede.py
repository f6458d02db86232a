"""Results superseded by a later run of the same model on the same series, and the rejection note that says so.

A series can be analysed more than once: it re-opens when late instances
arrive or an instance is replaced by other bytes, and an administrator can
queue a job again. The results' UIDs depend on what they are made of
(``inference.writers.sources.Identity``), so a run on other input makes new
instances, in result series of its own (with their own date and time: an
archive that does not act on the rejection note shows two coherent runs, not
one series of both). Each run's
results are recorded here (table ``results``: which source series, which
model); when a run records its own, the earlier runs' results of the same
model on the same series that it did not make again are **superseded**:

- taken out of the node's store (index and files), so DICOMweb and the
  viewer show the current analysis only;
- deliveries of them still owed become ``superseded`` and are not sent;
- every destination that already holds some of them gets a **rejection
  note** (IHE IOCM): a Key Object Selection titled (113001, DCM, "Rejected
  for Quality Reasons") that lists them. An archive that supports IOCM hides
  or removes them; any other stores it as one more key object, whose title
  and description say what was superseded and why.

Results of another model version are never superseded: they add (a model
upgrade is compared, not overwritten).

Results are **withdrawn**, every model's, when their source series is no
longer one: every image of it was sent again in another series (a series
split or merged at the PACS, a correction; probe 32). Their images are
analysed there, as that series, and the results of the emptied series would
sit beside that analysis naming a series that is not there any more. They
go as superseded results go, with a rejection note that says why
(:func:`withdraw`, called when the completion monitor finds the series
empty, or left with nothing the model reads: its scout alone). So are they
when an image of the series came again naming another patient or order
(:data:`CORRECTED`, probe 45): they name an identity their source no longer
has, whatever its new analysis makes of it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from uronode.audit import AuditLog
from uronode.dicomfile import now_at, timezone_offset
from uronode.outbox import Outbox
from uronode.settings import Destination
from uronode.store import METADATA_CACHE, NOTES_FOLDER, forget_empty_studies
from uronode.types import OWN_MANUFACTURER, DocumentReference
from uronode.uids import derive_uid

log = logging.getLogger(__name__)

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
STRUCTURED_REPORT_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
"""The SR storage classes (the key object selection among them, left out by :func:`current_reports`)."""
REJECTED_FOR_QUALITY = ("113001", "DCM", "Rejected for Quality Reasons")
WITHDRAWN = ("every image of its CT series was sent again in another series, which is analysed as that series "
             "where the model can read it")
"""Why a series' results are withdrawn (:func:`withdraw`): the jobs that made them say it (``withdrawn``)."""


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """Why a series' results are withdrawn, as each place says it."""

    reason: str
    """What the jobs that made them (``withdrawn``) and their deliveries still owed (``withdrawn: ...``) say."""
    note: str
    """What the rejection note says of them after "are withdrawn: "."""
    said: str
    """The log's words after "withdrawn"."""


MOVED = Withdrawal(WITHDRAWN, "every image of that series was sent again in another series, which is analysed as"
                   " that series, in result series of its own, where the model can read it",
                   "(its images moved to another series)")
CORRECTED = Withdrawal(
    "the patient or order identity of its CT series' images was corrected at their source (Patient ID, name, birth"
    " date, sex or Accession Number): results made of it as it was name the earlier identity. The series is"
    " analysed again as it is now",
    "the patient or order identity of that series' images was corrected at their source; these name the earlier"
    " identity. The series is analysed again as it is now, in result series of its own",
    "(the patient or order identity of its images was corrected)")
"""Probe 45: a correction sent again for part of a series failed its new job (two identities), and the results of
the earlier identity stayed current and were delivered to the PACS after the correction; another model's results
were never superseded by the corrected series' analysis."""
NOTE_SERIES_NUMBER = 905
NOTE_SERIES_DESCRIPTION = "AI urinary stones - superseded results (rejection note)"
"""The rejection note's SeriesDescription where the CT series' number is not known (``note_description``)."""
PIXEL_CLASSES_PREFIXES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7")
"""SEG and Secondary Capture: referenced as IMAGE items; anything else (SR, KO) as COMPOSITE."""

_PATIENT_STUDY = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID",
                  "IssuerOfPatientIDQualifiersSequence", "PatientBirthDate", "PatientSex", "PatientAge",
                  "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                  "AccessionNumber", "StudyDescription", "TimezoneOffsetFromUTC")


@dataclass(frozen=True, slots=True)
class Superseded:
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    path: Path
    delivered_to: tuple[str, ...]
    """The destinations that hold it already."""


def findings_model(findings: str | None) -> str:
    """The model's name and version as a job's findings (JSON) name them, as the results table records them;
    "" when they do not (nothing is then superseded)."""
    try:
        model = json.loads(findings or "").get("model") or {}
        return f"{model['name']} {model['version']}" if model.get("name") and model.get("version") else ""
    except (ValueError, AttributeError, TypeError):
        return ""


def superseded_by(conn: sqlite3.Connection, job_id: int, source_series_uid: str, findings: str | None) -> int | None:
    """:func:`superseding_job` of a job as recorded (its findings name its model), or None."""
    model = findings_model(findings)
    return superseding_job(conn, job_id, source_series_uid, model) if model else None


def superseding_job(conn: sqlite3.Connection, job_id: int, source_series_uid: str, model: str) -> int | None:
    """The later job whose results replaced job ``job_id``'s (``model``'s results of the series), or None: the
    job's results are current, were never recorded, or were removed by retention with nothing after them. A
    client following a job it was given (the upload page) learns that its results are withdrawn (probe 18)."""
    if conn.execute("SELECT 1 FROM results WHERE source_series_uid = ? AND model = ? AND job_id = ? LIMIT 1",
                    (source_series_uid, model, job_id)).fetchone() is not None:  # the index results_source
        return None  # some of its results are current
    row = conn.execute(
        "SELECT job_id FROM results WHERE source_series_uid = ? AND model = ? AND job_id > ?"
        " ORDER BY recorded_at DESC, job_id DESC LIMIT 1",
        (source_series_uid, model, job_id),
    ).fetchone()
    return None if row is None else int(row["job_id"])


def current_reports(conn: sqlite3.Connection, source_series_uid: str) -> list[tuple[str, DocumentReference]]:
    """The reports (SR, not key objects) among the current results of the series, each with the model that made
    it ("name version"): a new run of that model replaces them, and its report names them as its predecessors."""
    rows = conn.execute(
        "SELECT r.model, i.study_instance_uid, i.series_instance_uid, i.sop_class_uid, i.sop_instance_uid"
        " FROM results r JOIN instances i ON i.sop_instance_uid = r.sop_instance_uid"
        " WHERE r.source_series_uid = ? ORDER BY r.recorded_at, i.sop_instance_uid",
        (source_series_uid,),
    ).fetchall()
    return [(str(row["model"]), DocumentReference(row["study_instance_uid"], row["series_instance_uid"],
                                                  row["sop_class_uid"], row["sop_instance_uid"]))
            for row in rows
            if row["sop_class_uid"].startswith(STRUCTURED_REPORT_PREFIX) and row["sop_class_uid"] != KEY_OBJECT_SELECTION]


def rejected_uids(conn: sqlite3.Connection, source_series_uid: str) -> frozenset[str]:
    """The UIDs of every result of the source series that was taken out as superseded or withdrawn (a rejection
    note may name it): the writers give new results other UIDs than these (``write_results``' ``avoid``)."""
    return frozenset(r[0] for r in conn.execute("SELECT sop_instance_uid FROM rejected WHERE source_series_uid = ?",
                                                (source_series_uid,)))


def record_results(
    conn: sqlite3.Connection, *, job_id: int, source_series_uid: str, model: str, sop_instance_uids: Sequence[str],
) -> list[Superseded]:
    """Inside the caller's transaction (the one that owes the new results to the destinations): record them as
    ``model``'s results of the source series, and take the earlier ones it did not make again out of the index,
    their owed deliveries marked ``superseded``. Returns those; their files are still on disk for the rejection
    note (:func:`owe_note_in`, in the same transaction; :func:`retire` after the commit)."""
    now = time.time()
    current = set(sop_instance_uids)
    earlier = conn.execute(
        "SELECT r.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, i.study_instance_uid, i.path,"
        " i.manufacturer"
        " FROM results r LEFT JOIN instances i ON i.sop_instance_uid = r.sop_instance_uid"
        " WHERE r.source_series_uid = ? AND r.model = ?",
        (source_series_uid, model),
    ).fetchall()
    conn.executemany(
        "INSERT INTO results (sop_instance_uid, source_series_uid, model, job_id, recorded_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(sop_instance_uid) DO UPDATE SET source_series_uid = excluded.source_series_uid,"
        " model = excluded.model, job_id = excluded.job_id, recorded_at = excluded.recorded_at",
        [(uid, source_series_uid, model, job_id, now) for uid in sop_instance_uids],
    )
    superseded = [s for row in earlier if row["sop_instance_uid"] not in current
                  if (s := _take_out(conn, row, source_series_uid, f"superseded by job {job_id}", now)) is not None]
    forget_empty_studies(conn, {s.study_instance_uid for s in superseded})  # the CT moved to a corrected study
    return superseded


def withdraw(conn: sqlite3.Connection, source_series_uid: str,
             withdrawal: Withdrawal = MOVED) -> tuple[dict[str, list[Superseded]], list[int]]:
    """Inside the caller's transaction: take every model's results of a source series that is no longer one (its
    images all moved to another series, or all but what the model cannot read: :data:`MOVED`) or no longer the
    patient's or order's they name (:data:`CORRECTED`) out of the index, their owed
    deliveries marked ``superseded``, as :func:`record_results` takes out what a later run did not make again; the
    jobs that made them say so (``withdrawn``). Returns them by model, and those jobs; their files are still on
    disk for the rejection notes (:func:`owe_note_in` with ``job_id`` None, then :func:`retire` after the commit)."""
    now = time.time()
    rows = conn.execute(
        "SELECT r.sop_instance_uid, r.model, i.sop_class_uid, i.series_instance_uid, i.study_instance_uid, i.path,"
        " i.manufacturer"
        " FROM results r LEFT JOIN instances i ON i.sop_instance_uid = r.sop_instance_uid"
        " WHERE r.source_series_uid = ? ORDER BY r.model, r.sop_instance_uid",
        (source_series_uid,),
    ).fetchall()
    jobs = sorted({int(r["job_id"]) for r in conn.execute(
        "SELECT DISTINCT job_id FROM results WHERE source_series_uid = ? AND job_id IS NOT NULL", (source_series_uid,))})
    withdrawn: dict[str, list[Superseded]] = {}
    for row in rows:
        taken = _take_out(conn, row, source_series_uid, f"withdrawn: {withdrawal.reason}", now)
        if taken is not None:
            withdrawn.setdefault(str(row["model"]), []).append(taken)
    conn.executemany("UPDATE jobs SET withdrawn = ? WHERE id = ?", [(withdrawal.reason, job) for job in jobs])
    forget_empty_studies(conn, {s.study_instance_uid for found in withdrawn.values() for s in found})
    return withdrawn, jobs


def _take_out(conn: sqlite3.Connection, row: sqlite3.Row, source_series_uid: str, why: str,
              now: float) -> Superseded | None:
    """One earlier result out of the results table and the index (its series' row with its last instance), its
    owed deliveries ``superseded`` with ``why``; None where there is nothing more to do (its file gone already,
    or it is no result of the node's)."""
    uid = row["sop_instance_uid"]
    conn.execute("DELETE FROM results WHERE sop_instance_uid = ?", (uid,))
    if row["path"] is None:  # gone already (retention took its series)
        return None
    if row["manufacturer"] != OWN_MANUFACTURER:  # never a received image, whatever was recorded (probe 20)
        log.warning("series %s: instance %s was recorded as a result but is a received one; it stays",
                    source_series_uid, uid)
        return None
    delivered = [r["destination"] for r in conn.execute(
        "SELECT destination FROM deliveries WHERE sop_instance_uid = ? AND state = 'delivered' ORDER BY id",
        (uid,))]
    conn.execute(
        "UPDATE deliveries SET state = 'superseded', last_error = ?, updated_at = ?"
        " WHERE sop_instance_uid = ? AND state IN ('pending', 'dead')",
        (why, now, uid),
    )
    conn.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (uid,))
    # a note may reject it: the same content made again (images moved away and back, a correction undone) takes
    # other UIDs (review 35: an archive acting on the note had hidden them)
    conn.execute("INSERT OR REPLACE INTO rejected (sop_instance_uid, source_series_uid, rejected_at) VALUES (?, ?, ?)",
                 (uid, source_series_uid, now))
    series = row["series_instance_uid"]
    if conn.execute("SELECT 1 FROM instances WHERE series_instance_uid = ? LIMIT 1", (series,)).fetchone() is None:
        conn.execute("DELETE FROM series_associations WHERE series_instance_uid = ?", (series,))
        conn.execute("DELETE FROM series WHERE series_instance_uid = ?", (series,))
    return Superseded(uid, row["sop_class_uid"], series, row["study_instance_uid"], Path(row["path"]),
                      tuple(delivered))


def note_series_number(first: Dataset) -> int:
    """The rejection note's SeriesNumber: 1000 x N + 905 where the results it rejects were numbered after
    their CT series N (1000 x N + 901..904, ``inference.writers.sources``), so that the note sorts with them
    and two CT series' notes differ; :data:`NOTE_SERIES_NUMBER` (905) where they were not (results made
    before that scheme, 901-904)."""
    try:
        number = int(str(first.get("SeriesNumber", "") or "0").strip())
    except ValueError:
        number = 0
    source = number // 1000
    if source >= 1 and 1000 * source + NOTE_SERIES_NUMBER <= 2**31 - 1:
        return 1000 * source + NOTE_SERIES_NUMBER
    return NOTE_SERIES_NUMBER


def source_series_number(first: Dataset) -> int | None:
    """The CT series' number the results were named after (1000 x N + 901..904), None where they were not."""
    number = note_series_number(first)
    return number // 1000 if number != NOTE_SERIES_NUMBER else None


def note_description(first: Dataset) -> str:
    """The rejection note's SeriesDescription: it names the CT series by its number, as the results do
    ("AI urinary stones - superseded, series 3 (rejection note)", within LO's 64 characters for any series
    number the scheme gives; probe 18: a note beside them that named no series was read as about the whole
    study)."""
    number = source_series_number(first)
    if number is None:
        return NOTE_SERIES_DESCRIPTION
    return f"AI urinary stones - superseded, series {number} (rejection note)"  # LO: 63 characters at most


def rejection_note(superseded: Sequence[Superseded], first: Dataset, *, source_series_uid: str, model: str,
                   job_id: int | None, withdrawal: Withdrawal = MOVED) -> Dataset:
    """The IOCM rejection note (a Key Object Selection Document) listing ``superseded``, in their study.

    ``first``: the header of one of them, whose patient and study attributes the note copies; ``job_id``: the
    later analysis that superseded them, or None where they are withdrawn (:func:`withdraw`, for ``withdrawal``)."""
    uids = sorted(s.sop_instance_uid for s in superseded)
    now = now_at(timezone_offset(first.get("TimezoneOffsetFromUTC")))  # the results' zone (probe 39)
    ds = Dataset()
    for keyword in _PATIENT_STUDY:
        if keyword in first:
            ds[keyword] = first[keyword]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        ds.setdefault(keyword, "")  # Type 2: present, if empty
    ds.SOPClassUID = KEY_OBJECT_SELECTION
    ds.SOPInstanceUID = derive_uid("rejection-note", source_series_uid, model, *uids)
    ds.Modality = "KO"
    # one series per patient and study the notes name (probe 32: one series UID had held notes of three patients
    # in two studies, the source series' identity corrected between them)
    ds.SeriesInstanceUID = derive_uid("rejection-note", source_series_uid, model, "series",
                                      str(ds.get("StudyInstanceUID", "")), str(ds.get("PatientID", "")),
                                      str(ds.get("PatientName", "")))
    ds.SeriesNumber = note_series_number(first)
    ds.SeriesDescription = note_description(first)
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.Manufacturer = "uronode"
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([_code(*REJECTED_FOR_QUALITY)])
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = DicomSequence([template])
    description = Dataset()
    description.RelationshipType = "CONTAINS"
    description.ValueType = "TEXT"
    description.ConceptNameCodeSequence = DicomSequence([_code("113012", "DCM", "Key Object Description")])
    number = source_series_number(first)
    named = f"CT series {number} ({source_series_uid})" if number is not None else f"CT series {source_series_uid}"
    if job_id is None:
        why = f" withdrawn: {withdrawal.note}"
    else:
        why = (f" superseded by a later analysis of the same series (job {job_id}), in result series of its own"
               " with a later series date and time; read the results of the later one")
    description.TextValue = f"{len(uids)} AI result instance(s) of the analysis of {named} by {model} are{why}"[:1024]
    items = [description]
    for item in sorted(superseded, key=lambda s: s.sop_instance_uid):
        ref = Dataset()
        ref.RelationshipType = "CONTAINS"
        ref.ValueType = "IMAGE" if item.sop_class_uid.startswith(PIXEL_CLASSES_PREFIXES) else "COMPOSITE"
        sop = Dataset()
        sop.ReferencedSOPClassUID = item.sop_class_uid
        sop.ReferencedSOPInstanceUID = item.sop_instance_uid
        ref.ReferencedSOPSequence = DicomSequence([sop])
        items.append(ref)
    ds.ContentSequence = DicomSequence(items)
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence(_evidence(superseded))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def owe_note_in(conn: sqlite3.Connection, root: Path, outbox: Outbox | None, superseded: Sequence[Superseded], *,
                destinations: Sequence[Destination], source_series_uid: str, model: str, job_id: int | None,
                calling_ae: str | None, withdrawal: Withdrawal = MOVED) -> tuple[Path, Dataset] | None:
    """Inside the transaction of :func:`record_results` or :func:`withdraw` (the superseded files are still there to
    read): write the rejection note of what destinations hold (None when none holds any) and owe it, as a result
    of ``job_id``, to each destination that holds some of it and takes key objects (none without an outbox: a node
    without destinations). In the same transaction, so that a stop after the commit loses no note (review 35: it
    had been written after the commit, and a stop between lost it for good); a stop before the commit leaves a
    note file nothing owes, which retention removes."""
    held = [s for s in superseded if s.delivered_to]
    first = _header(held) if held else None
    if first is None:
        return None
    ds = rejection_note(held, first, source_series_uid=source_series_uid, model=model, job_id=job_id,
                        withdrawal=withdrawal)
    folder = root / NOTES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    holders = {d for s in held for d in s.delivered_to}
    if outbox is not None:
        for destination in destinations:
            if destination.name in holders and destination.takes(KEY_OBJECT_SELECTION):
                outbox.enqueue_in(conn, destination=destination.name, sop_instance_uid=str(ds.SOPInstanceUID),
                                  sop_class_uid=KEY_OBJECT_SELECTION, path=path, job_id=job_id,
                                  calling_ae=calling_ae)
    return path, ds


def retire(root: Path, superseded: Sequence[Superseded], note: tuple[Path, Dataset] | None, *,
           source_series_uid: str, model: str, job_id: int | None, jobs: Sequence[int] = (),
           withdrawal: Withdrawal = MOVED) -> None:
    """After the commit of :func:`record_results` or :func:`withdraw` (and :func:`owe_note_in`): remove the
    superseded files and the stale metadata of their series, and say so in the audit log."""
    if not superseded:
        return
    for item in superseded:
        item.path.unlink(missing_ok=True)
        (item.path.parent / METADATA_CACHE).unlink(missing_ok=True)
    AuditLog(root).record("results_superseded" if job_id is not None else "results_withdrawn", job_id=job_id,
                          **({"jobs": list(jobs), "why": withdrawal.said.strip("()")}  # whose results, why
                             if job_id is None else {}),
                          series_instance_uid=source_series_uid, model=model,
                          instances=[s.sop_instance_uid for s in superseded],
                          rejection_note=str(note[1].SOPInstanceUID) if note else None)
    log.info("series %s: %d earlier result instance(s) of %s %s%s", source_series_uid, len(superseded), model,
             f"superseded by job {job_id}" if job_id is not None else f"withdrawn {withdrawal.said}",
             "; a rejection note is owed to " + ", ".join(sorted({d for s in superseded for d in s.delivered_to}))
             if note else "")


def _header(superseded: Sequence[Superseded]) -> Dataset | None:
    for item in superseded:
        try:
            return dcmread(item.path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            log.warning("superseded result %s cannot be read for its rejection note: %s", item.path, exc)
    return None


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code


def _evidence(superseded: Sequence[Superseded]) -> list[Dataset]:
    by_study: dict[str, dict[str, list[Superseded]]] = {}
    for item in superseded:
        by_study.setdefault(item.study_instance_uid, {}).setdefault(item.series_instance_uid, []).append(item)
    studies = []
    for study_uid, series in sorted(by_study.items()):
        study = Dataset()
        study.StudyInstanceUID = study_uid
        study.ReferencedSeriesSequence = DicomSequence()
        for series_uid, items in sorted(series.items()):
            one = Dataset()
            one.SeriesInstanceUID = series_uid
            refs = []
            for item in sorted(items, key=lambda s: s.sop_instance_uid):
                ref = Dataset()
                ref.ReferencedSOPClassUID = item.sop_class_uid
                ref.ReferencedSOPInstanceUID = item.sop_instance_uid
                refs.append(ref)
            one.ReferencedSOPSequence = DicomSequence(refs)
            study.ReferencedSeriesSequence.append(one)
        studies.append(study)
    return studies
