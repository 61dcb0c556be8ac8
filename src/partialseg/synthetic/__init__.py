"""Synthetic abdominal CT phantoms: the 15 AMOS organs inside unlabelled anatomical context.

Every case is drawn from one random generator seeded by the case seed, so the same seed
gives bit-identical arrays. The anatomy is written in a *template frame* (mm; x toward the
patient's right, y anterior, z superior; y = 0 at the centre of the first lumbar vertebral
body, z = 0 near the renal hila), then mapped to world RAS+ mm by a per-case scale and shift.

How a case is made (:func:`make_phantom`):

1. Per-case parameters (:mod:`.anatomy.builder`): body habitus (subcutaneous and visceral fat),
   global scale, organ scales and positions (grouped, so that e.g. an adrenal follows its kidney),
   sex (prostate or uterus), contrast phase (non-contrast or portal-venous), HU of every tissue
   (:mod:`.tissues`).
2. Painting (:mod:`.anatomy`) on an internal grid (:mod:`.grid`) ``oversample`` times finer than
   the output, in order of priority: body outline, fat, muscle wall, lungs and heart above the
   diaphragm, spine, ribs, pelvis, muscles, bowel, unlabelled vessels, then the labelled organs
   (later paints win, so neighbours indent each other). Each voxel carries one tissue (for its HU)
   and one label.
3. A smooth random displacement field warps tissue and labels together (:mod:`.render`).
4. HU from tissue + per-tissue texture, a Gaussian point-spread blur, block averaging to the
   output grid (partial volume), correlated Gaussian noise. Labels are the majority over the
   sub-voxels of each output voxel (:mod:`.render`).

Organs are superellipsoids with low-frequency surface waves, or tubes swept along Catmull-Rom
centrelines, rasterised with one Euclidean distance transform per tube set (:mod:`.shapes`).
:mod:`.mr` turns a CT phantom into an MR-like image; :mod:`.dataset` writes a dataset of phantoms.

Grids of more than :data:`~partialseg.synthetic.grid.EXACT_MAX_VOXELS` (2^23) fine voxels, such as
512x512x160, take shortcuts that keep a case to seconds: smooth random fields drawn coarser and
interpolated (:func:`.grid.smooth_field`), tube centrelines searched on a coarser grid and refined along
the centreline (:mod:`.tube_search`), the image blurred and its noise drawn plane by plane
(:mod:`.streaming`). They draw from the random stream differently, so a large case is another patient
than the exact path would have drawn, of the same kind. Every smaller grid, both presets included, gives
exactly the arrays it gave before the shortcuts existed.
"""

from __future__ import annotations

from partialseg.synthetic.config import PRESETS, Phantom, PhantomConfig, case_seed
from partialseg.synthetic.dataset import MODALITIES, synthesize_dataset
from partialseg.synthetic.generator import make_phantom
from partialseg.synthetic.mr import mr_intensities
from partialseg.synthetic.tissues import TISSUES

__all__ = ["MODALITIES", "PRESETS", "TISSUES", "Phantom", "PhantomConfig", "case_seed", "make_phantom", "mr_intensities",
           "synthesize_dataset"]
