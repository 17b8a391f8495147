"""Jobs of the data stage: demo datasets and ImageNet subsets."""

from __future__ import annotations

from pathlib import Path

from kdflow.data import demo
from kdflow.data.image_check import check_images
from kdflow.data.imagefolder import read_manifest, write_manifest
from kdflow.data.prepare import SPLITS, prepare
from kdflow.data.detection import DetManifest, write_det_manifest
from kdflow.data.segmentation import SegManifest, write_seg_manifest
from kdflow.data.subset import materialise_symlinks, select_subset
from kdflow.provenance import Provenance, describe_input


def demo_data(name: str, spec: dict, out_dir: str | Path) -> dict:
    """Generate one demo dataset into ``out_dir`` and record how."""
    out_dir = Path(out_dir)
    prov = Provenance("demo_data", name=name, config=spec, seeds={"images": spec["seed"]})
    summary = demo.generate(out_dir, kind=spec["kind"], classes=spec["classes"],
                            train_per_class=spec["train_per_class"], val_per_class=spec["val_per_class"],
                            image_size=spec["image_size"], seed=spec["seed"], progress=True,
                            labels=spec.get("labels", "shape"), objects=tuple(spec.get("objects", (2, 3))))
    prov.write(out_dir / "provenance.json", extra={"summary": summary})
    return summary


def prepare_dataset(dataset: dict, manifests: dict[str, str | Path], workers: int = 1) -> dict:
    """Write the ``train`` and ``test`` manifests of a resolved dataset entry (segmentation or
    detection manifests for those formats). With the dataset's ``image_check``, every file is
    decoded first (``workers`` processes), before any manifest is written."""
    prov = Provenance("prepare_dataset", name=dataset["name"], config=dataset)
    prov.add_inputs([dataset[key] for key in ("root", "sbd_root") if dataset.get(key)])
    prepared = prepare(dataset, dataset["work_dir"])
    extra = {}
    if dataset.get("image_check"):
        prepared, extra["image_check"] = check_images({split: prepared[split] for split in SPLITS},
                                                      dataset["image_check"]["policy"], workers,
                                                      f"image check {dataset['name']}")
    counts = {}
    for split in SPLITS:
        write = {SegManifest: write_seg_manifest, DetManifest: write_det_manifest}.get(type(prepared[split]),
                                                                                      write_manifest)
        write(manifests[split], prepared[split], dataset["name"])
        counts[split] = {"images": len(prepared[split]), "classes": prepared[split].num_classes}
    prov.write(Path(manifests["train"]).parent / "provenance.json", extra={"counts": counts, **extra})
    print(f"[prepare_dataset {dataset['name']}] {counts}", flush=True)
    return counts


def imagenet_subset(subset: dict, train_manifest: str | Path, manifest_out: str | Path,
                    symlink_dir: str | Path | None = None) -> dict:
    """``subset`` is a resolved subset entry (kdflow.config.resolve_subset); the subset is drawn
    from the dataset's prepared train manifest."""
    prov = Provenance("imagenet_subset", name=subset["name"], config=subset, seeds={"subset": subset["seed"]})
    manifest = select_subset(read_manifest(train_manifest, subset["dataset"]), per_class=subset.get("per_class"),
                             fraction=subset.get("fraction"), seed=subset["seed"], source=str(train_manifest))
    manifest_out = Path(manifest_out)
    write_manifest(manifest_out, manifest, subset["dataset"]["name"])
    if subset["symlinks"] and symlink_dir is not None:
        materialise_symlinks(manifest, symlink_dir)
    counts = {"images": len(manifest), "classes": len({s.cls for s in manifest.samples})}
    prov.add_inputs([train_manifest])
    prov.write(manifest_out.with_suffix(".provenance.json"),
               extra={"counts": counts, "outputs": {"manifest": describe_input(manifest_out)}})
    return counts
