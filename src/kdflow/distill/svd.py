"""KDEP's non-parametric dimension alignment: PCA of the teacher's pooled features.

KDEP computes, over N teacher features x_i (pooled pre-ReLU last stage), the mean mu and the thin
SVD of the centred data matrix X_c = U diag(sigma) V^T. It stores V (columns = principal
directions), mu, and sigma: the *singular values of X_c*, not covariance eigenvalues
(lambda_k = sigma_k^2 / (N - 1)).

Here the same quantities come from one streaming pass: batch means and centred scatter matrices
are merged with Chan et al.'s parallel update in float64 (memory O(D^2), no N x D matrix), and
V, sigma^2 are the eigenpairs of the scatter X_c^T X_c. Each direction's sign is fixed so that its
largest-magnitude component is positive, which makes files comparable across runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdflow.io import write_with


class SVDError(ValueError):
    pass


class ScatterAccumulator:
    """Streaming mean and centred scatter matrix of row vectors, in float64."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.scatter = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, batch: torch.Tensor) -> None:
        x = batch.detach().to(device="cpu", dtype=torch.float64)
        m = x.shape[0]
        if m == 0:
            return
        batch_mean = x.mean(0)
        centred = x - batch_mean
        delta = batch_mean - self.mean
        total = self.n + m
        # in place: a ResNet-50's D x D float64 temporaries are 32 MB each, and writing four of them
        # per batch cost about 5 % of the teacher's own inference time (benchmarks/svd_pass.py)
        self.scatter.addmm_(centred.T, centred)
        self.scatter.addr_(delta, delta, alpha=self.n * m / total)
        self.mean += delta * (m / total)
        self.n = total


@dataclass
class SVDResult:
    mean: torch.Tensor  # (D,)
    V: torch.Tensor  # (D, D): columns are principal directions, by decreasing sigma
    singular_values: torch.Tensor  # (D,): singular values of the centred data matrix
    n: int
    metadata: dict
    source: str = "SVD"  # the file it was read from, for messages

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def projection(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, V[:, :width]) in float32: z = (x - mean) @ V[:, :width]."""
        check_rank(self.n, width, self.dim, source=self.source)
        return self.mean.float(), self.V[:, :width].float().contiguous()


def decompose(acc: ScatterAccumulator, metadata: dict | None = None) -> SVDResult:
    if acc.n < 2:
        raise SVDError(f"SVD needs at least 2 feature vectors, got {acc.n}")
    eigvals, eigvecs = torch.linalg.eigh(acc.scatter)
    order = torch.argsort(eigvals, descending=True)
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    pivot = eigvecs.abs().argmax(dim=0)
    signs = torch.sign(eigvecs[pivot, torch.arange(eigvecs.shape[1])])
    signs[signs == 0] = 1
    eigvecs = eigvecs * signs
    sigma = eigvals.clamp_min(0).sqrt()
    return SVDResult(mean=acc.mean.clone(), V=eigvecs, singular_values=sigma, n=acc.n,
                     metadata=dict(metadata or {}))


def check_rank(n: int, width: int, dim: int | None = None, source: str = "SVD") -> None:
    """A width-d projection needs d <= D and at least d meaningful directions (N - 1 >= d)."""
    if dim is not None and width > dim:
        raise SVDError(f"{source}: student width {width} exceeds the teacher feature width {dim}")
    if n - 1 < width:
        raise SVDError(
            f"{source}: N={n} teacher features span at most N-1={n - 1} centred directions, fewer "
            f"than the student width {width}; use a subset with at least {width + 1} images"
        )


def save_svd(path: str | Path, svd: SVDResult) -> Path:
    from safetensors.torch import save_file

    tensors = {
        "mean": svd.mean.float().contiguous(),
        "V": svd.V.float().contiguous(),
        "singular_values": svd.singular_values.float().contiguous(),
    }
    meta = {"kdflow": json.dumps({**svd.metadata, "n": svd.n}, sort_keys=True), "n": str(svd.n)}
    return write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_svd(path: str | Path) -> SVDResult:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SVDError(f"SVD file not found: {path}")
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("kdflow", "{}"))
        tensors = {k: fh.get_tensor(k) for k in ("mean", "V", "singular_values")}
    return SVDResult(mean=tensors["mean"].double(), V=tensors["V"].double(),
                     singular_values=tensors["singular_values"].double(), n=int(meta.pop("n")), metadata=meta,
                     source=str(path))


def import_kdep_npy(v_path: str | Path, mean_path: str | Path, sigma_path: str | Path, n: int) -> SVDResult:
    """KDEP's released trio (``*_v.npy``, ``*_feat_mean.npy``, ``*_eigen_values.npy``).

    The files do not record N (KDEP used the 128k-image subset), so it is given by the caller.
    """
    V = torch.from_numpy(np.load(v_path)).double()
    mean = torch.from_numpy(np.load(mean_path)).double().flatten()
    sigma = torch.from_numpy(np.load(sigma_path)).double().flatten()
    dim = mean.shape[0]
    if V.shape != (dim, dim) or sigma.shape != (dim,):
        raise SVDError(f"KDEP SVD files disagree in shape: V {tuple(V.shape)}, mean {dim}, sigma {tuple(sigma.shape)}")
    meta = {"source": "kdep_npy", "files": [str(v_path), str(mean_path), str(sigma_path)]}
    return SVDResult(mean=mean, V=V, singular_values=sigma, n=int(n), metadata=meta)


@torch.no_grad()
def teacher_feature_svd(teacher, batches, device, progress=None) -> ScatterAccumulator:
    """Stream a teacher over ``batches`` (dicts with ``image``) and accumulate its features."""
    acc = ScatterAccumulator(teacher.num_features)
    for batch in batches:
        feats = teacher(batch["image"].to(device), output="features")
        acc.update(feats)
        if progress is not None:
            progress.update(feats.shape[0])
    return acc
