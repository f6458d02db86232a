"""The coded concepts the SEG and the SR use, chosen once and documented here.

What a stone is, coded
----------------------
The segment and every SR finding say *calculus* (SNOMED CT 56381008, the
morphologic abnormality) *of the urinary system* (SNOMED CT 122489005, as the
segment's anatomic region and the SR's finding site), under the segmentation
category *Morphologically Abnormal Structure* (SNOMED CT 49755003).

Why not 95570007 "Kidney stone": the model finds stones in the kidney, the
ureter and the bladder, so a kidney-only disorder code would be wrong for a
ureteric or bladder stone; and a segmentation's property type describes *what
the voxels are* (a structure), for which DICOM's "Morphologically Abnormal
Structure" category expects a morphologic abnormality (CID 7159 style), not a
disorder (a diagnosis). "Calculus" located in the "Urinary system" is exactly
"urinary calculus", and the SR can add the side through the finding site's
laterality without inventing a code per site.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

CALCULUS = CodedConcept("56381008", "SCT", "Calculus")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
URINARY_SYSTEM = CodedConcept("122489005", "SCT", "Urinary system")

ARTIFICIAL_INTELLIGENCE = codes.DCM.ArtificialIntelligence
IMAGING_PROCEDURE = codes.SCT.ImagingProcedure

DIAMETER = codes.SCT.Diameter
LONG_AXIS = codes.SCT.LongAxis
"""A stone's largest diameter on the axial image where it is largest (CID 7470, linear measurements)."""
VOLUME = codes.SCT.Volume
ATTENUATION_COEFFICIENT = codes.DCM.AttenuationCoefficient
MEAN = codes.SCT.Mean
MAXIMUM = codes.SCT.Maximum
MILLIMETER = codes.UCUM.Millimeter
CUBIC_MILLIMETER = codes.UCUM.CubicMillimeter
HOUNSFIELD_UNIT = codes.UCUM.HounsfieldUnit

PRESENT = codes.SCT.Present
NOT_DETECTED = hd.sr.CodedConcept("260415000", "SCT", "Not detected")
"""A negative result: the algorithm did not find one (not "Absent": it may still be there)."""

LATERALITY = {
    "left": codes.SCT.Left,
    "right": codes.SCT.Right,
}
"""Finding-site laterality by ``Stone.side``; a stone near the midline ('midline') has none."""
