"""SVD weights: the streaming computation equals NumPy's SVD of the centred data matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdflow.distill.svd import (ScatterAccumulator, SVDError, check_rank, decompose, import_kdep_npy,
                                load_svd, save_svd)


def planted(n=600, d=12, seed=0):
    """Rows with a known, well-separated spectrum around a large, non-zero mean."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.array([50.0, 30, 18, 11, 7, 4.5, 3, 2, 1.3, 0.8, 0.5, 0.3])[:d]
    z = rng.normal(size=(n, d))
    z = (z - z.mean(0)) / z.std(0)
    return z * scales @ q.T + 100.0 + rng.normal(size=d) * 10


def test_streaming_svd_matches_numpy_on_planted_spectrum():
    x = planted()
    acc = ScatterAccumulator(x.shape[1])
    for chunk in np.array_split(x, 7):  # uneven batches exercise the parallel merge
        acc.update(torch.from_numpy(chunk))
    result = decompose(acc)

    centred = x - x.mean(0)
    _, sigma, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(result.mean.numpy(), x.mean(0), rtol=1e-10)
    # sigma are singular values of the centred data matrix, not covariance eigenvalues
    np.testing.assert_allclose(result.singular_values.numpy(), sigma, rtol=1e-6)
    assert not np.allclose(result.singular_values.numpy(), sigma**2 / (len(x) - 1), rtol=1e-2)
    for k in range(x.shape[1]):
        ours, theirs = result.V[:, k].numpy(), vt[k]
        assert min(np.abs(ours - theirs).max(), np.abs(ours + theirs).max()) < 1e-6, k
    assert result.n == len(x)


def test_sign_convention_and_file_round_trip(tmp_path):
    acc = ScatterAccumulator(12)
    acc.update(torch.from_numpy(planted()))
    result = decompose(acc, {"teacher": "t"})
    pivots = result.V.abs().argmax(0)
    assert (result.V[pivots, torch.arange(12)] > 0).all()
    save_svd(tmp_path / "s.safetensors", result)
    back = load_svd(tmp_path / "s.safetensors")
    assert back.n == result.n and back.metadata["teacher"] == "t"
    torch.testing.assert_close(back.V, result.V.float().double())
    mean, basis = back.projection(5)
    assert basis.shape == (12, 5) and mean.dtype == torch.float32


def test_too_few_samples_for_student_width():
    acc = ScatterAccumulator(12)
    acc.update(torch.from_numpy(planted(n=6)))
    result = decompose(acc)
    with pytest.raises(SVDError, match=r"N=6 teacher features span at most N-1=5 centred directions, fewer than the student width 8"):
        result.projection(8)
    with pytest.raises(SVDError, match="exceeds the teacher feature width 12"):
        check_rank(1000, 16, dim=12)
    result.projection(5)  # N - 1 = 5 directions suffice for width 5


def test_import_kdep_npy_trio(tmp_path):
    x = planted()
    _, sigma, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.save(tmp_path / "m_v.npy", vt.T.astype(np.float32))
    np.save(tmp_path / "m_feat_mean.npy", x.mean(0).astype(np.float32))
    np.save(tmp_path / "m_eigen_values.npy", sigma.astype(np.float32))
    imported = import_kdep_npy(tmp_path / "m_v.npy", tmp_path / "m_feat_mean.npy",
                               tmp_path / "m_eigen_values.npy", n=len(x))
    np.testing.assert_allclose(imported.V.numpy(), vt.T, rtol=1e-5, atol=1e-6)
    assert imported.n == 600 and imported.dim == 12


def test_the_svd_job_does_not_depend_on_loader_workers_or_batch_size(tmp_path):
    """svd.workers and svd.batch_size are execution keys: every image draws its augmentation from
    its own seed, and the float64 sums hardly notice their order."""
    from safetensors.torch import load_file

    from conftest import make_imagefolder
    from kdflow.config import JobConfig
    from kdflow.data.imagefolder import split_manifest, write_manifest
    from kdflow.jobs.svd import svd_weights
    from kdflow.models.network import Network
    from kdflow.models.teacher import save_teacher

    root = make_imagefolder(tmp_path / "ds", {"a": 12, "b": 12}, size=16)
    write_manifest(tmp_path / "m.tsv", split_manifest(root, "train"), "ds")
    torch.manual_seed(0)
    save_teacher(tmp_path / "t.safetensors", Network("test_resnet", num_classes=2), "t", "random_init")
    dataset = {"name": "ds", "root": root, "work_dir": tmp_path / "work"}
    augment = {"size": 16, "scale": [0.3, 1.0], "hflip": True, "color_jitter": 0.1, "lighting": 0.05}

    def run(workers, batch_size, out):
        settings = {"augment": augment, "seed": 3, "workers": workers, "batch_size": batch_size,
                    "teacher": {"name": "t"}, "subset": {"name": "all", "dataset": dataset}}
        svd_weights(tmp_path / "t.safetensors", tmp_path / "m.tsv", JobConfig(settings, identity=settings), out)
        return load_file(out)

    a, b = run(0, 8, tmp_path / "a.safetensors"), run(2, 5, tmp_path / "b.safetensors")
    sigma = a["singular_values"].double()
    rank = int((sigma > 1e-6 * sigma[0]).sum())  # 24 images: directions past the rank are arbitrary
    assert 0 < rank < len(sigma)
    assert torch.allclose(sigma, b["singular_values"].double(), rtol=1e-6, atol=1e-6)
    assert torch.allclose(a["mean"].double(), b["mean"].double(), rtol=1e-6, atol=1e-8)
    assert torch.allclose(a["V"][:, :rank].double(), b["V"][:, :rank].double(), atol=1e-5)


def test_an_svd_file_that_does_not_fit_the_student_or_the_teacher_is_named(tmp_path):
    """An SVD file of 12-d features: a 16-wide student, or a teacher of another width, fails naming
    the file and both widths before any step."""
    from kdflow.distill.base import MethodContext
    from kdflow.distill.kdep import KDEP
    from kdflow.models.network import Network

    acc = ScatterAccumulator(12)
    acc.update(torch.from_numpy(planted()))
    path = tmp_path / "svd.safetensors"
    save_svd(path, decompose(acc))
    with pytest.raises(SVDError, match=rf"{path}: student width 16 exceeds the teacher feature width 12"):
        load_svd(path).projection(16)
    teacher = Network("test_resnet", num_classes=0)  # 96-d features
    context = MethodContext(data=None, training={}, device=torch.device("cpu"), teacher=teacher,
                            options={"tau": 0.1, "power": 3, "loss_weight": 1.0},
                            artefacts={"svd": str(path), "student_width": 8})
    with pytest.raises(SVDError, match=rf"{path}: an SVD of 12-dimensional features, but the teacher gives 96"):
        KDEP(context)
