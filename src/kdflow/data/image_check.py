"""Decode every file of a manifest once, when the dataset is prepared (a dataset's ``image_check``).

Training decodes each image when it first needs it: a corrupt JPEG is then found by the job that
happens to read it, possibly on day 3 of a grid. With the check, the prepare_dataset job decodes
every image (and segmentation mask) the way training reads it, before any manifest is written:

- ``policy: fail`` (the default) fails the job naming every undecodable file; no manifest is
  written, so nothing downstream starts;
- ``policy: skip`` leaves the samples with an undecodable file out of the manifests and lists
  them, with the decoder's message, in the dataset's ``provenance.json``.

Either way the manifests never change mid-grid because of a bad file.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from kdflow.data.imagefolder import DatasetError, Manifest

SHOWN = 20  # undecodable files named in an error message (all of them go to the log)


def sample_files(manifest) -> list[tuple[Path, ...]]:
    """Per sample, the files training decodes: its image, and a segmentation sample's mask."""
    from kdflow.data.detection import DetManifest
    from kdflow.data.segmentation import SegManifest

    if isinstance(manifest, SegManifest):
        return [(Path(manifest.image_root) / s.image, Path(manifest.mask_root) / s.mask) for s in manifest.samples]
    if isinstance(manifest, DetManifest):
        return [(Path(manifest.path(s)),) for s in manifest.samples]
    if isinstance(manifest, Manifest):
        return [(Path(manifest.root) / s.path,) for s in manifest.samples]
    raise TypeError(f"no image check for a {type(manifest).__name__}")


def decode_error(path: Path) -> str | None:
    """Why ``path`` cannot be decoded as training decodes it (fully, then to RGB), or None."""
    from PIL import Image

    from kdflow.data.imagefolder import to_rgb

    try:
        with Image.open(path) as img:
            img.load()  # decodes every byte: a truncated JPEG fails here, not at open
            to_rgb(img)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the finding, named with its path
        return f"{type(exc).__name__}: {exc}"
    return None


def _errors_of(files: tuple[Path, ...]) -> list[tuple[str, str]]:
    return [(str(f), e) for f in files if (e := decode_error(f)) is not None]


def undecodable(manifest, workers: int = 1, desc: str = "image check") -> dict[int, list[tuple[str, str]]]:
    """``{sample index: [(file, error), ...]}`` of the samples with a file that does not decode."""
    from tqdm import tqdm

    files = sample_files(manifest)
    if workers > 1 and len(files) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_errors_of, files, chunksize=256), total=len(files), desc=desc,
                                mininterval=5))
    else:
        results = [_errors_of(f) for f in tqdm(files, desc=desc, mininterval=5)]
    return {i: errors for i, errors in enumerate(results) if errors}


def check_images(manifests: dict, policy: str, workers: int = 1, desc: str = "image check") -> tuple[dict, dict]:
    """``({split: manifest}, {split: report})`` for a dataset's ``{split: manifest}``: every split
    checked, then under ``fail`` a DatasetError naming every undecodable file of all of them;
    under ``skip``, the manifests without the samples that have one."""
    kept, reports, problems = {}, {}, []
    for split, manifest in manifests.items():
        bad = undecodable(manifest, workers, f"{desc} {split}")
        found = [{"path": path, "error": error} for i in sorted(bad) for path, error in bad[i]]
        for problem in found:
            print(f"[{desc} {split}] undecodable: {problem['path']}: {problem['error']}", flush=True)
        problems += found
        reports[split] = {"policy": policy, "samples": len(manifest.samples), "undecodable": found,
                          "skipped": len(bad) if policy == "skip" else 0}
        kept[split] = dataclasses.replace(manifest, samples=[s for i, s in enumerate(manifest.samples) if i not in bad])
    if problems and policy == "fail":
        total = sum(r["samples"] for r in reports.values())
        shown = "\n  ".join(f"{p['path']}: {p['error']}" for p in problems[:SHOWN])
        more = f"\n  ... and {len(problems) - SHOWN} more (all listed in the job's log)" if len(problems) > SHOWN else ""
        raise DatasetError(
            f"[{desc}] {len(problems)} file(s) of {total} samples cannot be decoded:\n  {shown}{more}\n"
            "Replace or delete them, or set image_check: {policy: skip} on the dataset to leave them out "
            "(named in its provenance.json)")
    return kept, reports
