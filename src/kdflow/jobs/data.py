"""Jobs of the data stage: demo datasets and ImageNet subsets."""

from __future__ import annotations

from pathlib import Path

from kdflow.data import demo
from kdflow.data.imagefolder import write_manifest
from kdflow.data.subset import make_subset, materialise_symlinks
from kdflow.provenance import Provenance, describe_input


def demo_data(name: str, spec: dict, out_dir: str | Path) -> dict:
    """Generate one demo dataset into ``out_dir`` and record how."""
    out_dir = Path(out_dir)
    prov = Provenance("demo_data", name=name, config=spec, seeds={"images": spec["seed"]})
    summary = demo.generate(out_dir, kind=spec["kind"], classes=spec["classes"],
                            train_per_class=spec["train_per_class"], val_per_class=spec["val_per_class"],
                            image_size=spec["image_size"], seed=spec["seed"], progress=True)
    prov.write(out_dir / "provenance.json", extra={"summary": summary})
    return summary


def imagenet_subset(subset: dict, manifest_out: str | Path, symlink_dir: str | Path | None = None) -> dict:
    """``subset`` is a resolved subset entry (kdflow.config.resolve_subset)."""
    ds = subset["dataset"]
    prov = Provenance("imagenet_subset", name=subset["name"], config=subset, seeds={"subset": subset["seed"]})
    manifest = make_subset(ds["root"], subset["split"], per_class=subset.get("per_class"),
                           fraction=subset.get("fraction"), seed=subset["seed"])
    manifest_out = Path(manifest_out)
    write_manifest(manifest_out, manifest)
    if subset["symlinks"] and symlink_dir is not None:
        materialise_symlinks(manifest, symlink_dir)
    counts = {"images": len(manifest), "classes": len({s.cls for s in manifest.samples})}
    prov.add_inputs([Path(ds["root"]) / subset["split"]])
    prov.write(manifest_out.with_suffix(".provenance.json"),
               extra={"counts": counts, "outputs": {"manifest": describe_input(manifest_out)}})
    return counts
