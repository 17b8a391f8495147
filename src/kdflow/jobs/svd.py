"""The svd_weights job: one streaming pass of a teacher over a subset -> mean, V, sigma, N."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from kdflow.data.imagefolder import ManifestDataset, read_manifest
from kdflow.data.transforms import train_transform
from kdflow.distill.base import SeededItems
from kdflow.distill.svd import check_rank, decompose, save_svd, teacher_feature_svd
from kdflow.models.teacher import load_teacher
from kdflow.provenance import Provenance


def svd_weights(teacher_path: str | Path, manifest_path: str | Path, settings, out_path: str | Path,
                required_width: int = 0) -> dict:
    """``settings`` is resolved (kdflow.config.resolve_svd): the config's ``svd`` block (augment,
    batch_size, workers, seed) with the teacher and the subset.

    Every image's augmentation is drawn from its own seed (seed, image), so the result does not
    depend on the loader's workers; the batch size only orders the float64 sums.
    ``required_width`` is the widest student that will use this SVD; a subset too small for it
    fails here, before any pre-training job starts.
    """
    name = f"{settings['teacher']['name']}/{settings['subset']['name']}"
    prov = Provenance("svd_weights", name=name, config=settings, seeds={"augment": settings["seed"]},
                      threads=torch.get_num_threads())
    prov.add_inputs([teacher_path, manifest_path])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = load_teacher(teacher_path, device)
    manifest = read_manifest(manifest_path, settings["subset"]["dataset"])
    if required_width:
        check_rank(len(manifest), required_width, teacher.num_features, source=str(manifest_path))
    generator = torch.Generator().manual_seed(settings["seed"])
    augmented = SeededItems(ManifestDataset(manifest, train_transform(settings["augment"])), settings["seed"])
    loader = torch.utils.data.DataLoader(augmented, batch_size=settings["batch_size"], shuffle=True,
                                         generator=generator, num_workers=settings["workers"])
    batches = ({"image": images} for images, _ in loader)
    with tqdm(total=len(manifest), desc=f"svd {name}", unit="img", mininterval=5) as bar:
        acc = teacher_feature_svd(teacher, batches, device, progress=bar)
    meta = {"teacher": str(teacher_path), "manifest": str(manifest_path), "augment": settings["augment"],
            "seed": settings["seed"], "teacher_arch": teacher.arch}
    result = decompose(acc, meta)
    save_svd(out_path, result)
    summary = {"n": result.n, "dim": result.dim,
               "top_singular_values": [round(float(s), 4) for s in result.singular_values[:10]]}
    prov.write(Path(out_path).with_suffix(".provenance.json"), extra={"summary": summary})
    return summary
