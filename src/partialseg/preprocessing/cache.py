"""The prepared cache: every case preprocessed once, stored compressed (blosc2) or memory-mappable.

Cache layout written by ``prepare_dataset`` (``OUT/``; ``.b2nd`` files with ``storage="blosc2"``,
the default, ``.npy`` with ``"npy"``: preprocessing.storage says why)::

    prepared.json            config (concrete spacing), storage, normalisation stats, labels, source, cases
    <id>_image.b2nd|.npy     (1, X, Y, Z) float32, RAS, target spacing, normalised
    <id>_label.b2nd|.npy     (X, Y, Z) int16 partial labels (unannotated organs are 0)
    <id>_ref.b2nd|.npy       (X, Y, Z) int16 full reference labels (only if the dataset has them)
    <id>_locs.npz            key "<class index>" -> (K, 3) int32 voxel indices, K <= 2000, one per
                             annotated class (empty (0, 3) if the class is annotated but absent)

Cases are preprocessed by ``workers`` processes (nnU-Net's ``-np``): each writes its own files, the
description is written once all are done.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from partialseg.data.checks import warn_if_not_ct
from partialseg.errors import InputError, OutputExistsError, PartialsegError
from partialseg.io import Volume, atomic_output_dir, read_json, write_json_atomic
from partialseg.labels import LabelSpace
from partialseg.preprocessing.config import PreprocessConfig, Shape
from partialseg.preprocessing.geometry import GridMeta, median_spacing
from partialseg.preprocessing.normalisation import NormalizationStats, compute_normalization_stats
from partialseg.preprocessing.pipeline import LOCATIONS_PER_CLASS, class_locations, preprocess_image, preprocess_label
from partialseg.preprocessing.storage import STORAGES, SUFFIX, open_array, save_array
from partialseg.progress import progress as progress_bar

if TYPE_CHECKING:
    from partialseg.data.dataset import PartialDataset

PREPARED_JSON = "prepared.json"
CACHE_FORMAT = "partialseg-prepared"
CACHE_VERSION = 1


def _case_seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def resolved_config(ds: PartialDataset, config: PreprocessConfig) -> PreprocessConfig:
    """``config`` as ``prepare_dataset`` applies it to ``ds``: a concrete spacing, and the z-score
    normalisation for a dataset whose ``channel_names`` is not CT."""
    spacing = config.spacing if config.spacing is not None else median_spacing(ds)
    # channel_names decides: the CT rules clip Hounsfield units, which an MR image does not have
    return replace(config, spacing=spacing, normalization=config.normalization if ds.is_ct else "zscore")


def prepare_dataset(
    dataset: PartialDataset | str | Path,
    out: str | Path,
    config: PreprocessConfig = PreprocessConfig(),
    *,
    progress: bool = True,
    storage: str = "blosc2",
    workers: int = 0,
) -> Path:
    """Validate, preprocess and cache every case of a ``PartialDataset`` (or its folder) in ``out``.

    Writes into a temporary sibling renamed into place at the end, so ``out`` is either complete
    or absent. Refuses an existing ``out``. Any bad case (NaN image, label grid mismatch, label
    value outside the label space) aborts with an ``InputError`` naming its file. Label voxels
    carrying a class outside the case's annotated set are set to 0 in the cache (counted in
    ``prepared.json`` as ``unannotated_voxels_zeroed``); the source files are never modified.
    ``storage``: ``"blosc2"`` or ``"npy"``; ``workers``: processes (0: :func:`default_workers`).
    """
    from partialseg.data.dataset import PartialDataset

    if storage not in STORAGES:
        raise PartialsegError(f"unknown cache storage {storage!r}; choose from {list(STORAGES)}")
    ds = dataset if isinstance(dataset, PartialDataset) else PartialDataset.load(dataset)
    out = Path(out)
    if out.exists():  # fail before the long work; atomic_output_dir checks again at the end
        raise OutputExistsError(out)
    cfg = resolved_config(ds, config)
    stats = compute_normalization_stats(ds, progress=progress) if cfg.normalization == "nnunet" else None
    space = ds.label_space
    workers = int(workers) or default_workers(ds)
    with atomic_output_dir(out) as tmp:
        jobs = [(case, space, ds.is_ct, cfg, stats, tmp, storage) for case in ds.cases]
        bar = progress_bar(total=len(jobs), desc="prepare", unit="case", enabled=progress)
        if workers <= 1:
            records = []
            for job in jobs:
                records.append(_prepare_case(*job))
                bar.update(1)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn, not fork: the caller may hold torch's OpenMP threads, which a forked child can deadlock on
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_prepare_case, *job): i for i, job in enumerate(jobs)}
                done: dict[int, dict[str, Any]] = {}
                for f in as_completed(futures):
                    done[futures[f]] = f.result()  # a worker's InputError surfaces here, naming its file
                    bar.update(1)
            records = [done[i] for i in range(len(jobs))]
        bar.close()
        write_json_atomic(
            {
                "format": CACHE_FORMAT,
                "version": CACHE_VERSION,
                "storage": storage,
                "source": str(Path(ds.root).resolve()),
                "config": cfg.to_dict(),
                "stats": None if stats is None else stats.to_dict(),
                "labels": space.to_dataset_json(),
                "locations_per_class": LOCATIONS_PER_CLASS,
                "cases": records,
            },
            tmp / PREPARED_JSON,
        )
    return out


#: source images above this size (bytes, compressed on disk) are worth a process each
_PARALLEL_FROM_BYTES = 8 * 2**20


def default_workers(ds: PartialDataset) -> int:
    """One process per CPU core (at most 8, nnU-Net's default for 3d_fullres) for CT-sized images; one
    for small ones (phantoms, tests), where starting processes costs more than it saves."""
    import os

    if len(ds.cases) < 2 or Path(ds.cases[0].image).stat().st_size < _PARALLEL_FROM_BYTES:
        return 1
    return max(1, min(8, os.cpu_count() or 1, len(ds.cases)))


def _prepare_case(case: Any, space: LabelSpace, is_ct: bool, cfg: PreprocessConfig, stats: NormalizationStats | None,
                  tmp: Path, storage: str) -> dict[str, Any]:
    """Preprocess and write one case; returns its record for ``prepared.json``."""
    image = case.load_image()
    if is_ct:
        warn_if_not_ct(image.array, image.path)
    label = case.load_label(space, image)
    reference = case.load_reference(space, image)
    img, meta = preprocess_image(image, cfg, stats, cfg.spacing)
    del image
    # Phi is authoritative (methods.md): a value of an unannotated class contradicts it and
    # would be taught as that organ; it becomes 0 here and the count is recorded
    stray = ~np.isin(label.array, np.array([0, *case.annotated], dtype=np.int16))
    n_stray = int(stray.sum())
    if n_stray:
        label = Volume(np.where(stray, np.int16(0), label.array), label.affine, label.path)
    lab = preprocess_label(label, meta, cfg)
    save_array(tmp / f"{case.case_id}_image", img, storage)
    save_array(tmp / f"{case.case_id}_label", lab, storage)
    if reference is not None:
        save_array(tmp / f"{case.case_id}_ref", preprocess_label(reference, meta, cfg), storage)
    locs = class_locations(lab, case.annotated, seed=_case_seed(case.case_id))
    np.savez(tmp / f"{case.case_id}_locs.npz", **{str(c): v for c, v in locs.items()})
    return {
        "id": case.case_id,
        "annotated": space.names_of(case.annotated),
        "group": case.group,
        "shape": list(meta.shape),
        "has_reference": reference is not None,
        "source_image": str(case.image),
        "source_label": None if case.label is None else str(case.label),
        "source_reference": None if case.reference is None else str(case.reference),
        "num_locations": {space.name(c): int(len(v)) for c, v in locs.items()},
        "unannotated_voxels_zeroed": n_stray,
        "image_min": float(np.min(img)),
        "meta": meta.to_dict(),
    }


def _open_cached(path: Path, storage: str, shape: tuple[int, ...], dtype: Any) -> Any:
    f = Path(str(path) + SUFFIX[storage])
    if not f.exists():
        raise InputError(f, "cached array is missing; run `partialseg prepare` again")
    try:
        arr = open_array(path, storage)
    except Exception as e:  # numpy's and blosc2's errors on a damaged file differ; both mean the same here
        raise InputError(f, f"cannot read the cached array ({type(e).__name__}: {e}); run `partialseg prepare` again") from None
    if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise InputError(
            f,
            f"cached array is {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {tuple(shape)}; "
            "run `partialseg prepare` again",
        )
    return arr


@dataclass(eq=False)
class PreparedCase:
    """One cached case. Arrays are opened on first access (read-only; memory maps, or
    :class:`~partialseg.preprocessing.storage.Blosc2Array` that decompress what a slice touches).

    ``image``: (1, X, Y, Z) float32; ``label``: (X, Y, Z) int16 partial labels; ``reference``:
    (X, Y, Z) int16 or ``None``; ``class_locations``: ``{class index: (K, 3) int32}`` for each
    annotated class. Pickling (e.g. into DataLoader workers) drops the open maps, not the paths.
    """

    case_id: str
    annotated: frozenset[int]
    group: str | None
    meta: GridMeta
    root: Path
    has_reference: bool = False
    storage: str = "npy"
    image_min: float | None = None  # the padding value of crops beyond the border (None: caches from before it was recorded)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def shape(self) -> Shape:
        return self.meta.shape

    def path(self, kind: str) -> Path:
        """``kind``: ``"image"``, ``"label"``, ``"ref"`` (the storage's suffix) or ``"locs"`` (.npz)."""
        return self.root / f"{self.case_id}_{kind}{'.npz' if kind == 'locs' else SUFFIX[self.storage]}"

    def _array(self, kind: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        if kind not in self._cache:
            self._cache[kind] = _open_cached(self.root / f"{self.case_id}_{kind}", self.storage, shape, dtype)
        return self._cache[kind]

    @property
    def image(self) -> np.ndarray:
        return self._array("image", (1, *self.shape), np.float32)

    @property
    def label(self) -> np.ndarray:
        return self._array("label", self.shape, np.int16)

    @property
    def reference(self) -> np.ndarray | None:
        return self._array("ref", self.shape, np.int16) if self.has_reference else None

    @property
    def class_locations(self) -> dict[int, np.ndarray]:
        if "locs" not in self._cache:
            path = self.path("locs")
            if not path.exists():
                raise InputError(path, "cached foreground locations are missing; run `partialseg prepare` again")
            try:
                with np.load(path) as z:
                    locs = {int(k): np.asarray(z[k], dtype=np.int32).reshape(-1, 3) for k in z.files}
            except (OSError, ValueError, EOFError, KeyError) as e:
                raise InputError(path, f"cannot read the cached locations ({type(e).__name__}: {e})") from None
            self._cache["locs"] = locs
        return self._cache["locs"]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


@dataclass
class PreparedDataset:
    """A cache written by ``prepare_dataset`` (``PreparedDataset.load(root)``)."""

    root: Path
    label_space: LabelSpace
    config: PreprocessConfig
    stats: NormalizationStats | None
    cases: list[PreparedCase]
    source: Path | None = None
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: str | Path) -> PreparedDataset:
        """Read ``prepared.json`` and open every case's image and label memory-mapped (header check)."""
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "prepared cache folder does not exist; run `partialseg prepare` first")
        pjson = root / PREPARED_JSON
        info = read_json(pjson)
        if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT:
            raise InputError(pjson, "not a partialseg prepared cache (missing 'format': 'partialseg-prepared')")
        if info.get("version") != CACHE_VERSION:
            raise InputError(
                pjson, f"cache version {info.get('version')!r}, this partialseg reads {CACHE_VERSION}; run prepare again"
            )
        try:
            space = LabelSpace.from_dataset_json(info["labels"], pjson)
            config = PreprocessConfig.from_dict(info["config"])
            stats = None if info.get("stats") is None else NormalizationStats.from_dict(info["stats"])
            storage = str(info.get("storage", "npy"))  # caches from before blosc2 have no such key
            if storage not in STORAGES:
                raise InputError(pjson, f"unknown storage {storage!r}; run prepare again")
            cases = []
            for rec in info["cases"]:
                case = PreparedCase(
                    case_id=str(rec["id"]),
                    annotated=space.indices(rec["annotated"], pjson),
                    group=rec.get("group"),
                    meta=GridMeta.from_dict(rec["meta"]),
                    root=root,
                    has_reference=bool(rec.get("has_reference", False)),
                    storage=storage,
                    image_min=None if rec.get("image_min") is None else float(rec["image_min"]),
                )
                case.image, case.label, case.reference  # noqa: B018 - opens the maps: fails now, naming the file
                cases.append(case)
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, PartialsegError) as e:
            raise InputError(pjson, f"corrupt cache description ({type(e).__name__}: {e}); run prepare again") from None
        if config.spacing is None:
            raise InputError(pjson, "config has no concrete spacing; run prepare again")
        source = info.get("source")
        return cls(root, space, config, stats, cases, None if source is None else Path(source), info)

    def case(self, case_id: str) -> PreparedCase:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KeyError(f"no case {case_id!r} in {self.root}")

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)


# ---- one cache per dataset and preprocessing, shared by runs ----------------------------------

CACHE_KEY_JSON = "cache_key.json"
_WAIT_S = 5.0


def cache_key(ds: PartialDataset, config: PreprocessConfig, storage: str = "blosc2") -> dict[str, Any]:
    """What a cache depends on: the resolved preprocessing, the storage, the label space, and every
    source file's name, size and modification time (a file edited in place makes a new cache, never a
    stale one). ``npy`` adds no key, so that caches from before blosc2 keep their names."""
    def stat(path: Path | None) -> list[Any] | None:
        if path is None:
            return None
        st = Path(path).stat()
        return [Path(path).name, st.st_size, st.st_mtime_ns]

    return {
        "version": CACHE_VERSION,
        "dataset": str(Path(ds.root).resolve()),
        "config": resolved_config(ds, config).to_dict(),
        "labels": ds.label_space.to_dataset_json(),
        "cases": [[c.case_id, sorted(ds.label_space.names_of(c.annotated)), stat(c.image), stat(c.label), stat(c.reference)]
                  for c in ds.cases],
        **({} if storage == "npy" else {"storage": storage}),
    }


def default_cache_root(dataset: Path) -> Path:
    """``<dataset>.partialseg-cache`` beside the dataset folder (the dataset itself is never written)."""
    dataset = Path(dataset).absolute()
    return dataset.parent / f"{dataset.name}.partialseg-cache"


def shared_cache(
    dataset: Path | str, config: PreprocessConfig, *, cache_root: Path | str | None = None, build: bool = True,
    progress: bool = True, storage: str = "blosc2", workers: int = 0,
) -> Path:
    """The prepared cache of ``dataset`` under ``config``, built on first use and reused by every run.

    It lives in ``cache_root`` (default :func:`default_cache_root`) as ``<spacing>_<normalisation>_<hash>``,
    the hash of :func:`cache_key`. One process builds it (under the folder's lock; the others wait),
    atomically, so a killed build leaves nothing that is taken for a cache. ``build=False`` only
    names the folder (DDP ranks other than 0).
    """
    import hashlib
    import json
    import time

    from partialseg.data.dataset import PartialDataset
    from partialseg.locking import FolderInUseError, folder_lock

    ds = PartialDataset.load(dataset)
    key = cache_key(ds, config, storage)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cfg = key["config"]
    name = f"{'x'.join(f'{s:g}' for s in cfg['spacing'])}mm_{cfg['normalization']}_{digest}"
    out = Path(cache_root) / name if cache_root is not None else default_cache_root(Path(dataset)) / name
    if not build or (out / PREPARED_JSON).exists():
        return out
    waited = False
    while True:
        try:
            with folder_lock(out):
                if not (out / PREPARED_JSON).exists():
                    if out.exists():  # not ours to judge: a folder without prepared.json is no cache
                        raise OutputExistsError(out, "exists but holds no prepared.json; remove it")
                    prepare_dataset(ds, out, PreprocessConfig.from_dict(cfg), progress=progress, storage=storage, workers=workers)
                    write_json_atomic(key, out / CACHE_KEY_JSON)
            return out
        except FolderInUseError:
            if not waited:
                import logging

                logging.getLogger("partialseg").info("waiting for another process to build the cache %s", out)
                waited = True
            time.sleep(_WAIT_S)
