"""Teacher-free KDEP: the teacher-feature store (targets and raw features), its generation
(sharding, resume, decode-once), the checks that refuse a store made from something else, and
replay training without a teacher.

One real Snakemake run of the tiny config (demo data, subset, teacher, SVD, both stores) feeds
every test; the jobs are then called directly with the config's own resolved slices.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, tool, training_config
from kdflow import paths
from kdflow.config import ConfigError, artefact_paths, load_config, resolve_kdep_targets, resolve_run, validate_config
from kdflow.data.imagefolder import ManifestDataset, read_manifest
from kdflow.data.multicrop import Photometric, to_unit_float
from kdflow.distill.base import MethodContext
from kdflow.distill.kdep import SVDAlignment, power_temperature_scaling
from kdflow.distill.kdep_replay import KDEPReplay, check_store
from kdflow.distill.replay import ReplayDataset
from kdflow.distill.softlabels import ShardWriter, SoftLabelError, SoftLabelStore
from kdflow.distill.svd import load_svd
from kdflow.jobs import kdep_targets as target_jobs
from kdflow.jobs import softlabels as label_jobs
from kdflow.models.checkpoints import load_strict, read_weights
from kdflow.models.network import Network
from kdflow.models.teacher import load_teacher, save_teacher

TRAIN = {"epochs": 2, "batch_size": 16, "workers": 0, "optim": {"lr": 0.05},
         "schedule": {"name": "step", "step_epochs": 1}, "augment": {"size": 16, "scale": [0.5, 1.0]},
         "eval": {"resize": 16, "crop": 16}}
STORE = {"data": "tin_25", "teacher": "tiny_random", "num_crops": 6, "teacher_batch": 4,
         "crop": {"size": 16, "scale": [0.3, 1.0]}, "workers": 0, "commit_every": 8}


def replay_config(results: Path) -> dict:
    """The tiny test config with a targets store, a features store (2 shards) and a run of each."""
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny_config.yaml").read_text())
    cfg["results"] = str(results)
    cfg["kdep_targets"] = {"tgt": {**STORE, "store": "targets"},
                           "feat": {**STORE, "store": "features", "shards": 2}}
    run = {"method": "kdep_replay", "student": "tres", "teacher": "tiny_random", "data": "tin_25", "training": TRAIN}
    cfg["pretrain"]["krep"] = {**run, "kdep_replay": {"targets": "tgt", "crops_per_visit": 2, "size": 16,
                                                      "single_crop_epochs": 0}}
    cfg["pretrain"]["krep_feat"] = {**run, "kdep_replay": {"targets": "feat", "crops_per_visit": 2, "size": 16,
                                                           "tau": 0.2}}
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Both stores made by the workflow's own rules (and what they need), from a fresh results root."""
    root = tmp_path_factory.mktemp("kdep_replay")
    results = root / "results"
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(replay_config(results), sort_keys=False))
    targets = [paths.kdep_targets_store(str(results), name) for name in ("tgt", "feat")]
    out = subprocess.run([tool("snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO),
                          "--configfile", str(cfg_path), "--cores", "2", *targets],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    cfg = load_config(cfg_path)
    return {"cfg": cfg, "results": str(results), "root": root, "snakemake": out.stderr}


def job_paths(world, name):
    return target_jobs.kdep_target_job_paths(world["cfg"], name)


def respec(world, name, **changes):
    """The store's resolved slice after changing some of its keys in the config."""
    cfg = copy.deepcopy(world["cfg"])
    cfg["kdep_targets"][name].update(changes)
    return resolve_kdep_targets(cfg, name)


def generate(world, name, out: Path, spec=None) -> SoftLabelStore:
    job = job_paths(world, name)
    spec = spec or job["spec"]
    for k in range(spec["shards"]):
        target_jobs.kdep_target_shard(spec, job["manifest"], k, out, out / "state", job["teacher"], job["svd"])
    target_jobs.kdep_target_store(spec, job["manifest"], out, job["teacher"], job["svd"])
    return SoftLabelStore(out)


def content(store: SoftLabelStore) -> bytes:
    records = b"".join((store.folder / s["file"]).read_bytes() for s in store.meta["shards"])
    return records + np.concatenate([store.seeds, store.widths, store.heights]).tobytes()


# --------------------------------------------------------------------------- what is stored


def online_teacher_features(teacher, crops: torch.Tensor, batch: int) -> torch.Tensor:
    """The teacher's features on ``crops`` (float, augmented) as generation batches them
    (zero-padded to ``batch``): fp32 matmuls differ in their last bits with the batch's
    composition, and PTS's cube root amplifies such differences without bound near 0, so the
    comparison holds the batches fixed and isolates what the store itself changes (float16)."""
    out = []
    for chunk in crops.split(batch):
        x = torch.zeros(batch, *chunk.shape[1:])
        x[: len(chunk)] = chunk
        with torch.no_grad():
            out.append(teacher(x, output="features")[: len(chunk)])
    return torch.cat(out)


@pytest.mark.parametrize("name", ["tgt", "feat"])
def test_replayed_targets_equal_online_kdep_targets(world, name):
    """For the same crop, the target replay trains on is online KDEP's, to float16 precision."""
    run_name = "krep" if name == "tgt" else "krep_feat"
    job = job_paths(world, name)
    store = SoftLabelStore(job["out_dir"])
    options = resolve_run(world["cfg"], run_name)["kdep_replay"]
    teacher = load_teacher(job["teacher"]).eval()
    width = Network("test_resnet", num_classes=0).num_features
    align = SVDAlignment(*load_svd(artefact_paths(world["cfg"], run_name)["svd"]).projection(width))
    method = KDEPReplay(replay_context(world, run_name))
    images = ManifestDataset(read_manifest(job["manifest"], job["spec"]["data"]["dataset"]))
    # all stored crops, at the teacher's size and interpolation: the teacher's own pixels
    replay = ReplayDataset(images, store, store.crops_per_image, 16, "bilinear", seed=0, pass_index=0)
    assert store.codec.type == ("kdep_targets" if name == "tgt" else "teacher_features")
    assert store.meta["bytes_per_crop"] == 2 * (width if name == "tgt" else teacher.num_features)
    photometric = Photometric(**store.meta["photometric"])
    assert photometric.enabled  # KDEP's colour augmentation by default, replayed with the crops
    for i in (0, 5, len(images) - 1):
        item = replay[i]
        crops = photometric.apply(to_unit_float(item["image"]), item["photometric"])
        features = online_teacher_features(teacher, crops, job["spec"]["teacher_batch"])
        online = power_temperature_scaling(align(features), options["tau"], options["power"])
        with torch.no_grad():
            replayed = method.target(item["feat"])
        assert replayed.shape == online.shape == (store.crops_per_image, width)
        if name == "tgt":  # the target itself rounded to float16: relative error <= 2^-11
            assert ((replayed - online).abs() <= 2.0 ** -11 * online.abs() + 1e-7).all()
        else:  # features rounded to float16, then projected: |dz| <= |V|^T (2^-11 |x|), exactly
            z_replayed, z_online = align(item["feat"].float()), align(features)
            bound = 2.0 ** -11 * features.abs() @ align.basis.abs() + 1e-6
            assert ((z_replayed - z_online).abs() <= bound).all()
            assert torch.equal(replayed, power_temperature_scaling(z_replayed, options["tau"], options["power"]))


def test_store_json_reports_bytes_and_break_even(world):
    store = SoftLabelStore(job_paths(world, "tgt")["out_dir"])
    gen = store.meta["generation"]
    assert store.meta["total_bytes"] == 100 * 6 * store.meta["bytes_per_crop"]
    assert 0 < gen["teacher_seconds"] <= gen["seconds"]
    assert gen["break_even_epochs"] == pytest.approx(gen["seconds"] / (gen["teacher_seconds"] / 6), rel=0.02)
    assert gen["break_even_epochs"] >= 6  # at least the crops' own teacher passes, decoding on top
    assert store.meta["projection"]["width"] == 96 and store.meta["projection"]["tau"] == 0.1


def test_seeded_colour_augmentation_is_torchvisions():
    """Each jitter operation equals torchvision's on the same factor; lighting is Lighting's shift."""
    from torchvision.transforms import functional as TF

    from kdflow.data.transforms import _EIGVAL, _EIGVEC

    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    aug = Photometric(color_jitter=0.4, lighting=0.1)
    params = torch.from_numpy(aug.params(seed=11, num_crops=3))
    assert torch.equal(params, torch.from_numpy(aug.params(seed=11, num_crops=3)))  # reproducible
    assert ((params[:, :3] >= 0.6) & (params[:, :3] <= 1.4)).all()
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    for k in range(3):
        expected = x[k]
        for op in params[k, 3:6].long().tolist():
            expected = ops[op](expected, float(params[k, op]))
        expected = expected + (_EIGVEC @ (params[k, 6:] * _EIGVAL)).view(3, 1, 1)  # Lighting's shift
        assert torch.allclose(aug.apply(x, params)[k], expected, atol=1e-5)
    assert torch.equal(Photometric().apply(x, params), x)  # disabled: untouched


# --------------------------------------------------------------------------- generation


def test_one_and_three_generation_shards_are_byte_identical(world, tmp_path):
    one = generate(world, "feat", tmp_path / "one", respec(world, "feat", shards=1))
    three = generate(world, "feat", tmp_path / "three", respec(world, "feat", shards=3))
    assert [s["count"] for s in three.meta["shards"]] == [33, 33, 34]
    assert content(one) == content(three)
    assert content(three) == content(SoftLabelStore(job_paths(world, "feat")["out_dir"]))  # the workflow's 2


def test_a_killed_generation_resumes_byte_identical(world, tmp_path, monkeypatch):
    job = job_paths(world, "tgt")
    out = tmp_path / "killed"
    real_commit = ShardWriter.commit
    commits = {"n": 0}

    def commit_then_die(self):
        real_commit(self)
        commits["n"] += 1
        if commits["n"] == 3:  # 24 of 100 images durable, then a write that is never committed
            self._data.write(b"half a record")
            self._data.flush()
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ShardWriter, "commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        target_jobs.kdep_target_shard(job["spec"], job["manifest"], 0, out, out / "state", job["teacher"], job["svd"])
    assert not (out / "shard-0.bin").exists()
    monkeypatch.setattr(ShardWriter, "commit", real_commit)
    starts = []
    real_outputs = target_jobs.teacher_outputs

    def spy(gen, seed, workers, manifest, teacher, output, device, start, stop):
        starts.append(start)
        return real_outputs(gen, seed, workers, manifest, teacher, output, device, start, stop)

    monkeypatch.setattr(target_jobs, "teacher_outputs", spy)
    resumed = generate(world, "tgt", out)
    assert starts == [24]  # only the images after the last commit were recomputed
    assert content(resumed) == content(SoftLabelStore(job["out_dir"]))


@pytest.mark.parametrize("kind", ["fkd_soft_labels", "kdep_targets"])
def test_generation_decodes_each_image_once(world, tmp_path, monkeypatch, kind):
    """6 crops in teacher batches of 4: still one decode per image (counted)."""
    decodes = []
    real_load = ManifestDataset.load

    def counting_load(self, i):
        decodes.append(i)
        return real_load(self, i)

    monkeypatch.setattr(ManifestDataset, "load", counting_load)
    if kind == "kdep_targets":
        job = job_paths(world, "tgt")
        target_jobs.kdep_target_shard(job["spec"], job["manifest"], 0, tmp_path, tmp_path / "state", job["teacher"],
                                      job["svd"])
        assert job["spec"]["teacher_batch"] < job["spec"]["num_crops"]
    else:
        cfg = copy.deepcopy(world["cfg"])
        cfg["soft_labels"]["tiny_labels"]["generate"].update(teacher="tiny_random", teacher_batch=4)
        cfg["soft_labels"]["tiny_labels"]["shards"] = 1
        job = label_jobs.soft_label_job_paths(cfg, "tiny_labels")
        job["teacher"] = paths.teacher_weights(world["results"], "tiny_random")
        label_jobs.soft_label_shard(job["spec"], job["manifest"], 0, tmp_path, tmp_path / "state", job["teacher"])
    assert sorted(decodes) == list(range(100))


# --------------------------------------------------------------------------- refusals


def replay_context(world, run_name: str, **artefact_changes) -> MethodContext:
    """The context the pretrain job gives a kdep_replay run (kdflow.jobs.pretrain)."""
    cfg = world["cfg"]
    run = resolve_run(cfg, run_name)
    artefacts = {**artefact_paths(cfg, run_name), "student_width": 96,
                 "teacher_file": paths.teacher_weights(world["results"], run["teacher"]["name"]),
                 "specs": {"kdep_targets": run.identity["kdep_targets"]}}
    artefacts.update(artefact_changes)
    manifest = read_manifest(paths.subset_manifest(world["results"], "tin_25"), run["data"]["dataset"])
    return MethodContext(data=manifest, training=training_config(**TRAIN), device=torch.device("cpu"),
                         options=run["kdep_replay"], artefacts=artefacts)


def test_a_store_from_another_teacher_is_refused(world, tmp_path):
    other = tmp_path / "other_teacher.safetensors"
    torch.manual_seed(5)
    save_teacher(other, Network("test_efficientnet", num_classes=4), "tiny_random", "random_init")
    with pytest.raises(SoftLabelError, match="another teacher file"):
        KDEPReplay(replay_context(world, "krep", teacher_file=str(other)))


def test_a_store_for_another_svd_file_is_refused(world, tmp_path):
    svd = load_svd(artefact_paths(world["cfg"], "krep")["svd"])
    from kdflow.distill.svd import SVDResult, save_svd

    other = save_svd(tmp_path / "other.safetensors", SVDResult(svd.mean + 1.0, svd.V, svd.singular_values, svd.n,
                                                                svd.metadata))
    with pytest.raises(SoftLabelError, match="svd_sha256"):
        KDEPReplay(replay_context(world, "krep", svd=str(other)))
    KDEPReplay(replay_context(world, "krep_feat", svd=str(other)))  # raw features: projected with any SVD


@pytest.mark.parametrize(("key", "value", "named"), [
    ("crop", {"size": 16, "scale": [0.5, 1.0]}, "crop.scale: store [0.3, 1.0], run [0.5, 1.0]"),
    ("num_crops", 8, "num_crops: store 6, run 8"),
    ("seed", 3, "seed: store 0, run 3"),
])
def test_a_store_of_another_crop_config_is_refused_naming_the_key(world, key, value, named):
    asked = resolve_kdep_targets({**world["cfg"], "kdep_targets": {
        **world["cfg"]["kdep_targets"], "tgt": {**world["cfg"]["kdep_targets"]["tgt"], key: value}}}, "tgt")
    context = replay_context(world, "krep", specs={"kdep_targets": asked.identity})
    with pytest.raises(SoftLabelError, match="another config than the run asks for") as err:
        KDEPReplay(context)
    assert named in str(err.value)


def test_a_targets_store_for_another_pts_setting_is_refused(world):
    store = SoftLabelStore(job_paths(world, "tgt")["out_dir"])
    context = replay_context(world, "krep")
    with pytest.raises(SoftLabelError, match="tau: store 0.1, run 0.3"):
        check_store(store, context.artefacts, {**context.options, "tau": 0.3}, 96)
    with pytest.raises(SoftLabelError, match="width: store 96, run 64"):
        check_store(store, context.artefacts, context.options, 64)


def test_config_errors_name_the_key():
    cfg = replay_config(Path("/tmp/unused"))
    cfg["kdep_targets"]["spare"] = dict(STORE)
    cfg["pretrain"]["krep2"] = {**cfg["pretrain"]["krep"], "kdep_replay": {"targets": "tgt", "tau": 0.5}}
    cfg["pretrain"]["krep3"] = {**cfg["pretrain"]["krep"], "data": "tin_all"}
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert "config.kdep_targets.spare: no pre-training run replays it" in message
    assert "config.kdep_targets.tgt.store: 'targets' holds one projection" in message and "krep2" in message
    assert "config.pretrain.krep3.data: 'tin_all' differs from 'tin_25'" in message


# --------------------------------------------------------------------------- training


def test_replay_trains_without_loading_the_teacher(world, tmp_path, monkeypatch):
    """The pretrain job of a kdep_replay run never loads the teacher, and its loss falls."""
    from kdflow.jobs import pretrain as pretrain_job

    def no_teacher(*args, **kwargs):
        raise AssertionError("kdep_replay loaded the teacher")

    monkeypatch.setattr(pretrain_job, "load_teacher", no_teacher)
    cfg = world["cfg"]
    run = resolve_run(cfg, "krep")
    result = pretrain_job.pretrain(run, paths.subset_manifest(world["results"], "tin_25"), tmp_path / "out",
                                   tmp_path / "state", teacher_path=paths.teacher_weights(world["results"],
                                                                                           "tiny_random"),
                                   artefacts=artefact_paths(cfg, "krep"))
    assert result["epochs"] == 2 and result["passes"] == 1  # one two-crop pass counts as two epochs
    # the loss on the first batch, before and after (batch statistics: 12 steps leave BN's running ones unsettled)
    method = KDEPReplay(replay_context(world, "krep"))
    method.passes(2)
    batch = method.prepare(next(iter(method.loader(0))))
    torch.manual_seed(training_config(**TRAIN)["seed"])
    untrained = Network("test_resnet", num_classes=0)
    trained = Network("test_resnet", num_classes=0)
    load_strict(trained.net, read_weights(tmp_path / "out" / "student.safetensors").state_dict, "student")
    with torch.no_grad():
        before, after = (float(method.loss(net.train(), batch)[0]) for net in (untrained, trained))
    assert np.isfinite(result["rows"][-1]["loss"]) and after < before


# --------------------------------------------------------------------------- damaged stores


def test_a_missing_shard_is_named(world, tmp_path):
    store = generate(world, "feat", tmp_path / "s")
    (store.folder / "shard-1.bin").unlink()
    with pytest.raises(SoftLabelError, match=r"shard missing: .*shard-1\.bin"):
        SoftLabelStore(store.folder)


@pytest.mark.parametrize("damage", ["count", "index"])
def test_an_index_pointing_past_a_shards_end_is_refused(world, tmp_path, damage):
    """store.json or index.npz saying more images than a shard holds: refused when the store opens
    (no shard read), before any record could be read past a shard's end."""
    import json

    store = generate(world, "feat", tmp_path / "s")
    meta_path = store.folder / "store.json"
    if damage == "count":
        meta = json.loads(meta_path.read_text())
        meta["shards"][-1]["count"] += 1
        meta["images"]["count"] += 1
        meta_path.write_text(json.dumps(meta))
        named = r"shard shard-1\.bin is said to hold images 50\.\.100 in .* bytes, which does not fit"
    else:
        with np.load(store.folder / "index.npz") as npz:
            index = {k: np.concatenate([npz[k], npz[k][-1:]]) for k in ("seed", "width", "height")}
        np.savez(store.folder / "index.npz", **index)
        named = r"its shards hold 100 images, its index 101"
    with pytest.raises(SoftLabelError, match=named):
        SoftLabelStore(store.folder, verify=False)
    with pytest.raises(SoftLabelError, match=r"image 100 is not in"):
        SoftLabelStore(job_paths(world, "feat")["out_dir"]).records(100)
