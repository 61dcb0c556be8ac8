"""Cache format: uncompressed ``.npy`` memory maps (partialseg today) against nnU-Net v2's blosc2 ``.b2nd``.

partialseg's cache stores each case as ``<case>_image.npy`` float32 (1, X, Y, Z) and ``<case>_label.npy``
int16 (X, Y, Z), opened with ``np.load(mmap_mode="r")``; the loader crops random patches from them.
nnU-Net v2 stores the same arrays as blosc2 N-d arrays (``nnUNetDatasetBlosc2``: ZSTD, clevel 8, blosc2's
default shuffle, one thread, blocks and chunks from ``comp_blosc2_params``: the block a power-of-two
tile of the patch that fits 80 % of a 32 KiB L1 cache, the chunk a tiling of blocks up to 80 % of
1.375 MiB or 1.5× the patch; re-implemented below as ``nnunet_blosc2_layout``), and slicing an opened
``.b2nd`` decompresses only the blocks the patch touches. This script measures both on CT-like
volumes, in one process:

- N cases of 512×512×160 at 0.8×0.8×2.5 mm: partialseg's own phantom (``partialseg.synthetic``, oversample 1,
  1 mm blur, its default noise: 15 HU sd scaled per case by 0.75–1.3, plus its tissue textures) or,
  with ``--body simple``, an ellipse of 40 HU soft tissue with ellipsoid organs and a 700 HU spine in
  -1000 HU air, Gaussian noise of ``--noise`` HU sd everywhere, rounded to whole HU. Intensities are normalised with
  partialseg's default (``tct``: clip to [-1024, 1024] HU, scale to [0, 1], float32); the labels are
  int16. Compression depends on the content, so the noise in the air matters: it is reported.
- Each case written as (a) ``np.save`` float32 image + int16 label (today), (b) blosc2 with nnU-Net's
  parameters, float32 image and the label as int16 (what nnU-Net writes) and as uint8, laid out for
  each patch size, (c) ``np.save`` float16 image with the int16 or a uint8 label (unless
  ``--no-float16``). Disk bytes per voxel, MB per case and write time (buffered: the call, not the
  flush to disk). For comparison only, the size of the image normalised nnU-Net's way (foreground
  0.5/99.5 % clip, z-score; air becomes one constant) in blosc2.
- K random patches per patch size (default 192×192×64 and 128×128×128, the same origins for every
  format; image converted to float32 as the sampler does, label as stored), image and label timed
  separately and added: warm (page cache full after writing, arrays opened once, as a loader worker
  keeps them) and cold (before every patch the case's file is flushed and dropped from the page cache
  with ``posix_fadvise(POSIX_FADV_DONTNEED)`` and opened again; the drop is checked against
  ``/proc/meminfo``; the virtual disk's host may still cache). ms per patch and the ratio to the
  float32 memmap.
- The full-volume read per format (``np.load`` / ``blosc2.open(...)[:]``), warm and cold.

Prints Markdown tables with ratios against the memmap reference and a conclusion computed from them.
blosc2 is optional for partialseg; the script exits with a message when it is missing.

    python benchmarks/cache_format.py --cases 2 --patches 200
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from partialseg.preprocessing.storage import CLEVEL  # noqa: E402 - nnU-Net v2's parameters, as the cache uses them
from partialseg.preprocessing.storage import blosc2_layout as nnunet_blosc2_layout  # noqa: E402


def simple_body(shape, spacing, noise, rng):
    """HU volume and int16 labels: 40 HU ellipse body, five ellipsoid organs, a 700 HU spine, -1000 HU air."""
    x, y, z = (((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s) for n, s in zip(shape, spacing))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    hu = np.full(shape, -1000.0, np.float32)
    label = np.zeros(shape, np.int16)
    body = (x / 170.0) ** 2 + (y / 125.0) ** 2 <= 1.0
    hu[np.broadcast_to(body, shape)] = 40.0
    organs = (  # (label, HU, centre mm, semi-axes mm)
        (1, 60.0, (-60, -10, 60), (80, 70, 90)),  # liver
        (2, 45.0, (80, 20, 80), (35, 45, 50)),  # spleen
        (3, 30.0, (-65, 50, -20), (28, 25, 55)),  # kidney right
        (4, 30.0, (65, 50, -20), (28, 25, 55)),  # kidney left
        (5, 35.0, (50, -40, 40), (50, 35, 40)),  # stomach
    )
    for k, v, (cx, cy, cz), (ax, ay, az) in organs:
        m = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0
        hu[m] = v
        label[m] = k
    spine = np.broadcast_to((x / 18.0) ** 2 + ((y - 85.0) / 18.0) ** 2 <= 1.0, shape)
    hu[spine] = 700.0
    hu += rng.normal(0.0, noise, shape).astype(np.float32)
    return np.rint(hu), label  # whole HU, as CT is stored


def drop_cache(path: Path) -> None:
    """Write the file's dirty pages out and drop its pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 160])
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 2.5])
    ap.add_argument("--patches", type=int, default=200, help="random patches per patch size and format (K)")
    ap.add_argument("--patch-sizes", nargs="+", default=["192x192x64", "128x128x128"])
    ap.add_argument("--body", choices=["phantom", "simple"], default="phantom")
    ap.add_argument("--noise", type=float, default=15.0, help="--body simple: noise sd, HU")
    ap.add_argument("--no-float16", action="store_true", help="skip the float16 .npy variant")
    ap.add_argument("--no-cold", action="store_true", help="skip the reads after dropping the page cache")
    ap.add_argument("--nnunet-mb", type=float, default=23.0, help="nnU-Net's blosc2 MB/case to compare with")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    try:
        import blosc2
    except ImportError:
        sys.exit("benchmarks/cache_format.py needs blosc2 (not a partialseg dependency): pip install blosc2")

    from partialseg.preprocessing import PreprocessConfig
    from partialseg.preprocessing.normalisation import normalize_intensities

    blosc2.set_nthreads(1)  # as nnU-Net: one thread per loader worker
    cparams = {"codec": blosc2.Codec.ZSTD, "clevel": CLEVEL, "nthreads": 1}
    dparams = {"nthreads": 1}
    shape = tuple(args.shape)
    nvox = math.prod(shape)
    patches = [tuple(int(v) for v in p.lower().split("x")) for p in args.patch_sizes]
    for p in patches:
        if len(p) != 3 or any(a > b for a, b in zip(p, shape)):
            sys.exit(f"patch size {p} must be three numbers no larger than the shape {shape}")
    pname = {p: "×".join(map(str, p)) for p in patches}

    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    root = Path(tmp.name)
    # arrays: key -> (kind, per-case paths); kinds "npy" or "b2nd"; images are read as float32
    files: dict[str, list[Path]] = {}
    write_s: dict[str, float] = {}
    extra_bytes = 0  # the nnU-Net-normalised image, size only
    content = []

    def add(key: str, path: Path, seconds: float) -> None:
        files.setdefault(key, []).append(path)
        write_s[key] = write_s.get(key, 0.0) + seconds

    t_make = 0.0
    for i in range(args.cases):
        t = time.perf_counter()
        if args.body == "phantom":
            from partialseg.synthetic import PhantomConfig, make_phantom

            ph = make_phantom(args.seed + i, PhantomConfig(shape=shape, spacing=tuple(args.spacing), oversample=1, blur_mm=1.0))
            hu, lab = ph.image.astype(np.float32), ph.labels.astype(np.int16)
            del ph
        else:
            hu, lab = simple_body(shape, args.spacing, args.noise, np.random.default_rng(args.seed + i))
        t_make += time.perf_counter() - t
        img, _ = normalize_intensities(hu, PreprocessConfig(), None)
        img = np.ascontiguousarray(img[None])
        air = hu < -900
        content.append((float(air.mean()), float(hu[air].std()) if air.any() else float("nan"),
                        float(np.mean((img == 0) | (img == 1))), bool(np.all(hu == np.rint(hu)))))
        fg = hu[lab > 0].astype(np.float64)
        lo, hi = np.percentile(fg, [0.5, 99.5])
        img_nn = ((np.clip(hu, lo, hi) - fg.mean()) / max(fg.std(), 1e-8)).astype(np.float32)[None]
        del hu, fg
        stem = root / f"case{i}"

        t = time.perf_counter()
        np.save(f"{stem}_image.npy", img)
        add("img_npy32", Path(f"{stem}_image.npy"), time.perf_counter() - t)
        t = time.perf_counter()
        np.save(f"{stem}_label.npy", lab)
        add("lab_npy16", Path(f"{stem}_label.npy"), time.perf_counter() - t)
        if not args.no_float16:
            t = time.perf_counter()
            np.save(f"{stem}_image16.npy", img.astype(np.float16))
            add("img_npy_f16", Path(f"{stem}_image16.npy"), time.perf_counter() - t)
            t = time.perf_counter()
            np.save(f"{stem}_label8.npy", lab.astype(np.uint8))
            add("lab_npy8", Path(f"{stem}_label8.npy"), time.perf_counter() - t)
        lab4 = {"int16": np.ascontiguousarray(lab[None]), "uint8": np.ascontiguousarray(lab[None].astype(np.uint8))}
        for p in patches:
            for key, arr, suffix in [(f"img_b2_{pname[p]}", img, "image"),
                                     *((f"lab_b2{dt}_{pname[p]}", a, f"label_{dt}") for dt, a in lab4.items())]:
                blocks, chunks = nnunet_blosc2_layout(arr.shape, p, arr.itemsize)
                path = Path(f"{stem}_{suffix}_{pname[p]}.b2nd")
                t = time.perf_counter()
                blosc2.asarray(arr, urlpath=str(path), chunks=chunks, blocks=blocks, cparams=cparams, mmap_mode="w+")
                add(key, path, time.perf_counter() - t)
                if i == 0:
                    print(f"blosc2 layout for {pname[p]}, {arr.dtype}: blocks {blocks}, chunks {chunks}", file=sys.stderr)
        blocks, chunks = nnunet_blosc2_layout(img_nn.shape, patches[0], 4)
        path = Path(f"{stem}_image_nnunetnorm.b2nd")
        blosc2.asarray(img_nn, urlpath=str(path), chunks=chunks, blocks=blocks, cparams=cparams, mmap_mode="w+")
        extra_bytes += path.stat().st_size
        path.unlink()
        del img, img_nn, lab, lab4
        print(f"case {i + 1}/{args.cases} made and written", file=sys.stderr, flush=True)
    print(f"{args.cases} {args.body} cases of {shape} made in {t_make:.0f} s", file=sys.stderr)

    size = {k: sum(p.stat().st_size for p in v) / args.cases for k, v in files.items()}

    def open_array(key: str, i: int):
        path = files[key][i]
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r")
        return blosc2.open(str(path), mode="r", mmap_mode="r", dparams=dparams)

    def crop(arr, lo, p, image: bool):
        sl = tuple(slice(a, a + s) for a, s in zip(lo, p))
        out = arr[(slice(None), *sl)] if arr.ndim == 4 else arr[sl]
        if isinstance(arr, np.ndarray):  # a view of the map: copy, as the sampler does
            return np.array(out, dtype=np.float32 if image else None)
        return out.astype(np.float32, copy=False) if image else out  # blosc2 returns a new array

    # the drop works if the page cache shrinks by about the files' size
    before = cached_mb()
    for v in files.values():
        for path in v:
            drop_cache(path)
    dropped = before - cached_mb()
    total_mb = sum(size.values()) * args.cases / 2**20
    print(f"page cache: dropping the {total_mb:.0f} MB of files freed {dropped:.0f} MB", file=sys.stderr)
    for v in files.values():  # warm again, as after writing
        for path in v:
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass

    # arrays each format reads: (image key, label key)
    def formats_for(p):
        fm = {"npy float32 + int16 (today)": ("img_npy32", "lab_npy16")}
        if not args.no_float16:
            fm["npy float16 + int16"] = ("img_npy_f16", "lab_npy16")
            fm["npy float16 + uint8"] = ("img_npy_f16", "lab_npy8")
        fm["blosc2 float32 + int16 (nnU-Net)"] = (f"img_b2_{pname[p]}", f"lab_b2int16_{pname[p]}")
        fm["blosc2 float32 + uint8"] = (f"img_b2_{pname[p]}", f"lab_b2uint8_{pname[p]}")
        return fm

    patch_ms: dict[tuple[str, tuple, str], float] = {}  # (array key, patch, warm|cold) -> ms per patch
    for p in patches:
        rng = np.random.default_rng(args.seed + 1000)
        picks = [(int(rng.integers(args.cases)), [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, p)])
                 for _ in range(args.patches)]
        keys = sorted({k for pair in formats_for(p).values() for k in pair})
        for key in keys:
            image = key.startswith("img")
            arrs = [open_array(key, i) for i in range(args.cases)]
            crop(arrs[0], picks[0][1], p, image)
            t = time.perf_counter()
            for i, lo in picks:
                crop(arrs[i], lo, p, image)
            patch_ms[key, p, "warm"] = (time.perf_counter() - t) / len(picks) * 1e3
            del arrs
            if not args.no_cold:
                total = 0.0
                for i, lo in picks:
                    drop_cache(files[key][i])
                    t = time.perf_counter()
                    a = open_array(key, i)
                    crop(a, lo, p, image)
                    del a
                    total += time.perf_counter() - t
                patch_ms[key, p, "cold"] = total / len(picks) * 1e3
                for path in files[key]:  # warm again for the next array's warm reads
                    with open(path, "rb") as f:
                        while f.read(1 << 24):
                            pass
            print(f"patches {pname[p]}: {key} done", file=sys.stderr, flush=True)

    full_s: dict[tuple[str, str], float] = {}
    for key in files:
        for state in ("warm", "cold") if not args.no_cold else ("warm",):
            total = 0.0
            for i in range(args.cases):
                path = files[key][i]
                if state == "cold":
                    drop_cache(path)
                t = time.perf_counter()
                a = np.load(path) if path.suffix == ".npy" else blosc2.open(str(path), mode="r", dparams=dparams)[:]
                total += time.perf_counter() - t
                del a
            full_s[key, state] = total / args.cases

    # ---- tables
    states = ("warm",) if args.no_cold else ("warm", "cold")
    ref_name = "npy float32 + int16 (today)"
    print(f"\n{args.cases} {args.body} cases of {'×'.join(map(str, shape))} ({nvox / 1e6:.1f} M voxels); air (< -900 HU) "
          f"{100 * np.mean([c[0] for c in content]):.0f} % of voxels, HU sd there {np.mean([c[1] for c in content]):.1f}; "
          f"{100 * np.mean([c[2] for c in content]):.1f} % of voxels clipped to exactly 0 or 1 by the tct normalisation; "
          f"HU {'whole numbers' if all(c[3] for c in content) else 'not whole numbers'}\n")
    head = "| format | disk B/voxel (image + label) | MB/case | × today | write s/case | full read s/case, warm |"
    if "cold" in states:
        head += " cold |"
    print(head)
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if "cold" in states else ""))
    disk = {}
    p0 = patches[0]
    for name, (ki, kl) in formats_for(p0).items():
        b = size[ki] + size[kl]
        disk[name] = b
        line = (f"| {name} | {b / nvox:.2f} ({size[ki] / nvox:.2f} + {size[kl] / nvox:.3f}) | {b / 1e6:.1f} | "
                f"{b / disk[ref_name]:.2f} | {write_s[ki] / args.cases + write_s[kl] / args.cases:.2f} | "
                f"{full_s[ki, 'warm'] + full_s[kl, 'warm']:.2f} |")
        if "cold" in states:
            line += f" {full_s[ki, 'cold'] + full_s[kl, 'cold']:.2f} |"
        print(line)
    nn_img = extra_bytes / args.cases
    nn_case = nn_img + size[f"lab_b2int16_{pname[p0]}"]
    print(f"\nblosc2 sizes are for the layout of {pname[p0]} patches"
          + "".join(f"; for {pname[p]}: image {size[f'img_b2_{pname[p]}'] / nvox:.2f} B/voxel" for p in patches[1:])
          + f". The image normalised nnU-Net's way in blosc2: {nn_img / nvox:.2f} B/voxel, "
          f"{nn_case / 1e6:.1f} MB/case with the int16 label (nnU-Net's quoted figure: {args.nnunet_mb:.0f} MB/case).\n")

    head = "| patch | format | ms/patch, warm | × memmap |"
    if "cold" in states:
        head += " ms/patch, cold | × memmap |"
    print(head)
    print("|---|---|---:|---:|" + ("---:|---:|" if "cold" in states else ""))
    pms: dict[tuple[str, tuple, str], float] = {}
    for p in patches:
        for name, (ki, kl) in formats_for(p).items():
            line = f"| {pname[p]} | {name} |"
            for s in states:
                pms[name, p, s] = patch_ms[ki, p, s] + patch_ms[kl, p, s]
                line += f" {pms[name, p, s]:.1f} | {pms[name, p, s] / pms[ref_name, p, s]:.2f} |"
            print(line)

    # ---- conclusion: the fastest format, for the first patch size, whose disk is no worse than nnU-Net's
    nn_name = "blosc2 float32 + int16 (nnU-Net)"
    ram = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    s_last = states[-1]
    ok = [n for n in disk if disk[n] <= disk[nn_name] * 1.0001]
    pick = min(ok, key=lambda n: pms[n, p0, "warm"])
    fastest = min(disk, key=lambda n: pms[n, p0, "warm"])

    def speed(r: float) -> str:
        return f"{r:.1f}× slower" if r >= 1 else f"{1 / r:.1f}× faster"

    print(
        f"\nConclusion: nnU-Net's blosc2 takes {disk[nn_name] / nvox:.2f} B/voxel ({disk[ref_name] / disk[nn_name]:.1f}× less "
        f"than today's {disk[ref_name] / nvox:.0f}) and reads a {pname[p0]} patch "
        f"{speed(pms[nn_name, p0, 'warm'] / pms[ref_name, p0, 'warm'])} warm"
        + (f" and {speed(pms[nn_name, p0, 'cold'] / pms[ref_name, p0, 'cold'])} cold" if s_last == "cold" else "")
        + f" ({pms[nn_name, p0, 'warm']:.1f} ms vs {pms[ref_name, p0, 'warm']:.1f} ms warm); "
        f"of the formats within its disk per voxel the fastest is {pick} ({disk[pick] / nvox:.2f} B/voxel, {pms[pick, p0, 'warm']:.1f} ms/patch warm)"
        + ("" if pick == fastest else f", the fastest overall {fastest} at {disk[fastest] / nvox:.2f} B/voxel")
        + (f". This machine's {ram / 2**30:.0f} GiB of RAM would keep ~{ram / disk[ref_name]:.0f} cases in the page cache "
           f"in today's format, ~{ram / disk[pick]:.0f} as {pick}." if ram else ".")
    )
    tmp.cleanup()


if __name__ == "__main__":
    main()
