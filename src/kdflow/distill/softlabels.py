"""FKD soft labels: quantisation, and a compact sharded store that replay reads record by record.

Quantisation (methods.md 2.3), for teacher probabilities p over C classes with top-k indices pi:

* ``hard``               argmax; recovered one-hot
* ``smoothing``          top-1; q_c = p_c on it, (1 - p_pi1) / (C - 1) elsewhere
* ``marginal_smoothing`` top-k; q_c = p_c on them, (1 - sum_topk p) / (C - k) elsewhere (sums to 1)
* ``marginal_renorm``    top-k; q_c = p_c / sum_topk p on them, 0 elsewhere
* ``full``               all C probabilities (float16)

The same store holds KDEP's teacher features for feature replay (``FeatureCodec``: one float16
vector per crop, either the KDEP targets or the raw pooled teacher features).

The top-k probabilities are stored as 8-bit *cumulative* sums c_j = round(255 * sum_{i<=j} p_pi_i):
every recovered probability is within 1/255 of the teacher's, their sum within 1/510, and the sum
can never exceed 1 (which independent rounding of each probability would allow). Class indices
take one byte when C <= 256, else two. Top-5 over ImageNet's 1000 classes is 15 bytes per crop.

Crop boxes and flips are not stored for generated sets: every image keeps a 64-bit seed from which
``kdflow.data.multicrop.sample_crops`` regenerates them (plus its width and height, checked at
replay). Sets imported from FKD's published files keep their fractional boxes (4 x uint16) and
flips (uint8) per crop.

On disk, a store is a folder::

    store.json          format, codec, crops per image, sampling, teacher, shards (+ sha256 each)
    index.npz           per image: seed, width, height
    shard-<k>.bin       raw fixed-size records of the crops of a contiguous range of images
    shard-<k>.npz       that shard's part of the index (written by its job, merged into index.npz)

A shard is written by one job, resumably: records are appended to a partial file in the state
folder and committed (fsync + progress file) every few hundred images; a re-run truncates to the
last commit and continues, so an interrupted shard ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kdflow.data.multicrop import BOX_SCALE, CropPlan, boxes_from_fractions, sample_crops
from kdflow.io import read_json, sha256_file, write_json, write_with
from kdflow.paths import shard_name

FORMAT = "kdflow-softlabels/1"
STORE_FILE = "store.json"
INDEX_FILE = "index.npz"
LABEL_TYPES = ("hard", "smoothing", "marginal_smoothing", "marginal_renorm", "full")
#: Record fields that hold a label (the others, box and flip, say where the crop was)
LABEL_FIELDS = ("idx", "cum", "prob")
#: Stores of teacher features for KDEP replay (kdflow.distill.kdep_replay): the KDEP targets
#: (SVD-projected and PTS-transformed, the student's width) or the raw pooled teacher features
FEATURE_TYPES = ("kdep_targets", "teacher_features")


class SoftLabelError(ValueError):
    """A soft-label store or source file that cannot be used; the message names the file."""


# --------------------------------------------------------------------------- quantisation


@dataclass(frozen=True)
class LabelCodec:
    """How one crop's teacher distribution is stored and recovered."""

    type: str
    k: int
    num_classes: int
    explicit_boxes: bool = False  # imported sets: boxes and flips stored per crop

    def __post_init__(self):
        if self.type not in LABEL_TYPES:
            raise SoftLabelError(f"unknown label type {self.type!r} (known: {', '.join(LABEL_TYPES)})")
        if self.type in ("marginal_smoothing", "marginal_renorm") and not 1 <= self.k < self.num_classes:
            raise SoftLabelError(f"label type {self.type!r} needs 1 <= k < {self.num_classes} classes, got k={self.k}")
        if self.num_classes > 65536:
            raise SoftLabelError(f"{self.num_classes} classes do not fit 16-bit class indices")

    @property
    def stored_k(self) -> int:
        return {"hard": 1, "smoothing": 1, "full": 0}.get(self.type, self.k)

    @property
    def dtype(self) -> np.dtype:
        index = np.uint8 if self.num_classes <= 256 else np.dtype("<u2")
        if self.type == "full":
            fields = [("prob", "<f2", (self.num_classes,))]
        elif self.type == "hard":
            fields = [("idx", index, (1,))]
        else:
            fields = [("idx", index, (self.stored_k,)), ("cum", np.uint8, (self.stored_k,))]
        if self.explicit_boxes:
            fields += [("box", "<u2", (4,)), ("flip", np.uint8)]
        return np.dtype(fields)  # packed: no alignment padding

    @property
    def bytes_per_crop(self) -> int:
        return self.dtype.itemsize

    def encode(self, probs: torch.Tensor) -> np.ndarray:
        """Teacher probabilities (n, C) -> n records (without boxes)."""
        probs = probs.detach().float().cpu()
        if probs.shape[1] != self.num_classes:
            raise SoftLabelError(f"teacher gives {probs.shape[1]} classes, the codec expects {self.num_classes}")
        out = np.zeros(len(probs), dtype=self.dtype)
        if self.type == "full":
            out["prob"] = probs.numpy().astype(np.float16)
            return out
        values, indices = probs.topk(self.stored_k, dim=1)
        out["idx"] = indices.numpy()
        if self.type != "hard":
            out["cum"] = quantise_cumulative(values.numpy())
        return out

    def encode_topk(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Already-selected top-k (sorted descending), as FKD's files hold them -> records."""
        out = np.zeros(len(indices), dtype=self.dtype)
        out["idx"] = indices[:, : self.stored_k]
        if self.type != "hard":
            out["cum"] = quantise_cumulative(values[:, : self.stored_k])
        return out

    def decode(self, fields: dict[str, torch.Tensor]) -> torch.Tensor:
        """Records as tensors (any device; leading batch dims allowed) -> (..., C) float32."""
        if self.type == "full":
            prob = fields["prob"].float()
            return prob / prob.sum(-1, keepdim=True)
        idx = fields["idx"].long()
        lead, c = idx.shape[:-1], self.num_classes
        if self.type == "hard":
            return torch.nn.functional.one_hot(idx[..., 0], c).float()
        cum = fields["cum"].float() / 255.0
        top = torch.diff(cum, dim=-1, prepend=torch.zeros_like(cum[..., :1]))
        if self.type == "marginal_renorm":
            total = cum[..., -1:]
            top = torch.where(total > 0, top / total.clamp_min(1e-12), torch.full_like(top, 1.0 / self.stored_k))
            q = torch.zeros(*lead, c, device=idx.device)
        else:  # smoothing is marginal smoothing with k = 1
            rest = (1.0 - cum[..., -1:]).clamp_min(0.0) / (c - self.stored_k)
            q = rest.expand(*lead, c).clone()
        return q.scatter_(-1, idx, top)

    @property
    def fields(self) -> tuple[str, ...]:
        """The record fields that hold what the teacher said about a crop."""
        return tuple(f for f in LABEL_FIELDS if f in self.dtype.names)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FeatureCodec:
    """One crop's teacher feature vector (``width`` values) in float16, for KDEP replay.

    float16 keeps 11 significant bits: a stored value is within 2^-11 (relative) of the fp32
    one, far below the spread of KDEP's targets; it halves the bytes of fp32.
    """

    type: str
    width: int
    explicit_boxes: bool = False  # generated stores only: boxes come from the per-image seed

    def __post_init__(self):
        if self.type not in FEATURE_TYPES:
            raise SoftLabelError(f"unknown feature store type {self.type!r} (known: {', '.join(FEATURE_TYPES)})")
        if self.width < 1:
            raise SoftLabelError(f"feature width must be positive, got {self.width}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype([("feat", "<f2", (self.width,))])

    @property
    def bytes_per_crop(self) -> int:
        return self.dtype.itemsize

    @property
    def fields(self) -> tuple[str, ...]:
        return ("feat",)

    def encode(self, features: torch.Tensor) -> np.ndarray:
        """Features (n, width) -> n records."""
        features = features.detach().float().cpu()
        if features.ndim != 2 or features.shape[1] != self.width:
            raise SoftLabelError(f"features of shape {tuple(features.shape)}, the codec expects (n, {self.width})")
        out = np.zeros(len(features), dtype=self.dtype)
        out["feat"] = features.numpy().astype(np.float16)
        return out

    def decode(self, fields: dict[str, torch.Tensor]) -> torch.Tensor:
        return fields["feat"].float()

    def as_dict(self) -> dict:
        return asdict(self)


def codec_from_dict(spec: dict) -> LabelCodec | FeatureCodec:
    """The codec a store's ``store.json`` (or a shard's index part) records."""
    return (FeatureCodec if spec.get("type") in FEATURE_TYPES else LabelCodec)(**spec)


def quantise_cumulative(values: np.ndarray) -> np.ndarray:
    """Sorted top-k probabilities (n, k) -> 8-bit cumulative sums (see the module docstring)."""
    cum = np.cumsum(np.asarray(values, dtype=np.float64), axis=1)
    return np.clip(np.rint(cum * 255.0), 0, 255).astype(np.uint8)


def record_tensors(records: np.ndarray) -> dict[str, torch.Tensor]:
    """Structured records -> one tensor per field (class indices as int64)."""
    out = {}
    for name in records.dtype.names:
        array = np.ascontiguousarray(records[name])
        out[name] = torch.from_numpy(array.astype(np.int64) if name == "idx" else array)
    return out


def recovery_error(codec: LabelCodec, probs: torch.Tensor, encoded: np.ndarray | None = None) -> dict[str, float]:
    """How far the stored-and-recovered distributions are from the teacher's fp32 ones.

    ``max_abs_error`` and the KL cover the whole distribution, so they include what the label
    type discards by design (the tail of a top-k); ``stored_max_abs_error`` is the storage error
    alone, on the probabilities the type keeps (8-bit cumulative or float16). ``encoded``: the
    records of ``probs`` where the caller has them already.
    """
    records = record_tensors(codec.encode(probs) if encoded is None else encoded)
    recovered = codec.decode(records)
    p = probs.float()
    kl = (p * (p.clamp_min(1e-12).log() - recovered.clamp_min(1e-12).log())).sum(1)
    if codec.type == "full":
        stored = (records["prob"].float() - p).abs().max()
    elif codec.type == "hard":
        stored = torch.zeros(())
    else:
        idx = records["idx"]
        kept = torch.diff(records["cum"].float() / 255.0, dim=1, prepend=torch.zeros(len(p), 1))
        stored = (kept - p.gather(1, idx)).abs().max()
    return {"max_abs_error": float((recovered - p).abs().max()), "stored_max_abs_error": float(stored),
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max())}


# --------------------------------------------------------------------------- layout helpers


def shard_range(num_images: int, num_shards: int, shard: int) -> tuple[int, int]:
    """The contiguous image range ``[first, stop)`` of one shard (balanced to within one image)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    return num_images * shard // num_shards, num_images * (shard + 1) // num_shards


def image_seed(seed: int, index: int) -> int:
    """The crop seed of the ``index``-th image of the manifest: independent of sharding."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def images_digest(paths) -> str:
    """Identifies the ordered image list a store was made for."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8") + b"\n")
    return h.hexdigest()


def shard_file(folder: str | Path, shard: int, suffix: str) -> Path:
    return Path(folder) / shard_name(shard, suffix)


# --------------------------------------------------------------------------- writing


class ShardWriter:
    """Appends the records of a shard's images in order, durable at every ``commit``
    (``codec``: a ``LabelCodec`` or a ``FeatureCodec``).

    Partial files live in ``state_dir`` (never a declared output, so a failed job's clean-up keeps
    them). ``spec_hash`` identifies the configuration: a partial shard left by another one is
    refused rather than mixed in.
    """

    def __init__(self, state_dir: str | Path, shard: int, first: int, stop: int, codec: LabelCodec,
                 crops_per_image: int, spec_hash: str):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.first, self.stop = first, stop
        self.codec, self.crops = codec, crops_per_image
        self.record_bytes = codec.bytes_per_crop * crops_per_image
        self.data_path = self.dir / f"shard-{shard}.bin.partial"
        self.sizes_path = self.dir / f"shard-{shard}.sizes.partial"
        self.progress_path = self.dir / f"shard-{shard}.progress.json"
        self.spec_hash = spec_hash
        self.done = self._recover()
        self._data = open(self.data_path, "ab")
        self._sizes = open(self.sizes_path, "ab")
        self.pending = 0

    def _recover(self) -> int:
        """Images already committed; files truncated to that point."""
        done = 0
        if self.progress_path.is_file():
            progress = read_json(self.progress_path)
            if progress["spec_hash"] != self.spec_hash:
                raise SoftLabelError(
                    f"{self.progress_path} belongs to a soft-label set with a different config "
                    f"({progress['spec_hash'][:12]} vs {self.spec_hash[:12]}); delete {self.dir} to start over")
            done = progress["images_done"]
        for path, size in ((self.data_path, done * self.record_bytes), (self.sizes_path, done * 8)):
            if path.exists():
                with open(path, "r+b") as fh:
                    fh.truncate(size)
            elif size:
                raise SoftLabelError(f"{path} is missing although {self.progress_path} records {done} images")
        return done

    @property
    def next_image(self) -> int:
        return self.first + self.done + self.pending

    def append(self, records: np.ndarray, width: int, height: int) -> None:
        if records.dtype != self.codec.dtype or len(records) != self.crops:
            raise SoftLabelError(f"image {self.next_image}: expected {self.crops} records of {self.codec.dtype}, "
                                 f"got {len(records)} of {records.dtype}")
        self._data.write(records.tobytes())
        self._sizes.write(np.array([width, height], dtype="<u4").tobytes())
        self.pending += 1

    def commit(self) -> None:
        for fh in (self._data, self._sizes):
            fh.flush()
            os.fsync(fh.fileno())
        self.done += self.pending
        self.pending = 0
        write_json(self.progress_path, {"spec_hash": self.spec_hash, "images_done": self.done})

    def finish(self, bin_path: str | Path, index_path: str | Path, seeds: np.ndarray, extra: dict | None = None) -> dict:
        """Move the complete shard into place and write its part of the index (``extra`` joins
        the shard's info record)."""
        self.commit()
        self._data.close()
        self._sizes.close()
        count = self.stop - self.first
        if self.done != count:
            raise SoftLabelError(f"{self.data_path}: {self.done} of {count} images written")
        sizes = np.fromfile(self.sizes_path, dtype="<u4").reshape(-1, 2)
        digest = sha256_file(self.data_path)
        info = {"first": self.first, "count": count, "bytes": self.data_path.stat().st_size, "sha256": digest,
                **(extra or {})}
        write_with(index_path, lambda tmp: np.savez(
            _npz_handle(tmp), seed=np.asarray(seeds, dtype=np.uint64), width=sizes[:, 0], height=sizes[:, 1],
            info=np.array(json.dumps(info))))
        _move(self.data_path, Path(bin_path))
        for path in (self.sizes_path, self.progress_path):
            path.unlink(missing_ok=True)
        return info

    def close(self) -> None:
        for fh in (self._data, self._sizes):
            if not fh.closed:
                fh.close()


def _npz_handle(tmp: Path):
    return open(tmp, "wb")  # np.savez would append ".npz" to a bare path without that suffix


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:  # the state folder is on another file system
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        src.unlink()


def assemble_store(folder: str | Path, num_shards: int, meta: dict) -> dict:
    """Merge the shards' index parts into ``index.npz`` and write ``store.json``."""
    folder = Path(folder)
    parts, shards = [], []
    expected_first = 0
    for k in range(num_shards):
        with np.load(shard_file(folder, k, "npz")) as npz:
            info = json.loads(str(npz["info"]))
            parts.append({name: npz[name] for name in ("seed", "width", "height")})
        if info["first"] != expected_first:
            raise SoftLabelError(f"{shard_file(folder, k, 'npz')} starts at image {info['first']}, "
                                 f"expected {expected_first}")
        bin_path = shard_file(folder, k, "bin")
        if bin_path.stat().st_size != info["bytes"]:
            raise SoftLabelError(f"{bin_path} has {bin_path.stat().st_size} bytes, its index says {info['bytes']}")
        expected_first += info["count"]
        shards.append({"file": bin_path.name, **{k: info[k] for k in ("first", "count", "bytes", "sha256")}})
    if expected_first != meta["images"]["count"]:
        raise SoftLabelError(f"shards of {folder} hold {expected_first} images, the manifest has {meta['images']['count']}")
    index = {name: np.concatenate([p[name] for p in parts]) for name in ("seed", "width", "height")}
    write_with(folder / INDEX_FILE, lambda tmp: np.savez(_npz_handle(tmp), **index))
    store = {"format": FORMAT, **meta, "shards": shards,
             "bytes_per_crop": codec_from_dict(meta["codec"]).bytes_per_crop,
             "total_bytes": sum(s["bytes"] for s in shards)}
    write_json(folder / STORE_FILE, store)
    return store


# --------------------------------------------------------------------------- reading


class SoftLabelStore:
    """Read access to a store (soft labels, or KDEP's teacher features). An image's records are read
    from its shard with one ``pread`` (shards opened lazily, once per process or loader worker):
    nothing of a store is held beyond the records asked for, and, unlike a memory map, the pages
    read do not count in the process's resident memory (SLURM's MaxRSS), whatever the store's size."""

    def __init__(self, folder: str | Path, verify: bool = True):
        """``folder``: the store's folder, or its ``store.json`` (the file a finished store is known by)."""
        folder = Path(folder)
        self.folder = folder.parent if folder.name == STORE_FILE else folder
        meta_path = self.folder / STORE_FILE
        if not meta_path.is_file():
            raise SoftLabelError(f"no soft-label store at {self.folder} ({STORE_FILE} missing)")
        self.meta = read_json(meta_path)
        if self.meta.get("format") != FORMAT:
            raise SoftLabelError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.codec = codec_from_dict(self.meta["codec"])
        self.crops_per_image = self.meta["crops_per_image"]
        with np.load(self.folder / INDEX_FILE) as npz:
            self.seeds, self.widths, self.heights = npz["seed"], npz["width"], npz["height"]
        self._firsts = np.array([s["first"] for s in self.meta["shards"]])
        self._files: dict[int, int] = {}  # shard -> file descriptor, of this process
        self._check_layout()
        if verify:
            self.verify()

    def __len__(self) -> int:
        return self.meta["images"]["count"]

    def __getstate__(self):  # DataLoader workers open their own files
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def __del__(self):
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)

    def _check_layout(self) -> None:
        """``store.json``, ``index.npz`` and the shards' sizes must describe one layout (cheap: no
        shard is read), so that no image's records are read past a shard's end or from a neighbour."""
        where, record = self.folder / STORE_FILE, self.codec.bytes_per_crop * self.crops_per_image
        first = 0
        for shard in self.meta["shards"]:
            if shard["first"] != first or shard["bytes"] != shard["count"] * record:
                raise SoftLabelError(f"{where}: shard {shard['file']} is said to hold images {shard['first']}.."
                                     f"{shard['first'] + shard['count'] - 1} in {shard['bytes']} bytes, which does not "
                                     f"fit the store's layout (images from {first}, {record} bytes each)")
            first += shard["count"]
        if not first == len(self) == len(self.seeds) == len(self.widths):
            raise SoftLabelError(f"{where}: its shards hold {first} images, its index {len(self.seeds)}, "
                                 f"its image list {len(self)}")

    def verify(self) -> None:
        """Checksum every shard; a changed byte fails naming the shard file."""
        for shard in self.meta["shards"]:
            path = self.folder / shard["file"]
            if not path.is_file():
                raise SoftLabelError(f"soft-label shard missing: {path}")
            if path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
                raise SoftLabelError(f"soft-label shard {path} is corrupt: its sha256 does not match {STORE_FILE}")

    def check_images(self, sample_paths, where: str) -> None:
        """The manifest being trained on must be the one the labels were made for, in order."""
        if images_digest(sample_paths) != self.meta["images"]["sha256"]:
            raise SoftLabelError(f"{self.folder} was made for another image list than {where} "
                                 f"({self.meta['images']['count']} images, manifest {self.meta['images']['manifest']})")

    def _file(self, k: int) -> int:
        if k not in self._files:
            self._files[k] = os.open(self.folder / self.meta["shards"][k]["file"], os.O_RDONLY)
        return self._files[k]

    def records(self, i: int) -> np.ndarray:
        """The stored crops of image ``i`` (manifest order)."""
        if not 0 <= i < len(self):
            raise SoftLabelError(f"image {i} is not in {self.folder} (it holds images 0..{len(self) - 1})")
        k = int(np.searchsorted(self._firsts, i, side="right") - 1)
        size = self.codec.dtype.itemsize * self.crops_per_image
        offset = (i - self.meta["shards"][k]["first"]) * size
        data = os.pread(self._file(k), size, offset)
        if len(data) != size:  # the shard shrank after the store was opened
            raise SoftLabelError(f"{self.folder / self.meta['shards'][k]['file']}: image {i}'s records end past "
                                 f"the file's end ({offset + size} > {offset + len(data)} bytes); re-make the store")
        return np.frombuffer(bytearray(data), dtype=self.codec.dtype)

    def plan(self, i: int, width: int, height: int, records: np.ndarray, image_path: str = "") -> CropPlan:
        """Pixel boxes and flips of image ``i``'s stored crops, for the image as decoded now."""
        if self.codec.explicit_boxes:
            return CropPlan(boxes_from_fractions(records["box"] / BOX_SCALE, width, height),
                            records["flip"].astype(bool))
        if (width, height) != (int(self.widths[i]), int(self.heights[i])):
            raise SoftLabelError(
                f"image {image_path or i} is {width}x{height} now but was {self.widths[i]}x{self.heights[i]} "
                f"when the soft labels in {self.folder} were made; regenerate them")
        sampling = self.meta["sampling"]
        return sample_crops(int(self.seeds[i]), width, height, self.crops_per_image,
                            tuple(sampling["scale"]), tuple(sampling["ratio"]))


def differences(made, wanted, where: str = "") -> list[str]:
    """Key paths at which two config slices (a store's recorded identity, the run's) differ,
    with both values."""
    if isinstance(made, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(made) | set(wanted)):
            out += differences(made.get(key), wanted.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if made == wanted else [f"{where}: store {made!r}, run {wanted!r}"]
