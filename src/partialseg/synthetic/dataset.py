"""A synthetic dataset on disk: :func:`synthesize_dataset` writes phantoms in the nnU-Net v2 raw layout."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from partialseg.errors import PartialsegError
from partialseg.synthetic.config import PhantomConfig, case_seed
from partialseg.synthetic.generator import make_phantom
from partialseg.synthetic.mr import mr_intensities

#: what ``synthesize_dataset(modality=...)`` writes: HU images, or MR-like images made from them
MODALITIES = ("CT", "MR")


def synthesize_dataset(out: Path, *, cases: int, seed: int, config: PhantomConfig, modality: str = "CT") -> Path:
    """Write ``cases`` phantoms as a new nnU-Net v2 raw dataset at ``out`` (refused if it exists).

    Case ``i`` is ``make_phantom(case_seed(seed, i), config)`` and is named ``synth_{i:04d}``;
    ``modality="MR"`` writes MR-like images (:func:`mr_intensities`) with ``channel_names`` {"0": "MR"}.
    """
    from partialseg.data.dataset import dataset_json, write_dataset_json
    from partialseg.io import atomic_output_dir, save_volume
    from partialseg.labels import LabelSpace
    from partialseg.progress import progress as progress_bar

    if modality not in MODALITIES:
        raise PartialsegError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")

    if cases < 1:
        raise PartialsegError(f"need at least one case, got {cases}")
    space = LabelSpace.named("amos15")
    with atomic_output_dir(Path(out)) as tmp:
        for i in progress_bar(range(cases), desc="phantom", unit="case"):
            cid = f"synth_{i:04d}"
            ph = make_phantom(case_seed(seed, i), config)
            image = ph.image if modality == "CT" else mr_intensities(ph.image, case_seed(seed, i))
            save_volume(image, ph.affine, tmp / "imagesTr" / f"{cid}_0000.nii.gz")
            save_volume(ph.labels, ph.affine, tmp / "labelsTr" / f"{cid}.nii.gz")
        meta = dataset_json(
            space, cases, name="partialseg_phantom", modality=modality,
            extra={"partialseg": {"generator": "phantom", "seed": int(seed), "config": asdict(config), "modality": modality}},
        )
        write_dataset_json(tmp, meta)
    return Path(out)
