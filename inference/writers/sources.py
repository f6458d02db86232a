"""What every writer shares: the source instances, the derived UIDs, the node's identity.

``Sources`` reads the instances the volume came from (headers only: pixels come
from ``Volume.hu``), checks that the findings belong to the volume, and hands the
writers one ``Dataset`` per slice together with its frame number.

**Result series numbers.** Each result series is numbered after its source CT
series, so that the results of two series of one study never share a number and
a series list sorted by number shows each source's four results together: a
source with SeriesNumber N (N >= 1) gets SEG 1000 x N + 901, overlays
(SC) 1000 x N + 902, SR 1000 x N + 903 and key objects (KO) 1000 x N + 904 (series
3 -> 3901, 3902, 3903, 3904; series 12 -> 12901 ... 12904). The last three digits
say what a result is and the digits before them its source, and a scanner's own
9xx series (dose reports, secondary captures) are never taken. A source without a
SeriesNumber (Type 2: it may be empty), with 0 or a negative number, or with a
number too large for the result's to stay an IS value (1000 x N + 904 >
2147483647, N > 2147482) gets the fixed numbers 901, 902, 903 and 904
(``Identity.series_number``). No UID depends on them.

**Result series descriptions** (LO: at most 64 characters, counted as the bytes
they take in the source's character set, escape sequences included, as dciodvfy
counts them: a Japanese description takes two or three a character) say what a result is,
which source series it was made from and which model version made it:
"AI urinary stones report: series 3 (Abdomen kidneys thin) v3.8.0" for series 3,
"Abdomen kidneys thin". The fixed words are few (at most 47 characters are left
for the source's description of a mask, 41 of the key images, for a one-digit
series), since the source's description is what tells two reconstructions of one
scan apart ("KUB 5.0mm", "KUB 1.25mm BONE"). Where the whole is too long, the source's description is
shortened and ends in "..." (ASCII, which every character set has), or left out
where fewer than three of its characters would be left; the series number and the
model version are not cut (only a model version of some 30 characters, which leaves
no room for the kind of result, shortens that to "AI urinary stones", and is cut
itself beyond).
A source without a SeriesNumber is named by its description alone ("report:
(Abdomen)"), one with neither is not named ("AI urinary stones report v3.8.0").
Every description starts with "AI urinary stones", which the viewer
(``dicomweb.viewer``) looks for (``Identity.description``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, TM

from inference.postprocess import Findings
from inference.volume import Volume, decimal_number, read_dicom
from inference.writers.errors import WriterError
from uronode import __version__
from uronode.dicomfile import is_valid_uid
from uronode.uids import derive_uid

logger = logging.getLogger(__name__)

MANUFACTURER = "uronode"
"""Manufacturer of every output: the node and Orthanc's routing skip what carries it."""
DEVICE_SERIAL_NUMBER = "uronode"

SEG_SERIES_NUMBER = 901
SC_SERIES_NUMBER = 902
SR_SERIES_NUMBER = 903
KOS_SERIES_NUMBER = 904
"""The result series' own numbers: a result's SeriesNumber is 1000 x the source's SeriesNumber + its own, or its
own alone where the source has no usable number (``Identity.series_number``)."""
SERIES_NUMBER_STEP = 1000
IS_MAX = 2**31 - 1
"""The largest IS value (PS3.5 6.2: a signed 32-bit integer)."""

RESULTS_PREFIX = "AI urinary stones"
"""How every result's SeriesDescription starts: the viewer finds the node's results by it (``dicomweb.viewer``)."""
SEG_SERIES_DESCRIPTION = "AI urinary stones mask"
SC_SERIES_DESCRIPTION = "AI urinary stones overlay"
SR_SERIES_DESCRIPTION = "AI urinary stones report"
KOS_SERIES_DESCRIPTION = "AI urinary stones key images"
"""What each result is; ``Identity.description`` adds its source series and model version. Short words, as the
64 characters of a SeriesDescription are shared with the source's description (the list shows the modality):
probe 22 found "AI urinary stones - key images of series 2 (KUB...), model 3.8.0", the source's description
cut where it told its reconstructions apart (``KUB 1.25mm BONE``)."""
LO_MAX = 64
ELLIPSIS = "..."
"""Ends a shortened source description: ASCII, so that it is written in any character set of the source."""
_MIN_KEPT = 3
"""The fewest characters of a shortened source description worth showing ("Abd..."); fewer: left out."""


@dataclass(frozen=True)
class Identity:
    """The model that made the findings, the source series and what was read of it: what derived UIDs depend on."""

    source_series_instance_uid: str
    model_name: str
    model_version: str
    inputs: str = ""
    """A digest of the source instances the results were computed from (:func:`inputs_digest`)."""
    source_series_number: int | None = None
    """The source's SeriesNumber, None where it has none (:func:`read_sources` fills it in): the results' series
    numbers and descriptions name it. No UID depends on it."""
    source_series_description: str = ""
    """The source's SeriesDescription, "" where it has none: the results' descriptions name it."""
    source_character_set: tuple[str, ...] = ()
    """The source's SpecificCharacterSet (as the writers' header has it), which the results keep: the bytes of a
    description are counted in it."""
    salt: int = 0
    """0, or the how-manieth other set of UIDs the results take because the first ones were withdrawn or
    superseded earlier (:func:`inference.writers.results.write_results`' ``avoid``): a UID that a rejection note
    named is never given to new content (review 35)."""

    def uid(self, *parts: object) -> str:
        """The UID of a derived instance or item: the same for the same model on the same source instances (a job
        run again, a delivery repeated: nothing duplicated), another when they differ (a series re-opened by late
        instances, an instance replaced by different bytes), so that a receiver never gets changed content under
        a UID it already holds (PS3.5 9: a UID names one thing); the earlier results are superseded. With a
        ``salt``, other UIDs for the same content: the first ones were rejected once (the content came back)."""
        salt = (f"salt {self.salt}",) if self.salt else ()  # 0: the UIDs every earlier version gave
        return derive_uid(self.source_series_instance_uid, self.model_name, self.model_version, self.inputs, *salt,
                          *parts)

    def series_number(self, own: int) -> int:
        """A result series' SeriesNumber: 1000 x the source's SeriesNumber + ``own`` (the result's own number,
        e.g. ``SEG_SERIES_NUMBER``, 901) where the source has a number from 1 and the result stays an IS value,
        else ``own`` (see the module's documentation)."""
        number = self.source_series_number
        if number is not None and number >= 1 and SERIES_NUMBER_STEP * number + own <= IS_MAX:
            return SERIES_NUMBER_STEP * number + own
        return own

    def description(self, base: str) -> str:
        """A result series' description: what it is (``base``), the source series it was made from (its number
        and, as far as it fits, its description: two series' results in one study are told apart) and which
        model version made it (so are two versions' results); at most 64 characters (LO), counted as the bytes
        the value takes in the source's character set, as validators count them. See the module's
        documentation."""
        model = f" v{self.model_version}"
        number = self.source_series_number
        series = "" if number is None else f" series {number}"
        text = self.source_series_description
        shortened = [f" ({text[:n].rstrip()}{ELLIPSIS})" for n in range(len(text) - 1, _MIN_KEPT - 1, -1)
                     if len(text[:n].rstrip()) >= _MIN_KEPT]
        for source in ([f" ({text})", *shortened] if text else []):
            if self._fits(f"{base}:{series}{source}{model}"):
                return f"{base}:{series}{source}{model}"
        while len(base) > len(RESULTS_PREFIX) and not self._fits(f"{base}{':' if series else ''}{series}{model}"):
            base = base[:-1].rstrip()  # a model version of some 30 characters: the kind of result goes
        description = f"{base}{':' if series else ''}{series}{model}"
        while not self._fits(description):
            description = description[:-1]  # and beyond, the version itself
        return description

    def _fits(self, value: str) -> bool:
        """Whether ``value`` is an LO value: at most 64 characters, and 64 bytes in the source's character set
        (ISO 2022 escape sequences included)."""
        if len(value) > LO_MAX:
            return False
        try:
            encoded = encode_string(value, convert_encodings(list(self.source_character_set) or None))
        except (LookupError, UnicodeError, ValueError):
            encoded = value.encode("utf-8")  # as many bytes as any encoding takes, or more
        return len(encoded) <= LO_MAX

    @property
    def software_versions(self) -> tuple[str]:
        """SoftwareVersions of every result: the model's version (the results' algorithm), then the node's."""
        # highdicom annotates the parameter as tuple[str] and means any number of strings; pydicom wants a list
        return cast("tuple[str]", [self.model_version, f"uronode {__version__}"])

    def series_uid(self, *parts: object) -> str:
        """The SeriesInstanceUID of a result series: one per run on the same source instances (:meth:`uid`), so
        that a job run again, or its results delivered again, fill the same series, and a run on other input (a
        series re-opened by late instances) makes a series of its own, with its own date and time. Before, every
        run of a model on a series wrote into one result series: in an archive that does not act on rejection
        notes (IOCM), a re-analysis left the old and the new report in one series, both instance 1, and every
        overlay twice under one image number (probe 18)."""
        return self.uid(*parts)

    def lasting_uid(self, *parts: object) -> str:
        """The UID of what one model's runs on one series share whatever they read: a frame of reference made for
        a series without one."""
        return derive_uid(self.source_series_instance_uid, self.model_name, self.model_version, *parts)

    @property
    def device_uid(self) -> str:
        """The Device Observer UID (TID 1004) of the model as the observing device: its name and version alone, the
        same on every series and every node that runs it, so that a reader of results can tell which results one
        algorithm made (probe 42: it was derived from each source series, a new "device" for every series)."""
        return derive_uid("uronode device observer", self.model_name, self.model_version)


WRITERS_REVISION = 4
"""Raised whenever the writers put something else into a result for the same findings (2: the SEG's Image
Comments, 2026-12-06; 3: a source's study and patient references without their UIDs left out, 2026-12-06; 4: the
device observer's UID the model's alone, a coded verdict in every report, each stone's long axis, a
summary overlay image with no stone and the source's orders, 2026-12-07): the package's version is not raised for each change, and a result made again under a UID a
destination holds is not sent again with other content (the node keeps its first copy), so without it a re-run
after an upgrade would keep the old content (review 33)."""


def inputs_digest(paths: Sequence[str], findings: Findings) -> str:
    """SHA-256 of what the results are made of: this node's version (the writers), the source files' bytes, each
    once, in slice order (headers and pixels: the files the worker has just read, from the page cache), and the
    findings (their mask and measurements: the same model on the same files finds the same, but nothing written
    may change under a UID); ``WriterError`` when a file cannot be read."""
    digest = hashlib.sha256(f"uronode {__version__} writers {WRITERS_REVISION}".encode())  # and what wrote them
    digest.update(json.dumps(findings.to_json(), sort_keys=True).encode())
    digest.update(np.ascontiguousarray(findings.mask).view(np.uint8).data)
    for path in dict.fromkeys(paths):
        digest.update(b"\x00file\x00")
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise WriterError(f"source instance {Path(path).name} cannot be read: {exc}") from exc
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Sources:
    """The source instance of every slice of the volume, in slice order (headers only)."""

    datasets: tuple[Dataset, ...]
    """One per slice (the same object repeats for the frames of one multi-frame instance)."""
    unique: tuple[Dataset, ...]
    """Each source instance once, in the order of its first slice."""
    identity: Identity

    @property
    def multiframe(self) -> bool:
        return len(self.unique) < len(self.datasets)


_REQUEST_TEXT = {"AccessionNumber": 16, "RequestedProcedureID": 16, "ScheduledProcedureStepID": 16,
                 "RequestedProcedureDescription": 64, "ReasonForTheRequestedProcedure": 64,
                 "ScheduledProcedureStepDescription": 64}
"""The text attributes of an order the results carry, with their value representation's most characters (SH 16,
LO 64)."""
_REQUEST_CODES = ("RequestedProcedureCodeSequence", "ReasonForRequestedProcedureCodeSequence",
                  "ScheduledProtocolCodeSequence")


def _codes(items: Sequence[Dataset] | None, at_most: int | None = None) -> list[Dataset]:
    """Copies of the code items that are whole (value, scheme and meaning: Type 1 in a code item), at most
    ``at_most`` of them: a source's broken or extra item is left out, not carried into every result (review 38)."""
    whole = [copy.deepcopy(item) for item in (items or []) if isinstance(item, Dataset)
             and (item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue"))
             and item.get("CodingSchemeDesignator") and item.get("CodeMeaning")]
    return whole[:at_most] if at_most is not None else whole


def _order_of(request: Dataset) -> Dataset:
    """One Request Attributes item as the results carry it: its texts cut to their value representation's
    length, its codes whole, one requested procedure code (the sequence takes one)."""
    order = Dataset()
    for keyword, most in _REQUEST_TEXT.items():
        if request.get(keyword):
            setattr(order, keyword, str(request.get(keyword))[:most])
    if request.get("StudyInstanceUID"):
        order.StudyInstanceUID = request.StudyInstanceUID
    if request.get("IssuerOfAccessionNumberSequence"):
        order.IssuerOfAccessionNumberSequence = copy.deepcopy(request.IssuerOfAccessionNumberSequence)
    for keyword in _REQUEST_CODES:
        codes = _codes(request.get(keyword), 1 if keyword == "RequestedProcedureCodeSequence" else None)
        if codes:
            setattr(order, keyword, codes)
    return order


def _orders(first: Dataset) -> list[Dataset]:
    return [_order_of(request) for request in first.get("RequestAttributesSequence") or []
            if isinstance(request, Dataset)]


def requested_procedures(first: Dataset) -> list[Dataset]:
    """The orders the source's images were made for, from its Request Attributes Sequence (0040,0275: one item
    per requested procedure, several where one CT serves several orders), as an SR's or key object document's
    Referenced Request Sequence (0040,A370) names them (PS3.3 C.17.2). Empty where the source names none (the
    accession number, copied with the study, is then all there is). Probe 42: a report of a CT that served two
    orders could not be told apart."""
    items = []
    for order in _orders(first):
        item = Dataset()
        item.StudyInstanceUID = order.get("StudyInstanceUID") or first.StudyInstanceUID
        item.ReferencedStudySequence = []
        own = "AccessionNumber" in order  # the order's own, or the study's
        item.AccessionNumber = (order.get("AccessionNumber") if own else first.get("AccessionNumber")) or ""
        issuer = order.get("IssuerOfAccessionNumberSequence") if own else first.get("IssuerOfAccessionNumberSequence")
        if issuer:
            item.IssuerOfAccessionNumberSequence = copy.deepcopy(issuer)
        item.PlacerOrderNumberImagingServiceRequest = ""  # Type 2: the Request Attributes do not carry them
        item.FillerOrderNumberImagingServiceRequest = ""
        item.RequestedProcedureID = order.get("RequestedProcedureID") or ""
        item.RequestedProcedureDescription = order.get("RequestedProcedureDescription") or ""
        item.RequestedProcedureCodeSequence = order.get("RequestedProcedureCodeSequence") or []
        for keyword in ("ReasonForTheRequestedProcedure", "ReasonForRequestedProcedureCodeSequence"):
            if order.get(keyword):
                setattr(item, keyword, order.get(keyword))
        items.append(item)
    return items


def copy_request_attributes(result: Dataset, first: Dataset) -> None:
    """The source's Request Attributes Sequence (General Series module, Type 3) on a result of the image kind
    (SEG, overlays), so that a PACS files it under the same orders as its CT: each item's texts cut to their
    length, its codes whole (``_order_of``)."""
    orders = _orders(first)
    if orders:
        result.RequestAttributesSequence = orders


PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                       "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime")
"""Type 2 attributes of the patient and study modules that every result copies (highdicom reads them as
attributes): an anonymiser often deletes them, where the standard would have them present and empty."""

_DATES_AND_TIMES = {"PatientBirthDate": DA, "StudyDate": DA, "StudyTime": TM}

_PATIENT_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}
"""PatientSex values whose meaning is plain, as the enumerated M, F or O (PS3.3 C.7.1.1) that highdicom
insists on. Any other (U for unknown, X, W, a word in another language) is written empty: Type 2, unknown."""


def _patient_sex(ds: Dataset) -> str | None:
    """Make PatientSex one of M, F, O or empty, and say what was changed, or None where nothing was.

    highdicom refuses any other value (``ValueError: 'U' is not a valid PatientSexValues``), and every
    writer takes the source's, so a header with "U" (common, and written by anonymisers), "Male" or "f"
    lost all its results after the model had run. An unambiguous spelling of male, female or other becomes
    its letter; anything else becomes empty, which is what an unknown sex is in DICOM."""
    value = ds.get("PatientSex")
    if value is None or value == "" or value in ("M", "F", "O"):
        return None
    mapped = _PATIENT_SEX.get(value.strip().upper(), "") if isinstance(value, str) else ""
    if mapped == value:
        return None
    ds.PatientSex = mapped
    return f"PatientSex {value!r} " + (f"written as {mapped!r}" if mapped else "is not M, F or O: written empty")


def _one_person_name(ds: Dataset) -> list[str]:
    """PatientName or ReferringPhysicianName with more than one value (a backslash in the name; VM 1 in the
    patient and study modules): the first value kept, as highdicom raises TypeError on a list of names and
    every writer takes them from the source. What was changed, for the log."""
    mended = []
    for keyword in ("PatientName", "ReferringPhysicianName"):
        value = ds.get(keyword)
        if isinstance(value, (list, tuple, MultiValue)):
            setattr(ds, keyword, value[0] if len(value) else "")
            mended.append(f"{keyword} has {len(value)} values: the first kept")
    return mended


_REFERENCES = ("ReferencedStudySequence", "ReferencedPatientSequence")
"""The references of the General Study and Patient modules (Type 3), which every result copies whole."""


def _broken_references(ds: Dataset) -> list[str]:
    """Items of ReferencedStudySequence or ReferencedPatientSequence without a Referenced SOP Class UID and a
    Referenced SOP Instance UID that are UIDs (both Type 1 in an item): every result copies those modules as the
    source has them, so a source's fault was each result's (dciodvfy, probe 33 #8). Such items are left out, and
    a sequence left empty goes. What was changed."""
    mended = []
    for keyword in _REFERENCES:
        items = ds.get(keyword)
        if items is None:
            continue
        kept = [item for item in items if all(is_valid_uid(str(item.get(uid, "") or ""))
                                              for uid in ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID"))]
        if len(kept) == len(items):
            continue
        if kept:
            setattr(ds, keyword, kept)
        else:
            del ds[keyword]
        mended.append(f"{keyword}: {len(items) - len(kept)} of its {len(items)} items without both referenced "
                      "UIDs left out")
    return mended


_SPACINGS = ("SliceThickness", "SpacingBetweenSlices")


def _unparsed_spacings(ds: Dataset, slice_spacing: float) -> list[str]:
    """SliceThickness and SpacingBetweenSlices that pydicom could not read as numbers (it leaves them text), at
    the top level and in the pixel measures of the functional groups: the SEG copies them into its own pixel
    measures, and highdicom raised ValueError on "2,5" after the model had run. A decimal comma is read as the
    loader reads it (``decimal_number``); any other SliceThickness is taken as the distance between the slice
    planes, as a missing one is, and any other SpacingBetweenSlices (Type 3) is left out. What was changed."""
    items = [ds]
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(groups) or []:
            items += list(group.get("PixelMeasuresSequence") or [])[:1]
    mended: dict[str, str] = {}
    for item in items:
        for keyword in _SPACINGS:
            value = item.get(keyword)
            if not isinstance(value, str) or not value.strip():
                continue  # a number pydicom read, or absent
            number = decimal_number(value)
            if number is not None:
                setattr(item, keyword, value.strip().replace(",", "."))
                mended.setdefault(keyword, f"{keyword} {value!r} read with a decimal point")
            elif keyword == "SliceThickness":
                item.SliceThickness = f"{slice_spacing:.6g}"
                mended.setdefault(keyword, f"{keyword} {value!r} is no number: taken as {slice_spacing:.6g} mm, "
                                           "the distance between the slices")
            else:
                del item[keyword]
                mended.setdefault(keyword, f"{keyword} {value!r} is no number: left out")
    return list(mended.values())


def complete_header(ds: Dataset, identity: Identity, slice_spacing: float) -> list[str]:
    """Mend a source header that bends the standard's rules so that its results can be written; returns
    what was mended, for the log.

    Missing patient and study attributes become empty, as an anonymiser should have left them; a date or
    time that does not parse becomes empty (the results cannot carry "19700000"); a PatientSex other than
    M, F or O becomes its letter where its meaning is plain ("male", "f") and empty where not ("U"), as
    highdicom takes nothing else (``_patient_sex``); a PatientName or ReferringPhysicianName of several
    values keeps its first (``_one_person_name``); a study or patient reference without its UIDs is left out
    (``_broken_references``); a SliceThickness or SpacingBetweenSlices that is not a
    number is read with a decimal point where it has a comma, else taken as the distance between the slice
    planes or left out (``_unparsed_spacings``); a missing
    FrameOfReferenceUID (Type 1 in CT, but lost by some exports) becomes one derived from the series, the
    same for every slice, so that the SEG has the frame of reference it must name; a missing
    SliceThickness (Type 2 in CT, Type 1 in the SEG's pixel measures) is taken as the distance between the
    slice planes, as most series are reconstructed; a character set the writers cannot encode becomes UTF-8
    (``WRITABLE_CHARACTER_SETS``); an Enhanced CT's per-frame geometry that is one for all frames is shared
    (``_shared_frame_geometry``). Only the header read for the writers changes, never the stored file.
    """
    mended = []
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
            mended.append(f"{keyword} missing")
    for keyword, parse in _DATES_AND_TIMES.items():
        value = str(ds.get(keyword) or "")
        if not value:
            continue
        try:
            parse(value)
        except ValueError:
            setattr(ds, keyword, "")
            mended.append(f"{keyword} is not a DICOM {parse.__name__}: written empty")  # the value is logged: not it
    sex = _patient_sex(ds)
    if sex is not None:
        mended.append(sex)
    mended += _one_person_name(ds)
    mended += _broken_references(ds)
    mended += _unparsed_spacings(ds, slice_spacing)
    if not ds.get("FrameOfReferenceUID"):
        ds.FrameOfReferenceUID = identity.lasting_uid("frame-of-reference")
        mended.append("FrameOfReferenceUID missing")
    if not ds.get("SliceThickness") and "PerFrameFunctionalGroupsSequence" not in ds:
        ds.SliceThickness = f"{slice_spacing:.6g}"
        mended.append(f"SliceThickness missing: taken as {slice_spacing:.6g} mm, the distance between the slices")
    declared = ds.get("SpecificCharacterSet")
    terms = [str(t) for t in (declared if isinstance(declared, (list, tuple, MultiValue)) else [declared])
             if declared is not None]
    if terms and not all(t in WRITABLE_CHARACTER_SETS for t in terms):
        ds.decode()  # every text value as the source declared it, then written as UTF-8
        ds.SpecificCharacterSet = "ISO_IR 192"
        declared_text = "\\".join(terms)
        mended.append(f"SpecificCharacterSet {declared_text!r} written as ISO_IR 192 (UTF-8)")
    mended += _shared_frame_geometry(ds)
    return mended


WRITABLE_CHARACTER_SETS = frozenset(v.value for v in hd.SpecificCharacterSetValues)
"""The character sets highdicom writes. Others that sources carry (the Japanese form with an empty first
value, ``\\ISO 2022 IR 87``; Korean ``ISO 2022 IR 149``; ``ISO_IR 6``, which is no defined term; an
unknown one) made every writer raise: such a header is decoded and its results are written in UTF-8."""

_GEOMETRY_GROUPS = ("PlaneOrientationSequence", "PixelMeasuresSequence")


def _shared_frame_geometry(ds: Dataset) -> list[str]:
    """An Enhanced CT whose frames each carry the same orientation or pixel measures (legal, but a SEG
    needs them shared): the first frame's item moved to the shared group. WriterError where they differ."""
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames:
        return []
    if "SharedFunctionalGroupsSequence" not in ds or not ds.SharedFunctionalGroupsSequence:
        ds.SharedFunctionalGroupsSequence = [Dataset()]
    shared = ds.SharedFunctionalGroupsSequence[0]
    moved = []
    for group in _GEOMETRY_GROUPS:
        if group in shared or not all(group in frame for frame in frames):
            continue
        first = frames[0][group][0]
        if any(not _same_items(frame[group][0], first) for frame in frames[1:]):
            raise WriterError(f"the frames of the Enhanced CT have different {group} items; a SEG needs one "
                              "orientation and one pixel spacing for all frames")
        setattr(shared, group, [first])
        for frame in frames:
            del frame[group]
        moved.append(f"{group} of every frame shared")
    return moved


def _same_items(a: Dataset, b: Dataset) -> bool:
    """Two functional group items with the same keywords and numbers within 1e-4 (the loader's tolerance is
    coarser: what it read as one geometry is one)."""
    if {e.keyword for e in a} != {e.keyword for e in b}:
        return False
    for element in a:
        x, y = element.value, b[element.keyword].value
        xs = list(x) if isinstance(x, (list, tuple, MultiValue)) else [x]
        ys = list(y) if isinstance(y, (list, tuple, MultiValue)) else [y]
        try:
            if len(xs) != len(ys) or any(abs(float(u) - float(v)) > 1e-4 for u, v in zip(xs, ys, strict=True)):
                return False
        except (TypeError, ValueError):
            if xs != ys:
                return False
    return True


def _one_orientation(datasets: tuple[Dataset, ...]) -> bool:
    """Single-frame sources whose ImageOrientationPatient differ by float noise (the loader accepted them as
    one orientation; highdicom's SEG wants them equal): all given the first one's. Whether any changed."""
    first = datasets[0].get("ImageOrientationPatient")
    if first is None:
        return False
    changed = False
    for ds in datasets[1:]:
        if ds.get("ImageOrientationPatient") is not None and list(ds.ImageOrientationPatient) != list(first):
            ds.ImageOrientationPatient = list(first)
            changed = True
    return changed


def _read_header(path: str) -> Dataset:
    try:
        return read_dicom(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise WriterError(f"source instance {Path(path).name} cannot be read: {exc}") from exc


def check_inputs(volume: Volume, findings: Findings) -> Identity:
    """The identity the results will carry; ``WriterError`` when findings and volume disagree."""
    if findings.series_instance_uid != volume.series_instance_uid:
        raise WriterError("the findings belong to another series than the volume")
    if findings.mask.shape != volume.hu.shape:
        raise WriterError(
            f"the findings' mask has shape {findings.mask.shape}, the volume {volume.hu.shape}"
        )
    if not findings.model_name or not findings.model_version:
        raise WriterError(
            "the findings name no model or no model version; derived UIDs and the "
            "algorithm identification need both"
        )
    for box in findings.boxes:
        if not 0 <= box.stone_index < len(findings.stones):
            raise WriterError(f"a box on slice {box.slice_index} points at no stone")
    return Identity(volume.series_instance_uid, findings.model_name, findings.model_version,
                    inputs_digest(_source_paths(volume), findings))


def _source_paths(volume: Volume) -> tuple[str, ...]:
    if any(not path for path in volume.source_paths):
        raise WriterError(
            "the volume was loaded from datasets in memory; the writers need the source files"
        )
    return volume.source_paths


def _series_number(ds: Dataset) -> int | None:
    """The source's SeriesNumber as an integer, None where it is missing, empty or no integer."""
    value = ds.get("SeriesNumber")
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        try:
            number = float(str(value).strip())
        except ValueError:
            return None
        return int(number) if number.is_integer() else None


def _series_description(ds: Dataset) -> str:
    """The source's SeriesDescription on one line: "" where it has none; the values of one that holds several
    (a backslash in it) joined by a space; runs of white space made one space."""
    value = ds.get("SeriesDescription")
    if value is None:
        return ""
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return " ".join(" ".join(str(v) for v in values).split())


def _character_set(ds: Dataset) -> tuple[str, ...]:
    """The terms of the source's SpecificCharacterSet, () where it states none (the default repertoire)."""
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return ()
    return tuple(str(term) for term in (value if isinstance(value, (list, tuple, MultiValue)) else [value]))


def read_sources(volume: Volume, identity: Identity) -> Sources:
    """Read the header of every source instance named by ``volume.source_paths``; the identity the results carry
    is ``identity`` with the source's SeriesNumber and SeriesDescription (the first instance's)."""
    by_path: dict[str, Dataset] = {}
    per_slice = []
    for k, path in enumerate(_source_paths(volume)):
        ds = by_path.get(path)
        if ds is None:
            ds = by_path[path] = _read_header(path)
            mended = complete_header(ds, identity, volume.slice_spacing)
            if mended and len(by_path) == 1:
                logger.warning("series %s: its header is mended for the results (the stored files stay as they are): %s",
                               volume.series_instance_uid, "; ".join(mended))
        if str(ds.get("SOPInstanceUID", "")) != volume.sop_instance_uids[k]:
            raise WriterError(f"{Path(path).name} is not the instance of slice {k + 1} any more")
        per_slice.append(ds)
    unique = tuple(by_path.values())
    identity = replace(identity, source_series_number=_series_number(unique[0]),
                       source_series_description=_series_description(unique[0]),
                       source_character_set=_character_set(unique[0]))
    if len(unique) == len(per_slice) and _one_orientation(unique):
        logger.warning("series %s: its slices' ImageOrientationPatient differ by float noise; the results take "
                       "the first slice's", volume.series_instance_uid)
    if len(unique) < len(per_slice) and len(unique) > 1:
        raise WriterError(
            f"the volume comes from {len(unique)} multi-frame instances; a SEG can reference "
            "only one multi-frame source"
        )
    logger.debug("read %d source header(s) of series %s", len(unique), volume.series_instance_uid)
    return Sources(datasets=tuple(per_slice), unique=unique, identity=identity)
