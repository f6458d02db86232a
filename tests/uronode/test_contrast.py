"""Contrast-enhanced series: told from the header, skipped when routed unasked, read with a caution otherwise."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.factory import ct_slice, uid, write_series
from tests.uronode.test_store import encoded, put
from uronode.completion import CompletionMonitor
from uronode.contrast import contrast_evidence, without_free_text
from uronode.dicomfile import encode_file_meta
from uronode.header import read_header
from uronode.jobs import JobQueue
from uronode.store import Store
from uronode.types import SeriesDisposition


@pytest.mark.parametrize(
    ("description", "agent"),
    [
        ("ABD PORTAL VENOUS", ""),
        ("Arterial 1.0 B30f", ""),
        ("CT ABD/PEL C+", ""),
        ("Abdomen KM+", ""),
        ("CTU EXCRETORY 5 min", ""),
        ("ABD_PV_3mm", ""),
        ("Abdomen KM venöse Phase", ""),  # German: Kontrastmittel, venous (accents taken off)
        ("Temps artériel", ""),  # French
        ("Fase arteriosa", ""),  # Italian
        ("Fase corticomedular", ""),  # Spanish
        ("Arteriyel faz", ""),  # Turkish
        ("Arteriële fase", ""),  # Dutch
        ("PORTAL VENOUS NO ORAL", ""),  # "no oral" denies oral contrast, not the phase
        ("Pre-op CTA", ""),
        ("Nephrographic phase", "NONE"),  # a default agent; the phase is named
        ("CTA w/o bone", ""),  # "without" what is not contrast
        ("Arterial Recon No. 2", ""),
        ("DELAYED UROGRAM 5mm", ""),
        ("CTU Delayed 1.25", ""),
        ("Uro 8min", ""),
        ("10 min delay", ""),
        ("Urogram Phase", ""),
        ("Delayed phase", ""),
        ("Spätaufnahme 10 Min", ""),
        ("Delayed 5 min", ""),  # minutes after the injection (probe 47; before, read as non-contrast)
    ],
)
def test_a_named_contrast_phase_is_clear(description: str, agent: str) -> None:
    """Probe 47's late phases too: a word of a late acquisition with a second one (a urography, minutes, "phase")."""
    found = contrast_evidence(agent, description)
    assert found is not None and found.clear and found.text.startswith("Series Description"), found


@pytest.mark.parametrize(
    "description",
    [
        "Abdomen con contraste",  # Spanish: contrast mentioned, no phase named
        "Batın kontrastlı",  # Turkish: with contrast
        "Abdomen mit Kontrastmittel",
        "TDM avec PDC",
        "AIDR 3D Enhanced",  # a reconstruction's word: never a skip
        "CT ABD PEL W/WO CONTRAST",  # an examination's name copied into each of its series: both phases
        "ABD/PEL W+WO",
        "CT UROGRAM PRE/POST",
        "CT ABD PEL WITH AND WITHOUT",
        "Nativ mit und ohne KM",
        "NONCON ABD W",  # a "with" that says with what: nothing, so contrast
        "STONE WITH IV",
        "NC + DELAYED",  # a later phase named beside the denial (review 19: lost for a while)
        "NONCON W UROGRAM",
        "NATIV MIT SPAETAUFNAHME",
        "Abdomen nativ + KM venös",
        "CT abdomen blanco en met contrast",
        "PV Iodine removed",  # a virtual unenhanced image of the portal phase
        "CT UROGRAM",  # an examination's name alone: any of its phases (probe 47: its excretory ones were read)
        "CTU Phase 1",  # a phase's place, not which: the unenhanced one as often as not
        "DELAYED",  # alone: a post-void or prone look as often as a phase
    ],
)
def test_a_mention_of_contrast_or_both_phases_cautions_but_is_not_clear(description: str) -> None:
    found = contrast_evidence("OMNIPAQUE 350", description)
    if description == "DELAYED":
        assert contrast_evidence("", description) is None  # the agent's caution, no more
        found = contrast_evidence("", description, (("Study Description", "CT ABD"),))
        assert found is None
        return
    assert found is not None and not found.clear and found.text.startswith("Series Description"), found


@pytest.mark.parametrize(
    "agent",
    ["OMNIPAQUE 350", "ORAL", "APPLIED", "IV Omnipaque, no oral", "OMNIPAQUE 350 1.0 ML/KG", "Imeron 400 - 80 ml",
     "Non ionic", "ORAL: NONE  IV: ISOVUE 370"],
)
def test_an_agent_alone_is_evidence_but_not_clear(agent: str) -> None:
    """Some sites fill the agent once for the whole examination, its unenhanced phase included: a caution, no skip."""
    found = contrast_evidence(agent, "Abdomen 1.0 B30f")
    assert found is not None and not found.clear and found.text.startswith("Contrast/Bolus Agent"), found


@pytest.mark.parametrize(
    ("agent", "description"),
    [
        ("", ""),
        ("", "Abdomen 1.0 B30f"),  # a contrast series that says nothing is not found (the module's limits)
        ("NONE", "Abdomen"),
        ("NONE/NONE", "ABD PEL"),
        ("N/A", ""),
        ("n.a.", ""),
        ("No contrast", ""),
        ("NO-CONTRAST", ""),
        ("NOCONTRAST", ""),
        ("KEIN KM", ""),
        ("NOT APPLIED", ""),
        ("Nicht appliziert", ""),
        ("0 ML", ""),
        ("UNKNOWN", ""),
        ("WATER", ""),  # a neutral oral agent neither hides nor mimics a stone
        ("", "ABDOMEN W/O CONTRAST"),
        ("", "CTU W-O"),
        ("", "Abdomen non-contrast"),
        ("", "CTU NON-CON"),
        ("", "CT UROGRAM NONCON 5mm"),
        ("", "CTU UNENH"),
        ("", "CTU Low Dose"),
        ("", "ABD C-"),
        ("", "Abd. o. KM"),
        ("", "Abdomen KM-"),
        ("", "Abdomen -KM"),
        ("", "KUB stone protocol"),
        ("", "nativ Abdomen"),
        ("", "Uro-TC basale"),
        ("", "Urotomografia sin contraste"),
        ("", "TUM BATIN KONTRASTSIZ"),
        ("", "Liver VNC 1.5"),
        ("", "CTU native"),  # the urography's non-contrast phase
        ("", "Prone delayed 10 min"),  # a stone protocol's look at a stone at the bladder's mouth
        ("", "ABDOMEN IV"),  # a Roman four as often as intravenous
        ("", "Nephro 1.0"),
        ("", "Arteriosclerosis follow-up"),  # a word that starts like a phase is not one
        ("ULTRAVIST 370", "Abdomen nativ"),  # the description denies it: an agent filled for the whole examination
        ("OMNIPAQUE 350", "CTU NON CON"),
        ("", "Abdomen vor KM"),  # before contrast, in German, French, Italian, Spanish, Dutch, Turkish, English
        ("", "Uroscanner avant injection"),
        ("", "Uro-TC prima del mdc"),
        ("", "Urotac antes del contraste"),
        ("", "CT nieren voor contrast"),
        ("", "BT üriner sistem kontrast öncesi"),
        ("", "Abdomen before contrast"),
        ("", "CT abdomen zonder contrast"),  # other ways of without
        ("", "CT abdomen geen contrast"),
        ("", "TC abdome s/ contraste"),
        ("", "Pas d'injection"),
        ("", "ABD W/OUT CONTRAST"),
        ("", "Un-enhanced"),
        ("", "Abdomen KM-frei"),
        ("", "Batın kontrast yok"),  # a denial after the word
        ("", "Batın KM'siz"),
        ("", "Abdomen KM: nein"),
        ("", "CONTRAST: NONE"),
        ("", "IV CONTRAST NOT GIVEN"),
        ("", "Contrast allergy"),
        ("", "Abdomen KM (-)"),  # signs written apart
        ("", "Abdomen (-)KM"),
        ("", "ABD CE-"),
        ("", "Abdomen KM\u2013"),  # an en dash
        ("", "CT ABD/PELVIS W/O ORAL/IV CONTRAST"),  # the common US stone CT names
        ("", "NO ORAL OR IV CONTRAST"),
        ("", "ABD PEL NO ORAL CONTRAST"),
        ("", "Water(Iodine)"),  # a virtual unenhanced image
        ("", "ABD W\u2044O CONTRAST"),  # a fraction slash
        ("", "ABD 1.0 Br40 ASIR-V 40% iDose 4 STANDARD"),  # kernels and reconstructions
        ("", "CT KUB WITH CORONAL REFORMATS"),  # a stone protocol "with" something else (probe 17)
        ("", "STONE PROTOCOL W/ CORONALS"),
        ("", "Renal stone protocol with 3D"),
        ("", "KUB LOW DOSE + CORONAL"),
        ("", "NC CT ABD PELVIS W CORONAL"),
        ("", "STONE POST VOID"),
        ("", "KUB 2.0 with bone window"),
        ("", "Abdomen nativ mit Rekonstruktion"),
        ("", "KUB WITH SAGITTAL MPR"),
        ("", "Stone protocol, with 3 mm recon"),  # probe 56: a size between the "with" and what it names
        ("", "KUB with 1mm"),
        ("", "CT with inserted stones"),
    ],
)
def test_a_header_that_denies_or_says_nothing_of_contrast_is_not_contrast(agent: str, description: str) -> None:
    assert contrast_evidence(agent, description) is None


def test_what_is_quoted_can_be_drawn() -> None:
    """The reason and the caution quote the header in ASCII, which the overlays' burned-in text can draw."""
    found = contrast_evidence("Ultravist® 370", "")
    assert found is not None and found.text == "Contrast/Bolus Agent 'Ultravist? 370'"
    phase = contrast_evidence("", "Abdomen KM venöse Phase")
    assert phase is not None and phase.text == "Series Description 'Abdomen KM venose Phase'"


def test_the_agent_is_read_from_the_header_through_both_paths() -> None:
    """The fast scanner and pydicom read Contrast/Bolus Agent alike, in the data set's character set."""
    ds = ct_slice(uid("st"), uid("se"), 0, size=8, contrast_agent="Ultravist® 370")
    ds.SpecificCharacterSet = "ISO_IR 100"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    parts = [encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ExplicitVRLittleEndian, "T"), fp.getvalue()]
    fast, slow = read_header(parts, ExplicitVRLittleEndian), read_header(parts)
    assert fast == slow and fast.contrast_agent == "Ultravist® 370"


GRACE = 2.0


def monitor(store: Store, contrast_series: str = "skip") -> CompletionMonitor:
    return CompletionMonitor(store, JobQueue(store), grace_s=GRACE, quiet_s=30.0, model="default",
                             contrast_series=contrast_series)


def test_a_routed_series_whose_description_names_a_phase_is_skipped_with_the_reason(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    series = uid("contrast")
    for i in range(3):
        put(store, encoded(i, series=series, series_description="ABD PORTAL VENOUS"))
    (done,) = monitor(store).complete_due(time.time() + GRACE + 0.1)
    assert done.disposition is SeriesDisposition.SKIPPED
    assert done.reason is not None and done.reason.startswith(
        "contrast-enhanced (Series Description 'ABD PORTAL VENOUS'): the model reads non-contrast CT only")
    assert "/api/predict" in done.reason and "inference.contrast_series" in done.reason
    assert JobQueue(store).for_series(series) == []
    # an agent alone, and the non-contrast series of the same study: the model's (the first with a caution)
    agent_only, plain = uid("agent-only"), uid("plain")
    put(store, encoded(0, series=agent_only, contrast_agent="OMNIPAQUE 350", series_description="Abdomen 1.0"))
    put(store, encoded(0, series=plain))
    queued = monitor(store).complete_due(time.time() + GRACE + 0.1)
    assert {(d.series_instance_uid, d.disposition) for d in queued} == {
        (agent_only, SeriesDisposition.QUEUED), (plain, SeriesDisposition.QUEUED)}


def test_the_late_phases_of_a_urography_are_skipped_and_its_unenhanced_one_read(tmp_path: Path) -> None:
    """Probe 47: a CT urography's excretory series, "DELAYED UROGRAM 5mm" and "Delayed 1.25mm", were read as
    non-contrast and reported "no stone" beside the unenhanced series' 17 mm stone: the first names its phase, the
    second is read with the caution its examination's name gives."""
    store = Store(tmp_path / "data")
    named = {"DELAYED UROGRAM 5mm": uid("urogram"), "Delayed 1.25mm": uid("delayed"),
             "Non contrast 5mm": uid("unenhanced"), "Abdomen 5.0 Br40": uid("silent")}
    for description, series in named.items():
        put(store, encoded(0, series=series, series_description=description, study_description="CT UROGRAM",
                           protocol_name="CT Urography"))
    done = {d.series_instance_uid: d for d in monitor(store).complete_due(time.time() + GRACE + 0.1)}
    assert done[named["DELAYED UROGRAM 5mm"]].disposition is SeriesDisposition.SKIPPED
    # read, with the caution (the examination's name never skips: reviews 43-46)
    assert done[named["Delayed 1.25mm"]].disposition is SeriesDisposition.QUEUED
    assert done[named["Non contrast 5mm"]].disposition is SeriesDisposition.QUEUED
    assert done[named["Abdomen 5.0 Br40"]].disposition is SeriesDisposition.QUEUED  # read, with the caution


def test_a_series_that_says_nothing_in_a_urography_carries_the_caution(tmp_path: Path) -> None:
    from inference.volume import load_volume

    _, _, paths = write_series(tmp_path / "ctu", 3, series_description="Abdomen 5.0 Br40",
                               study_description="CT UROGRAM")
    notes = load_volume(paths).notes
    assert any(n.startswith("Perhaps contrast-enhanced (Study Description 'CT UROGRAM', and its Series Description"
                            " 'Abdomen 5.0 Br40')") for n in notes), notes
    _, _, plain = write_series(tmp_path / "nect", 3, series_description="Non contrast 5mm",
                               study_description="CT UROGRAM")
    assert not any("ontrast-enhanced" in n for n in load_volume(plain).notes)


@pytest.mark.parametrize("how", ["asked", "read"])
def test_a_contrast_series_is_read_when_asked_for_or_when_the_site_says_so(tmp_path: Path, how: str) -> None:
    store = Store(tmp_path / "data")
    series = uid("contrast", how)
    put(store, encoded(0, series=series, series_description="Nephrographic"))
    if how == "asked":  # an upload to /api/predict: someone asked for this series
        (done,) = monitor(store).complete_now([series])
    else:
        (done,) = monitor(store, "read").complete_due(time.time() + GRACE + 0.1)
    assert done.disposition is SeriesDisposition.QUEUED and done.reason is None
    assert [j.series_instance_uid for j in JobQueue(store).for_series(series)] == [series]


def test_a_series_skipped_when_routed_is_queued_when_asked_for_after(tmp_path: Path) -> None:
    """Its files uploaded again unchanged do not re-open it; asking overrides the reason all the same, once."""
    store = Store(tmp_path / "data")
    series, scout = uid("skipped-then-asked"), uid("scout")
    put(store, encoded(0, series=series, series_description="CTU EXCRETORY"))
    put(store, encoded(0, series=scout, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    assert {d.disposition for d in monitor(store).complete_due(time.time() + GRACE + 0.1)} == {
        SeriesDisposition.SKIPPED}
    taken = monitor(store).take_asked(series)
    assert taken is not None and taken.disposition is SeriesDisposition.QUEUED and taken.job_id is not None
    assert [j.id for j in JobQueue(store).for_series(series)] == [taken.job_id]
    assert monitor(store).take_asked(series) is None  # queued now: asking again adds no job
    assert monitor(store).take_asked(scout) is None  # a localizer stays no series for the model
    assert JobQueue(store).for_series(scout) == []


def test_a_contrast_series_read_all_the_same_carries_the_caution(tmp_path: Path) -> None:
    from inference.volume import load_volume

    _, _, paths = write_series(tmp_path / "cect", 3, series_description="ABD PV 1.0")
    notes = load_volume(paths).notes
    assert any(n.startswith("Contrast-enhanced (Series Description 'ABD PV 1.0')") for n in notes), notes
    _, _, agent = write_series(tmp_path / "agent", 3, contrast_agent="IOMERON 400", series_description="Abdomen")
    notes = load_volume(agent).notes
    assert any(n.startswith("Perhaps contrast-enhanced (Contrast/Bolus Agent 'IOMERON 400')") for n in notes), notes
    _, _, plain = write_series(tmp_path / "nect", 3, contrast_agent="IOMERON 400")  # "Abdomen non-contrast"
    assert not any("ontrast-enhanced" in n for n in load_volume(plain).notes)


def _coded(meaning: str, value: str = "C-B0322") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = value, "SRT"
    if meaning:
        item.CodeMeaning = meaning
    return item


def test_an_agent_coded_in_its_sequence_carries_the_caution(tmp_path: Path) -> None:
    """An Enhanced CT image names its agent only in the Contrast/Bolus Agent Sequence (0018,0012), which its
    Enhanced Contrast/Bolus module holds where contrast was used; a CT image may carry it too."""
    from inference.volume import load_volume
    from tests.inference.test_volume_realworld import _enhanced, _saved

    _, _, paths = write_series(tmp_path / "ct", 3, series_description="Abdomen 1.0 B30f")
    assert not any("ontrast-enhanced" in n for n in load_volume(paths).notes)
    for path in paths:  # what _enhanced moves into the functional groups or drops
        ds = pydicom.dcmread(path)
        ds.RescaleType, ds.SliceLocation = "HU", ds.ImagePositionPatient[2]
        ds.save_as(path)
    enhanced = _enhanced(paths)
    enhanced.ContrastBolusAgentSequence = [_coded("Iohexol")]
    notes = load_volume([_saved(enhanced, tmp_path / "enhanced")]).notes
    assert any(n.startswith("Perhaps contrast-enhanced (Contrast/Bolus Agent 'Iohexol')") for n in notes), notes
    for path in paths:  # a CT image: two agents, one known by its code alone
        ds = pydicom.dcmread(path)
        ds.ContrastBolusAgent = ""  # Type 2: present and empty, the agent coded below
        ds.ContrastBolusAgentSequence = [_coded("Iopromide"), _coded("", "C-B0324")]
        ds.save_as(path)
    notes = load_volume(paths).notes
    assert any(n.startswith("Perhaps contrast-enhanced (Contrast/Bolus Agent 'Iopromide, C-B0324')")
               for n in notes), notes
    for path in paths:  # a description that denies contrast wins over a coded agent, as over a written one
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "Abdomen nativ"
        ds.save_as(path)
    assert not any("ontrast-enhanced" in n for n in load_volume(paths).notes)



@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("腹部造影 動脈相", "clear"),  # Japanese: contrast, arterial phase
        ("腹部ダイナミック造影 門脈相 5mm", "clear"),
        ("腹部增强 动脉期", "clear"),  # Chinese, simplified: enhanced, arterial phase
        ("上腹部增強 門靜脈期", "clear"),  # traditional: portal venous phase
        ("조영증강 문맥기", "clear"),  # Korean: contrast enhanced, portal phase
        ("КТ брюшной полости, артериальная фаза", "clear"),  # Russian: arterial phase
        ("腹部造影CT", "caution"),  # contrast, no phase
        ("복부 조영 CT", "caution"),
        ("КТ с контрастированием", "caution"),
        ("単純+造影", "caution"),  # plain and contrast: an examination's name
        ("腹部単純CT", None),  # Japanese plain CT: the stone protocol
        ("非造影 腎臓", None),
        ("腹部 平扫", None),  # Chinese plain scan
        ("泌尿系平扫 1.25mm", None),
        ("비조영 CT", None),  # Korean non-contrast
        ("КТ без контраста", None),  # Russian: without contrast
        ("нативная фаза", None),
        ("腹部 5.0 B30f", None),  # says nothing
        ("КТ органов мочевыделительной системы", None),  # the urinary tract (review 19: read as excretory, skipped)
        ("МСКТ ОРГАНОВ ВЫДЕЛИТЕЛЬНОЙ СИСТЕМЫ", None),
        ("КТ ВЕНОЗНОЙ СИСТЕМЫ", None),  # a phase only with "фаза"
        ("АРТЕРИАЛЬНОЕ ДАВЛЕНИЕ", None),  # blood pressure
        ("выделительная фаза", "clear"),
        ("배설기관 CT", None),  # excretory organs
        ("бесконтрастная КТ", None),  # non-contrast: not "контраст" inside it
        ("рентгенконтрастные камни", None),  # radiopaque stones
        ("造影前 腹部", None),  # pre-contrast
        ("조영전 CT", None),
        ("腹部增强前", None),
    ],
)
def test_words_of_other_scripts_are_read(description: str, expected: str | None) -> None:
    """Japanese, Chinese, Korean and Russian sites describe series in their own scripts: the contrast words,
    the phases and the plain scan are read; the reason says what was read, as its quote shows them as '?'."""
    found = contrast_evidence("", description)
    assert (None if found is None else "clear" if found.clear else "caution") == expected, found
    if found is not None:
        assert found.text.isascii() and "(read as " in found.text


def test_what_another_script_says_is_named_in_the_reason() -> None:
    found = contrast_evidence("", "腹部造影 動脈相")
    assert found is not None and found.text == "Series Description '???? ???' (read as CONTRAST ARTERIAL)"
    agent = contrast_evidence("イオパミドール 造影剤", "Abdomen")  # iopamidol, contrast agent
    assert agent is not None and agent.text == "Contrast/Bolus Agent '??????? ???' (read as CONTRAST)"
    assert contrast_evidence("造影剤なし", "Abdomen") is None  # contrast agent: none



@pytest.mark.parametrize("charset", [["ISO_IR 192"], ["", "ISO 2022 IR 87"], ["GB18030"]])
def test_a_phase_in_another_script_is_read_from_the_header_in_its_character_set(charset: list[str],
                                                                               tmp_path: Path) -> None:
    """As a Japanese or Chinese scanner writes it (UTF-8, JIS through ISO 2022, GB18030): the description the
    header gives is the one the rule reads, and the routed series is skipped with what was read."""
    description = "腹部造影 門脈相" if "GB18030" not in charset else "腹部增强 门脉期"
    store = Store(tmp_path / "data")
    series, study = uid("jp"), uid("st")
    for i in range(3):
        ds = ct_slice(study, series, i, size=8)
        ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
        ds.SeriesDescription = description
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, ds)
        parts = [encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ExplicitVRLittleEndian, "T"),
                 fp.getvalue()]
        header = read_header(parts, ExplicitVRLittleEndian)
        assert header == read_header(parts) and header.series_description == description
        put(store, parts)
    (done,) = monitor(store).complete_due(time.time() + GRACE + 0.1)
    assert done.disposition is SeriesDisposition.SKIPPED
    assert done.reason is not None and "(read as " in done.reason and "PORTAL)" in done.reason



def test_a_word_of_another_script_inside_another_word_is_not_read() -> None:
    """Review 19: "ВЫДЕЛИТЕЛЬН" matched inside "мочевыделительной" (the urinary system) and skipped a plain stone
    CT; "БЕЗ" before any word denied contrast, so an agent's caution was lost."""
    found = contrast_evidence("OMNIPAQUE 350", "КТ ПОЧЕК БЕЗ ПОДГОТОВКИ")  # without preparation: the agent speaks
    assert found is not None and found.text == "Contrast/Bolus Agent 'OMNIPAQUE 350'"
    assert contrast_evidence("OMNIPAQUE 350", "КТ без в/в контрастирования") is None  # without IV contrast


EXAMINATION = (("Study Description", "CT UROGRAM"), ("Protocol Name", "CT Urography"))


@pytest.mark.parametrize(
    "description", ["Delayed 1.25mm", "Delay 3mm", "10 min", "Abdomen 5.0 Br40", "", "Prone delayed 10 min"],
)
def test_a_series_that_says_nothing_is_read_by_its_examination(description: str) -> None:
    """Probe 47: in a CT urography, "Delayed 1.25mm" was read as non-contrast (its ureter full of contrast taken for
    a stent) and "Abdomen 5.0 Br40" without a word: a series that says nothing of contrast itself is cautioned
    there, never skipped (reviews 43-46: the examination's name is free text)."""
    assert contrast_evidence("", description) is None
    found = contrast_evidence("", description, EXAMINATION)
    assert found is not None and not found.clear and found.text.startswith("Study Description 'CT UROGRAM'"), found
    assert without_free_text(f"contrast-enhanced ({found.text})") == (
        "contrast-enhanced (Study Description '...', and " + ("its Series Description '...')" if description
                                                              else "no Series Description)"))


@pytest.mark.parametrize(
    "description",
    ["Non contrast 5mm", "CTU NON CON", "Native 5mm", "STONE POST VOID", "KUB"],
)
def test_a_series_that_denies_contrast_is_not_questioned_by_its_examination(description: str) -> None:
    """The unenhanced phase of a urography says so: its examination's name questions it no more."""
    assert contrast_evidence("", description, EXAMINATION) is None


@pytest.mark.parametrize("study", ["CT KUB", "CT ABDOMEN PELVIS", "Low dose stone", "CT ABD/PEL WO"])
def test_an_examination_that_names_no_contrast_questions_nothing(study: str) -> None:
    assert contrast_evidence("", "Delayed 1.25mm", (("Study Description", study),)) is None


@pytest.mark.parametrize("description", [
    "Tardiva prono 10 min", "Tardia decubito prono 10 min", "Late 10 min procubitus", "Delayed 10 min post micturition",
    "Delayed 10 min post-mict", "Delayed 10 min buikligging", "Delay 20 min empty bladder", "IVP 0 MIN",
    "Uro single phase", "URO 1 PHASE", "Uro one phase", "URO PHASE", "Uro Late 3.0", "Uro delay kidneys",
])
def test_a_late_look_without_contrast_is_no_phase(description: str) -> None:
    """Review 43: prone and post-void looks in other languages, a scan at 0 minutes, "single phase" and a
    department's "Uro" beside a delay had been skipped as late phases."""
    found = contrast_evidence("", description)
    assert found is None or not found.clear, found


@pytest.mark.parametrize("study", [
    "CT ABDOMEN + PELVIS WITHOUT CONTRAST", "CT ABD + PELVIS W/O CONTRAST",
    "CT ABD/PEL WITHOUT IV CONTRAST (PT REFUSED CONTRAST)", "TC ADDOME SENZA MDC", "CT ABD PELVIS WO CONTRAST",
])
@pytest.mark.parametrize("description", ["Delayed", "Late 5mm", "Delayed 10 min", "Abdomen 5.0 Br40", ""])
def test_an_examination_that_denies_contrast_makes_no_phase_of_its_series(study: str, description: str) -> None:
    """Review 43: an order "WITHOUT CONTRAST" whose "+" reads as "with" made "Delayed" a phase and cautioned its
    silent series. A late phase the series' own words name ("Delayed 10 min") is cautioned there, not skipped;
    beside a Protocol Name naming a urography, a caution, never a skip."""
    alone = contrast_evidence("", description, (("Study Description", study),))
    if description == "Delayed 10 min":
        assert alone is not None and not alone.clear and alone.text.startswith("Series Description"), alone
    else:
        assert alone is None
    found = contrast_evidence("", description, (("Study Description", study), ("Protocol Name", "CT Urogram")))
    assert found is not None and not found.clear, found


@pytest.mark.parametrize("study", ["CT ABDOMEN", ""])
def test_a_protocol_name_that_names_a_urography_is_read_as_the_examination(study: str) -> None:
    found = contrast_evidence("", "Delayed 1.25mm", (("Study Description", study), ("Protocol Name", "Uro-CT")))
    assert found is not None and not found.clear and found.text.startswith("Protocol Name 'Uro-CT'"), found
    found = contrast_evidence("", "Axial 5mm", (("Study Description", study), ("Protocol Name", "CT Urography")))
    assert found is not None and not found.clear, found


@pytest.mark.parametrize("study", [
    "CT ABD PELVIS W WO CONTRAST", "CT UROGRAM WITH AND WITHOUT CONTRAST", "CT UROGRAM PRE/POST",
    "CT ABDOMEN WITH IV CONTRAST NO ORAL CONTRAST", "TC UROGRAFIA SENZA E CON MDC", "CT Urographie nativ und KM",
])
def test_an_examination_of_both_phases_names_its_late_one(study: str) -> None:
    """Review 44: an examination's name of both phases ("W WO") read as plain, and its excretory series was read
    as non-contrast without a caution: a caution now (its denial keeps even "Delayed 10 min" from a skip)."""
    for description in ("Delayed 1.25mm", "Delayed 10 min", "Spaet 10 min", "Tardiva 10 min"):
        found = contrast_evidence("", description, (("Study Description", study),))
        assert found is not None and not found.clear, (description, found)
    found = contrast_evidence("", "Axial 5mm", (("Study Description", study),))
    assert found is not None and not found.clear, found


@pytest.mark.parametrize("description", ["Delayed phase II", "Late phase III 5mm", "Phase II late", "Spaet Phase II",
                                         "Delayed phase 2", "Late phase 3 5mm"])
def test_a_phase_s_number_is_its_place(description: str) -> None:
    """Review 44: "phase II" is a phase's place as "phase 2" is, not a late phase."""
    assert contrast_evidence("", description) is None


@pytest.mark.parametrize("study", ["CT UROGRAM - CONTRAST ALLERGY PREMEDICATED", "CT UROGRAM NONCON ONLY",
                                   "CT Urogram (stone protocol only)", "CT ABD PEL WO IV CONTRAST W ORAL",
                                   "CT ABDOMEN PELVIS WITH ORAL CONTRAST ONLY", "CT ABD PELVIS W ORAL WO IV"])
def test_a_urography_beside_a_denial_says_nothing_of_its_series(study: str) -> None:
    """Which of its phases a series is, such a name cannot say, nor does oral contrast alone put any in the urinary
    tract: the series' own words decide, and a denial in the name makes a caution of a late phase they name."""
    assert contrast_evidence("", "Delayed 1.25mm", (("Study Description", study),)) is None
    assert contrast_evidence("", "Axial 5mm", (("Study Description", study),)) is None
    found = contrast_evidence("", "Delayed 10 min", (("Study Description", study),))
    assert found is not None and found.clear is ("ONLY" in study and "ORAL" in study), found


@pytest.mark.parametrize("study", [
    "CT KUB POST ESWL", "CT RENAL STONE POST OP", "CT ABD PELVIS WO CONTRAST POST ESWL", "CT KUB POST URETEROSCOPY",
    "TC ABDOMEN SIN CONTRASTE CON PROTOCOLO LITIASIS", "TC URO-TC SENZA MDC CON MPR",
    "TC ABDOME SEM CONTRASTE COM RECONSTRUCOES", "CT ABD PEL W ORAL", "NIERE NATIV MIT KM-ALLERGIE", "Abdomen 50 cm",
])
def test_a_stone_follow_up_or_a_with_of_something_else_names_no_contrast(study: str) -> None:
    """Review 45: "POST" after a treatment, "con"/"com" before a reconstruction or a protocol, oral contrast alone
    and "cm" had read as an examination with contrast: its delayed series skipped, the others cautioned."""
    for description in ("Delayed 3mm", "Late 5mm", "Axial 3mm", "Delayed prone"):
        assert contrast_evidence("", description, (("Study Description", study),)) is None, description


@pytest.mark.parametrize("study", [
    "CT ABD PELVIS WITHOUT CONTRAST NO ORAL", "CT KUB NO ORAL", "CT ABDOMEN PELVIS W/O IV CON W/O ORAL CON",
    "CT KUB W/O CON PRE OP", "CT ABD PEL WO CON NOT PREGNANT", "TC ADDOME (E PELVI) SENZA MEZZO DI CONTRASTO",
    "TC (DE) ABDOMEN (Y PELVIS) SIN MEDIO DE CONTRASTE", "TC DE ABDOME SEM MEIO DE CONTRASTE",
    "SCANNER ABDOMINO-PELVIEN SANS PRODUIT DE CONTRASTE", "CT ABDOMEN PELVIS WITHOUT INTRAVENOUS CONTRAST",
    "CT ABD PEL WITHOUT IV/PO CONTRAST", "CT Abdomen ohne i.v. KM", "CT abdomen zonder intraveneus contrast",
    "BATIN BT KONTRAST MADDE VERILMEDEN", "CT ABD PEL WITH NO CONTRAST", "CT KUB PRE/POST ESWL",
])
def test_a_plain_order_in_other_words_skips_nothing_and_cautions_no_plain_series(study: str) -> None:
    """Review 46: orders without contrast in words the rule did not know ("SENZA MEZZO DI CONTRASTO", "NO ORAL",
    "ohne i.v. KM", "WITH NO CONTRAST") skipped a "Delayed" series and cautioned the plain ones. An examination's
    name never skips; a late phase the series' own words name is cautioned where the name denies contrast."""
    context = (("Study Description", study),)
    for description in ("Delayed", "Late 5mm", "10 min", "Axial 5mm"):
        assert contrast_evidence("", description, context) is None, description
    found = contrast_evidence("", "Delayed 10 min", context)
    assert found is not None and not found.clear, found


@pytest.mark.parametrize(("description", "clear"), [
    ("CTU DELAYED NO ORAL AGENT", True), ("Uro 10 min no oral agent", True), ("CTU DELAYED NO ORAL CONTRAST", False),
    ("SIN MEDIO DE CONTRASTE / CON MEDIO DE CONTRASTE", False), ("SENZA MEZZO DI CONTRASTO CON MEZZO DI CONTRASTO", False),
])
def test_a_denial_of_something_else_leaves_a_late_phase_or_a_second_phase_said(description: str, clear: bool) -> None:
    """Review 47: "no oral agent" had read as no contrast, and a denial of a medium covered the "with contrast"
    after it: late and both-phase series were read as plain without a word."""
    found = contrast_evidence("", description)
    assert found is not None and found.clear is clear, found
    study = (("Study Description", "TC ADDOME SENZA MEZZO DI CONTRASTO CON MDC EV"),)
    found = contrast_evidence("", "Axial 1.25", study)
    assert found is not None and not found.clear, found
