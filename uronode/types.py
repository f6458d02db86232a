"""Small frozen records that the packages hand each other."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

OWN_MANUFACTURER = "uronode"
"""Manufacturer (0008,0070) written into every object this node derives."""

OWN_RESULTS = "derived by this node"
"""The reason a series of the node's own results is not for the model (``uronode.completion``): logged at DEBUG
(every job makes four) and counted apart in the ``uronode_series`` metric."""

SERIES_COMPLETIONS = "series_completions"
"""The ``counters`` row counting series completions as they happen (a series completed again after a late image
counts again): ``uronode_series_completed_total`` (probe 57: computed from the series the index holds, it dipped
when one went back to receiving and its earlier results were replaced)."""

WORKER_DEATHS = "worker_deaths"
"""The ``counters`` row counting the node's own worker processes found dead: ``uronode_worker_deaths_total``."""

NOT_OWED = "not owed any more: "
"""How the reason of a delivery the configured destinations no longer want begins (:meth:`uronode.outbox.Outbox.drop_unwanted`)."""
NOT_SENT = "not sent: "
"""How the reason of a delivery begins that was owed when its job was cancelled (:meth:`uronode.jobs.JobQueue.cancel`);
one the destination took meanwhile (being sent at that moment) is recorded delivered all the same."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the index keeps of one received instance (read without its pixel data)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    series_description: str = ""
    image_type: str = ""
    """ImageType values joined by a backslash, as in the file."""
    manufacturer: str = ""
    contrast_agent: str = ""
    """Contrast/Bolus Agent (0018,0010): what says a series was acquired with contrast (``uronode.contrast``)."""
    convolution_kernel: str = ""
    """Convolution Kernel (0018,1210), values joined by a backslash: a sharp (bone, lung) reconstruction is skipped
    when routed (``uronode.completion.sharp_kernel``)."""
    body_part: str = ""
    """Body Part Examined (0018,0015) and Protocol Name (0018,1030): with the descriptions, what says a series
    shows another region than the abdomen, or a phantom (``uronode.anatomy``)."""
    protocol_name: str = ""
    image_orientation: str = ""
    """ImageOrientationPatient (0020,0037) as in the file (six numbers joined by backslashes), or empty: a stack
    that is not axial is skipped when routed (``uronode.completion.not_axial``)."""
    instance_number: int | None = None
    image_position: tuple[float, float, float] | None = None
    series_number: int | None = None
    series_date: str = ""
    series_time: str = ""
    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    referring_physician_name: str = ""
    study_description: str = ""
    study_id: str = ""
    rows: int | None = None
    """Rows (0028,0010), Columns, BitsAllocated and NumberOfFrames: what the data set says of its pixels
    (``uronode.structure.ImageSize``); None where it does not say it."""
    columns: int | None = None
    bits_allocated: int | None = None
    number_of_frames: int | None = None
    rescale_type: str = ""
    """Rescale Type (0028,1054): a multi-energy CT's map says in it that its values are not HU; skipped when routed
    (``uronode.energy``)."""


@dataclass(frozen=True, slots=True)
class DocumentReference:
    """A stored report that a new one replaces: an item of the new report's Predecessor Documents Sequence
    (0040,A360; PS3.3 C.17.2), which names each predecessor by study, series, SOP class and instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One row of the instance index."""

    header: InstanceHeader
    path: Path
    size: int
    calling_ae: str
    received_at: float


class StoreOutcome(enum.Enum):
    """What putting an instance into the store did."""

    STORED = "stored"
    """A new SOP Instance UID."""
    DUPLICATE = "duplicate"
    """The same SOP Instance UID with identical bytes: nothing changed."""
    REPLACED = "replaced"
    """The same SOP Instance UID with different bytes: the file was replaced and its series re-opened."""


class SeriesState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"


class SeriesDisposition(enum.StrEnum):
    """What happened to a series when it completed."""

    QUEUED = "queued"
    SKIPPED = "skipped"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"
    """Results made and stored; waiting for the destinations to confirm them."""
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of work for a worker: small and serialisable, never an in-process object."""

    id: int
    study_instance_uid: str
    series_instance_uid: str
    series_generation: int
    model: str
    state: JobState
    reason: str | None
    attempts: int
    created_at: float
    updated_at: float
    claimed_by: str | None = None
    """The worker of the last claim: ``local`` (the node's own) or a remote worker's name."""
    withdrawn: str | None = None
    """Why its results were withdrawn (every image of its series sent again in another series), None where not."""


@dataclass(frozen=True, slots=True)
class CompletedSeries:
    """A series that the completion monitor closed, and what it decided."""

    series_instance_uid: str
    study_instance_uid: str
    generation: int
    disposition: SeriesDisposition
    reason: str | None
    job_id: int | None
