"""Series completion: deciding when a series has fully arrived, and what to do with it.

A series is complete when
- every association that carried it has ended, the last of them to end was
  released (A-RELEASE: the sender says it is done), and nothing more arrived
  for ``grace_s`` seconds after it ended, or
- nothing arrived for ``quiet_s`` seconds, whatever the associations do (a
  sender that keeps its association open, or one that sends a series over
  many associations with pauses).

An association that ended otherwise (aborted by either side, its connection
lost, or left open by a crash and closed as ``lost`` at start-up) is no sign
that the series is whole: the sender will likely send the rest again, so such
a series waits for ``quiet_s``, as if the association were still open.

A late instance, or an instance replaced by different bytes, re-opens the
series (its generation goes up) and it completes again. A series left with no
instance (every image of it sent again in another series) is no longer
listed; its results, and those of a series left with nothing the model reads
(its scout alone), are withdrawn (:func:`uronode.supersede.withdraw`) and its
queued or running jobs dropped. A complete series that
the model can read becomes a job; one that it cannot is recorded as skipped
with the reason. All of it lives in SQLite, so a restart picks up where the
previous run stopped: associations left open are closed as lost at start-up
and their series complete after the quiet period, exactly once.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import UID

from uronode.anatomy import AT_MOST_MM, series_region
from uronode.audit import AuditLog
from uronode.contrast import contrast_evidence, without_free_text
from uronode.db import bump_counter
from uronode.energy import EnergyImage, energy_image
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.settings import Destination
from uronode.steady import Waits
from uronode.store import Store, forget_empty_studies
from uronode.supersede import CORRECTED, MOVED, Superseded, owe_note_in, retire, withdraw
from uronode.types import (
    OWN_MANUFACTURER,
    OWN_RESULTS,
    SERIES_COMPLETIONS,
    CompletedSeries,
    SeriesDisposition,
)

log = logging.getLogger(__name__)

NO_INSTANCES = "the series has no instances"
LOCALIZER = "localizer (scout) images"
NOT_ABDOMEN = "not an abdominal CT"
"""How the reason of a series whose header names another region or a phantom begins (probe 46)."""

CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

NORMAL_END = "released"
"""The association outcome (:mod:`uronode.associations`) that lets a series complete after the grace period."""

UPLOAD = "UPLOAD /api/predict"
"""How an upload to ``/api/predict`` is recorded as an association while its files are stored (``dicomweb.api``;
with the user who authenticated after a space; longer than an AE title's 16 characters, so no DICOM peer's: review
46): its series complete when it ends, never by this module's rules, the quiet one included (review 45: halves of
a series 30 s apart in a large upload), for at most ``UPLOAD_HOLD_S`` (one whose end could not be recorded would
hold them until the node's next start, review 46); ``_DUE_QUERY`` names both."""
UPLOAD_HOLD_S = 3600.0

_DUE_QUERY = f"""
SELECT s.series_instance_uid, s.study_instance_uid, s.generation, s.last_received_at,
       (SELECT count(*) FROM series_associations sa JOIN associations a ON a.id = sa.association_id
         WHERE sa.series_instance_uid = s.series_instance_uid AND a.ended_at IS NULL) AS open_count,
       (SELECT max(a.ended_at) FROM series_associations sa JOIN associations a ON a.id = sa.association_id
         WHERE sa.series_instance_uid = s.series_instance_uid) AS last_ended_at,
       (SELECT count(*) FROM series_associations sa JOIN associations a ON a.id = sa.association_id
         WHERE sa.series_instance_uid = s.series_instance_uid AND a.ended_at IS NOT NULL) AS ended_count,
       (SELECT a.outcome FROM series_associations sa JOIN associations a ON a.id = sa.association_id
         WHERE sa.series_instance_uid = s.series_instance_uid AND a.ended_at IS NOT NULL
         ORDER BY a.ended_at DESC, a.id DESC LIMIT 1) AS last_outcome,
       (SELECT max(a.started_at) FROM series_associations sa JOIN associations a ON a.id = sa.association_id
         WHERE sa.series_instance_uid = s.series_instance_uid AND a.ended_at IS NULL
         AND (a.calling_ae = '{UPLOAD}' OR a.calling_ae LIKE '{UPLOAD} %')) AS upload_started_at
  FROM series s WHERE s.state = 'receiving'
"""


_QUALIFY_QUERY = ("SELECT modality, sop_class_uid, image_type, manufacturer, contrast_agent, series_description,"
                  " convolution_kernel, image_orientation, image_position, number_of_frames, rescale_type, body_part,"
                  " protocol_name, (SELECT study_description FROM studies s WHERE s.study_instance_uid ="
                  " i.study_instance_uid) AS study_description FROM instances i WHERE series_instance_uid = ?")
"""What ``qualify`` reads of a series' instances."""


AXIAL_TOLERANCE_DEG = 30.0
"""The most a stack's slice normal may lie from the head-feet axis (``inference.volume.AXIAL_TOLERANCE_DEG``, which
the model's loader holds to: a test keeps the two equal; the core cannot import the inference package)."""
SHARP_KERNEL_WORDS = re.compile(r"\b(BONE|BONEPLUS|LUNG|EDGE)\b")
"""Words that name a sharp (bone, lung) kernel in a ConvolutionKernel: GE's BONE, BONEPLUS, LUNG, EDGE."""
SHARP_DESCRIPTION_WORDS = re.compile(r"\b(BONE|BONEPLUS|LUNG|LUNGS|KNOCHEN|LUNGE|OSSO|HUESO|POUMON)\b(?!\s*BASE)")
"""Words that name a bone or lung reconstruction in a Series Description (English, German, Italian, Spanish,
French; not "lung bases", the lungs' lower part an abdominal CT covers; words that mean something else in
English, such as Dutch "long" or French "os", are left out: a series skipped wrongly gets no result). Read only
where the series names no ConvolutionKernel: a kernel that says nothing sharp decides (review 23: GE STANDARD
with "LUNG BASES", Canon FC18-H with "Abd Bone", were skipped)."""
NUMBERED_KERNEL = re.compile(r"^(B|BR|BF|BL|BV|I|IR|Q|QR)(\d{2})[A-Z]?$|^FC(\d{2})(-[A-Z0-9]+)?$")
"""Siemens' body kernels (B30f, Br40, I70f, Qr60...: sharp from 50) and Canon's (FC03, FC18-H, FC30...: bone from
30)."""


def sharp_kernel(kernel: str, description: str) -> str | None:
    """Why a reconstruction is a sharp (bone or lung) one, in words, or None: its ConvolutionKernel names a sharp
    kernel, or, where it names none, its Series Description names one. The model learned soft-tissue
    reconstructions: on a bone kernel's noise and edge enhancement it split a 17 mm stone into two and missed a
    4 mm one (probe 22)."""
    values = [v.strip().upper() for v in kernel.split("\\") if v.strip()]
    if values:
        value = values[0]  # Siemens add a second value ("Br40d\\3": the strength of iterative reconstruction)
        match = NUMBERED_KERNEL.match(value)
        if match is not None:
            sharp = (match.group(2) is not None and int(match.group(2)) >= 50) or (
                match.group(3) is not None and int(match.group(3)) >= 30)
            return f"ConvolutionKernel '{value}'" if sharp else None
        return f"ConvolutionKernel '{value}'" if SHARP_KERNEL_WORDS.search(value) else None
    if SHARP_DESCRIPTION_WORDS.search(description.upper()):
        return f"Series Description {description!r}"  # a literal: the logs show it as '...' (probe 34)
    return None


def not_axial(orientations: Sequence[str]) -> float | None:
    """The angle (degrees) between a stack's slice normal and the head-feet axis when every slice gives its
    orientation and it is beyond ``AXIAL_TOLERANCE_DEG`` (a coronal or sagittal stack: a reformat), else None."""
    angles = []
    for text in orientations:
        try:
            values = [float(v) for v in text.split("\\")]
        except ValueError:
            return None
        if len(values) != 6:
            return None
        row, col = values[:3], values[3:]
        normal = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0])
        length = math.sqrt(sum(v * v for v in normal))
        if length < 1e-6:
            return None
        angles.append(math.degrees(math.acos(min(1.0, abs(normal[2]) / length))))
    if not angles or round(min(angles), 1) <= AXIAL_TOLERANCE_DEG:  # to a tenth, as the loader: IOP is rounded text
        return None
    return min(angles)


def _extent_mm(rows: Sequence[sqlite3.Row]) -> float:
    """How far a series' images lie apart along the body (their positions' head-feet coordinate): 0 for one image;
    NaN where it is not known (a multi-frame image gives its frames' positions in its functional groups, which the
    index does not keep; images without a finite position)."""
    if any((row["number_of_frames"] or 1) > 1 for row in rows):
        return math.nan
    heights = []
    for row in rows:
        try:
            height = float(str(row["image_position"] or "").split("\\")[2])
        except (ValueError, IndexError):
            continue
        if math.isfinite(height):
            heights.append(height)
    if len(rows) > 1 and len(heights) < 2:
        return math.nan
    return max(heights) - min(heights) if len(heights) > 1 else 0.0


def _sop_class(uid: str) -> str:
    """A SOP Class UID with its name where the standard gives one (probe 47: a dose screen's reason named
    1.2.840.10008.5.1.4.1.1.7 alone)."""
    name = UID(uid).name if uid else ""
    return f"{uid} ({name})" if name and name != uid else uid or "(none)"


def qualify(rows: Sequence[sqlite3.Row], asked: bool = False, contrast_series: str = "skip",
            sharp_kernel_series: str = "skip", other_region_series: str = "skip") -> str | None:
    """Return why the model cannot take this series, or None when it can.

    Derived secondary CT images (reformats, slabs, exported key images) are skipped when they
    arrive unasked (a PACS routing a whole study also sends its axial originals), but taken when
    someone asks for them (``asked``: an upload to ``/api/predict``, the paper's workflow, where a
    coronal slice exported from a viewer is DERIVED\\SECONDARY and the one image there is). So are
    series whose description clearly names a contrast phase (``uronode.contrast``: the model reads
    non-contrast CT; a PACS routing a whole study sends its contrast phases too) unless ``contrast_series``
    is ``read``; an agent alone skips nothing (the worker's caution says it). So are series whose header names
    another region than the abdomen or a phantom, and the abdomen nowhere (``uronode.anatomy``), unless
    ``other_region_series`` is ``read``."""
    if not rows:
        return NO_INSTANCES
    if any(r["manufacturer"] == OWN_MANUFACTURER for r in rows):
        return OWN_RESULTS
    modalities = sorted({r["modality"] or "(none)" for r in rows})
    if "CT" not in modalities:
        return f"modality {'/'.join(modalities)}, not CT"
    ct_rows = [r for r in rows if r["sop_class_uid"] in CT_SOP_CLASSES]
    if not ct_rows:
        return f"SOP class {_sop_class(rows[0]['sop_class_uid'] or '')} is not a CT image storage class"
    image_types = [(r["image_type"] or "").upper().split("\\") for r in ct_rows]
    if all("LOCALIZER" in t for t in image_types):
        return LOCALIZER
    slices = [r for r, t in zip(ct_rows, image_types, strict=True) if "LOCALIZER" not in t]
    # multi-energy images (uronode.energy), each a series of its own: values that are no HU, or HU with a material
    # taken out; a few such images among conventional slices are left out by the loader, or read with its caution
    energies = [energy_image(r["image_type"] or "", r["rescale_type"] or "") for r in slices]
    if all(image is not None and not image.hounsfield for image in energies):
        return cast(EnergyImage, energies[0]).reason(asked)
    changed = [image for image in energies if image is not None and image.hounsfield and not image.monoenergetic]
    if changed and len(changed) == len(slices) and (why := changed[0].reason(asked)) is not None:
        return why
    monoenergetic = all(image is not None and image.monoenergetic for image in energies)
    if not asked and not monoenergetic and all(t and t[0] == "DERIVED" and "SECONDARY" in t for t in image_types):
        return "derived secondary images"
    # an Enhanced CT gives its frames' positions in its functional groups, never at the top level (review 23)
    if not asked and all(not r["image_position"] and r["sop_class_uid"] == CT_IMAGE_STORAGE
                         and (r["number_of_frames"] or 1) <= 1 for r in slices):
        return ("images without a position (ImagePositionPatient): a screen capture or a document stored as CT, "
                "not CT slices")
    angle = not_axial([r["image_orientation"] or "" for r in slices]) if len(slices) > 1 else None
    if not asked and angle is not None:
        return (f"not an axial stack (its slices' normal is {angle:.0f} degrees from the head-feet axis): a coronal or "
                "sagittal reformat; the model reads axial series (and a lone image in any plane, uploaded)")
    if not asked and other_region_series == "skip":
        region = series_region((r["body_part"] or "", r["protocol_name"] or "", r["series_description"] or "",
                                r["study_description"] or "") for r in slices)
        if region is not None and not region.phantom and not _extent_mm(slices) <= AT_MOST_MM[region.kind]:
            region = None  # longer than the region, or of unknown length: it may reach the kidneys (review 42)
        if region is not None:
            return (f"{NOT_ABDOMEN} ({region.kind}: {region.word}): the model reads "
                    "abdominal CT of adults (upload the series to /api/predict, or set inference.other_region_series"
                    " = \"read\", to read it with a caution)")
    if not asked and sharp_kernel_series == "skip":
        sharp = next((k for r in slices if (k := sharp_kernel(r["convolution_kernel"] or "",
                                                               r["series_description"] or ""))), None)
        if sharp is not None:
            return (f"a sharp-kernel reconstruction ({sharp}): the model reads soft-tissue reconstructions (upload "
                    "the series to /api/predict, or set inference.sharp_kernel_series = \"read\", to read it)")
    if not asked and contrast_series == "skip":
        headers = {(r["contrast_agent"] or "", r["series_description"] or "", r["study_description"] or "",
                    r["protocol_name"] or "") for r in ct_rows}
        evidence = next((e for agent, description, study, protocol in sorted(headers)
                         if (e := contrast_evidence(agent, description, (("Study Description", study),
                                                                         ("Protocol Name", protocol)))) and e.clear),
                        None)
        if evidence is not None:
            return (f"contrast-enhanced ({evidence.text}): the model reads non-contrast CT only (upload the series "
                    "to /api/predict, or set inference.contrast_series = \"read\", to read it with a caution)")
    return None


class CompletionMonitor:
    """Closes series that are due and queues (or skips) them. One per node."""

    def __init__(self, store: Store, queue: JobQueue, *, grace_s: float, quiet_s: float, model: str,
                 contrast_series: str = "skip", sharp_kernel_series: str = "skip", other_region_series: str = "skip",
                 outbox: Outbox | None = None, destinations: Sequence[Destination] = ()) -> None:
        self.store = store
        self.outbox = outbox
        """Where a withdrawn series' rejection notes are owed (None: a node without destinations)."""
        self.destinations = destinations
        self.contrast_series = contrast_series
        self.sharp_kernel_series = sharp_kernel_series
        self.other_region_series = other_region_series
        self.queue = queue
        self.grace_s = grace_s
        self.quiet_s = quiet_s
        self.model = model
        self._waits = Waits()
        """Per series and rule (quiet, grace): how long it has waited, a step of the host's clock not counted (probe
        39: a step forward of 2 h analysed half a series, one back held a complete series for the hour)."""

    def _is_due(self, row: sqlite3.Row, now: float, steady: float) -> bool:
        series_uid = row["series_instance_uid"]
        last = row["last_received_at"]
        # the upload completes it when its last file is in (a node's start ends one left open); its hour counted as
        # the other waits are, a step of the host's clock not counted (review 47: on the database's wall clock)
        upload = row["upload_started_at"]
        if upload is not None and self._waits.waited((series_uid, "upload"), upload, upload, now, steady) < UPLOAD_HOLD_S:
            return False
        if self._waits.waited((series_uid, "quiet"), last, last, now, steady) >= self.quiet_s:
            return True
        if row["open_count"]:
            return False
        if row["last_outcome"] is not None and row["last_outcome"] != NORMAL_END:
            return False  # aborted or lost: the sender will likely send again; the quiet rule decides
        quiet_since = max(last, row["last_ended_at"] or 0.0)
        # the count too: an association that ends after the clock was set back ends "before" the one that ended
        # earlier, and its grace counts from its own end (review 36)
        state = (quiet_since, row["ended_count"])
        return self._waits.waited((series_uid, "grace"), state, quiet_since, now, steady) >= self.grace_s

    def complete_due(self, now: float | None = None, steady: float | None = None) -> list[CompletedSeries]:
        """Complete every series that is due now; return what was decided for each. ``now``: the wall clock (as
        the index stores times), ``steady``: a clock no step moves (the monotonic one; a caller that gives
        ``now`` alone, a test, gives a clock that does not step: ``now`` serves as both)."""
        if now is None:
            now, steady = time.time(), time.monotonic() if steady is None else steady
        elif steady is None:
            steady = now
        rows = self.store.conn().execute(_DUE_QUERY).fetchall()
        receiving = {row["series_instance_uid"] for row in rows}
        self._waits.keep_only(lambda key: isinstance(key, tuple) and key[0] in receiving)  # completed, or gone
        done = []
        for row in rows:
            if self._is_due(row, now, steady):
                result = self._complete(row)
                if result is not None:
                    done.append(result)
        return done

    def _complete(self, due: sqlite3.Row, asked: bool = False) -> CompletedSeries | None:
        series_uid = due["series_instance_uid"]
        with self.store.transaction() as conn:
            current = conn.execute(
                "SELECT state, generation, last_received_at, identity_changed, series_number FROM series"
                " WHERE series_instance_uid = ?",
                (series_uid,),
            ).fetchone()
            if (
                current is None
                or current["state"] != "receiving"
                or current["last_received_at"] != due["last_received_at"]
            ):
                return None  # something arrived meanwhile; look again next round
            instances = conn.execute(_QUALIFY_QUERY, (series_uid,)).fetchall()
            senders = _senders(conn, series_uid)
            reason = qualify(instances, asked, self.contrast_series, self.sharp_kernel_series, self.other_region_series)
            job_id = None
            if reason is None:
                job_id = self.queue.enqueue_in(
                    conn, due["study_instance_uid"], series_uid, current["generation"], self.model
                )
                disposition = SeriesDisposition.QUEUED
            else:
                disposition = SeriesDisposition.SKIPPED
            conn.execute(
                "UPDATE series SET state = 'complete', completed_at = ?, disposition = ?, reason = ?,"
                " identity_changed = 0 WHERE series_instance_uid = ?",
                (time.time(), disposition.value, reason, series_uid),
            )
            if instances:  # an event (probe 57: derived, it dipped); a series emptied by a move is no more listed
                bump_counter(conn, SERIES_COMPLETIONS)
            withdrawn: dict[str, list[Superseded]] = {}
            notes: dict[str, tuple[Path, Dataset] | None] = {}
            jobs: list[int] = []
            caller = None
            withdrawal = MOVED
            if not instances:  # every instance moved to another series (probe 32: listed as an empty CT series)
                conn.execute("DELETE FROM series_associations WHERE series_instance_uid = ?", (series_uid,))
                conn.execute("DELETE FROM series WHERE series_instance_uid = ?", (series_uid,))
            if no_slices(reason) or current["identity_changed"]:
                # nothing of it for the model any more: what was made of it goes (review 35); or it names another
                # patient or order now, whatever its new analysis makes of it (probe 45)
                if no_slices(reason):
                    _drop_jobs(conn, series_uid, cast(str, reason))
                if current["identity_changed"]:
                    withdrawal = CORRECTED
                    _drop_earlier_runs(conn, series_uid, current["generation"])
                withdrawn, jobs = withdraw(conn, series_uid, withdrawal)
                caller = _caller_of([s for found in withdrawn.values() for s in found], conn)
                notes = {model: owe_note_in(conn, self.store.root, self.outbox, found, destinations=self.destinations,
                                            source_series_uid=series_uid, model=model, job_id=None, calling_ae=caller,
                                            withdrawal=withdrawal)
                         for model, found in withdrawn.items()}
            if not instances:
                forget_empty_studies(conn, {due["study_instance_uid"]})
        for model, found in withdrawn.items():  # after the commit: the files
            retire(self.store.root, found, notes[model], source_series_uid=series_uid, model=model, job_id=None,
                   jobs=jobs, withdrawal=withdrawal)
        AuditLog(self.store.root).record(
            "series_complete", series_instance_uid=series_uid, study_instance_uid=due["study_instance_uid"],
            instances=len(instances), generation=current["generation"], disposition=disposition.value,
            reason=without_free_text(reason) if reason else reason, job_id=job_id, senders=senders,
        )
        number = f" (number {current['series_number']})" if current["series_number"] not in (None, "") else ""
        if job_id is not None:
            log.info("series %s%s complete (%d instances): job %d queued", series_uid, number, len(instances), job_id)
        elif not instances:
            log.info("series %s%s holds no instance any more (they moved to another series): it is no longer"
                     " listed%s", series_uid, number,
                     f"; its results are withdrawn ({sum(len(f) for f in withdrawn.values())} instance(s))"
                     if withdrawn else "")
        elif withdrawn and withdrawal is MOVED:
            log.info("series %s%s complete (%d instances) holds nothing the model reads any more (%s): its results are "
                     "withdrawn (%d instance(s))", series_uid, number, len(instances), without_free_text(reason or ""),
                     sum(len(f) for f in withdrawn.values()))
        else:  # the node's own results complete too, four a job: not news (probe 22: 49 such lines in one run)
            log.log(logging.DEBUG if reason == OWN_RESULTS else logging.INFO,
                    "series %s%s complete (%d instances): not for the model: %s", series_uid, number, len(instances),
                    without_free_text(reason or ""))
        return CompletedSeries(
            series_instance_uid=series_uid,
            study_instance_uid=due["study_instance_uid"],
            generation=current["generation"],
            disposition=disposition,
            reason=reason,
            job_id=job_id,
        )

    def take_asked(self, series_uid: str) -> CompletedSeries | None:
        """A complete series skipped for a reason that asking overrides (derived secondary images, a contrast
        phase: ``qualify``), now asked for (its files uploaded again, unchanged, so it did not re-open): queued
        after all. None where it is not complete and skipped, or still does not qualify (a localizer)."""
        with self.store.transaction() as conn:
            current = conn.execute(
                "SELECT study_instance_uid, generation, state, disposition FROM series WHERE series_instance_uid = ?",
                (series_uid,),
            ).fetchone()
            if current is None or current["state"] != "complete" or current["disposition"] != SeriesDisposition.SKIPPED:
                return None
            instances = conn.execute(_QUALIFY_QUERY, (series_uid,)).fetchall()
            if qualify(instances, asked=True, contrast_series=self.contrast_series) is not None:
                return None
            job_id = self.queue.enqueue_in(conn, current["study_instance_uid"], series_uid, current["generation"],
                                           self.model)
            conn.execute("UPDATE series SET disposition = ?, reason = NULL WHERE series_instance_uid = ?",
                         (SeriesDisposition.QUEUED.value, series_uid))
        AuditLog(self.store.root).record(
            "series_complete", series_instance_uid=series_uid, study_instance_uid=current["study_instance_uid"],
            instances=len(instances), generation=current["generation"], disposition=SeriesDisposition.QUEUED.value,
            reason="asked for after it was skipped", job_id=job_id,
        )
        log.info("series %s, skipped before, asked for: job %d queued", series_uid, job_id)
        return CompletedSeries(series_instance_uid=series_uid, study_instance_uid=current["study_instance_uid"],
                               generation=current["generation"], disposition=SeriesDisposition.QUEUED, reason=None,
                               job_id=job_id)

    def complete_now(self, series_uids: Sequence[str]) -> list[CompletedSeries]:
        """Complete these series at once (an upload that has ended: no grace period to wait for); the
        uploader asked for them, so derived secondary images are taken (``qualify``)."""
        done = []
        for uid in series_uids:
            row = self.store.conn().execute(
                "SELECT series_instance_uid, study_instance_uid, last_received_at FROM series"
                " WHERE series_instance_uid = ? AND state = 'receiving'",
                (uid,),
            ).fetchone()
            if row is not None and (result := self._complete(row, asked=True)) is not None:
                done.append(result)
        return done


SENDERS_AT_MOST = 20
"""The most senders a ``series_complete`` audit event names (a series re-sent by many is rare; the line stays short)."""


def _senders(conn: sqlite3.Connection, series_uid: str) -> list[dict[str, str]]:
    """Who brought the series' images: each association's calling AE title (``STOW-RS``, ``UPLOAD``, with the user
    who authenticated, for a request) and host, for its ``series_complete`` audit event (probe 51: the trail named
    no sender, and retention deletes the associations that did)."""
    rows = conn.execute("SELECT DISTINCT a.calling_ae, a.peer_host FROM series_associations sa JOIN associations a"
                        " ON a.id = sa.association_id WHERE sa.series_instance_uid = ?"
                        " ORDER BY a.calling_ae, a.peer_host LIMIT ?", (series_uid, SENDERS_AT_MOST)).fetchall()
    return [{"calling_ae": row["calling_ae"], "host": row["peer_host"]} for row in rows]


def _caller_of(withdrawn: Sequence[Superseded], conn: sqlite3.Connection) -> str | None:
    """The AE the withdrawn results were sent to as the sender of their CT (a destination that answers the
    sender): the rejection note goes the same way."""
    for item in withdrawn:
        row = conn.execute("SELECT calling_ae FROM deliveries WHERE sop_instance_uid = ? AND calling_ae IS NOT NULL"
                           " ORDER BY id LIMIT 1", (item.sop_instance_uid,)).fetchone()
        if row is not None:
            return str(row["calling_ae"])
    return None


def no_slices(reason: str | None) -> bool:
    """Whether ``qualify``'s reason says the series holds no CT slice at all (none left, not CT, only localizers):
    not a reason an upload overrides (a contrast phase, derived images), so results made of it earlier, when it held
    slices, no longer have a series to stand beside (review 35: a series split at the PACS, its scout left)."""
    return reason is not None and (reason in (NO_INSTANCES, LOCALIZER) or reason.startswith(("modality ", "SOP class ")))


IDENTITY_CORRECTED_WHILE_RUNNING = ("the patient or order identity of the series' images was corrected at their source "
                                    "while the job ran: its results would name the earlier identity; the series is "
                                    "analysed again as it is now")


def _drop_earlier_runs(conn: sqlite3.Connection, series_uid: str, generation: int) -> None:
    """Inside the completion's transaction: fail the series' jobs still running on a generation before the
    correction of its identity (a running one's worker, local or remote, then drops its results, as a cancelled
    one's: nothing recorded or sent). Review 40: a remote worker's job claimed before the correction completed after
    it, and its results, naming the earlier patient, were recorded and sent."""
    conn.execute(
        "UPDATE jobs SET state = 'failed', reason = ?, updated_at = ?, claim_token = NULL, lease_until = NULL"
        " WHERE series_instance_uid = ? AND state = 'running' AND series_generation < ?",
        (IDENTITY_CORRECTED_WHILE_RUNNING, time.time(), series_uid, generation))


def _drop_jobs(conn: sqlite3.Connection, series_uid: str, reason: str) -> None:
    """Inside the completion's transaction: fail the series' queued and running jobs (a running one's worker drops
    it, as a cancelled one: nothing stored or sent) with why; they would fail later on a series that is gone, or
    record results of it (review 35)."""
    conn.execute(
        "UPDATE jobs SET state = 'failed', reason = ?, updated_at = ?, claim_token = NULL, lease_until = NULL"
        " WHERE series_instance_uid = ? AND state IN ('queued', 'running')",
        (f"the series no longer holds CT slices ({reason}): its images were sent again in another series, which is "
         "analysed as that series", time.time(), series_uid))
