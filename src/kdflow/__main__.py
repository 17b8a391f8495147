"""``python -m kdflow <command>``: small utilities around the workflow.

  doctor           versions, devices and optional engines of the installed stack
  import-kdep-svd  convert KDEP's released SVD trio (*_v.npy, *_feat_mean.npy, *_eigen_values.npy)
  validate         validate a config file and print the resolved runs
  report           the paper tables and plots from whatever results exist (partial grids, several
                   results folders merged), without Snakemake; lists missing and failed jobs
  migrate          one-time upgrade of a results folder (manifests, Snakemake params) made by a
                   kdflow older than config key roles (see kdflow.migrate)
"""

from __future__ import annotations

import argparse
import sys


def doctor(_args) -> int:
    from kdflow.provenance import device_description, package_versions

    versions = package_versions(("kdflow", "torch", "torchvision", "timm", "numpy", "pandas", "safetensors",
                                 "snakemake", "snakemake-executor-plugin-slurm", "mmsegmentation", "mmcv",
                                 "mmcv-lite", "mmengine", "detectron2", "pycocotools"))
    for name, version in versions.items():
        print(f"{name:34s} {version or '-'}")
    import torch

    print(f"{'torch CUDA build':34s} {torch.version.cuda or 'cpu'}")
    print(f"{'device':34s} {device_description()}")
    from kdflow.openmmlab.compat import compiled_ops_available, import_mmseg

    ops = compiled_ops_available()  # asked before import_mmseg may install the stand-in
    print(f"{'mmcv compiled ops':34s} {'yes' if ops else 'no (mmcv-lite: heads needing them are refused)'}")
    from kdflow.transfer.detection.detectron2_engine import require_detectron2

    engines = {"mmseg": import_mmseg, "detectron2 (with its compiled ops)": require_detectron2}
    for name, load in engines.items():
        try:
            load()
            state = "importable"
        except Exception as exc:  # report, do not fail: the report must cover a broken install too
            state = f"not importable ({type(exc).__name__}: {exc})"
        print(f"{name:34s} {state}")
    return 0


def import_kdep_svd(args) -> int:
    from kdflow.distill.svd import import_kdep_npy, save_svd

    result = import_kdep_npy(args.v, args.mean, args.sigma, n=args.n)
    save_svd(args.out, result)
    print(f"wrote {args.out}: D={result.dim}, N={result.n}")
    return 0


def validate(args) -> int:
    from kdflow.config import load_config, run_config_hash

    cfg = load_config(args.config)
    for name, run in cfg["pretrain"].items():
        print(f"{name:40s} {run['method']:12s} {run_config_hash(cfg, name)[:12]}")
    return 0


def report(args) -> int:
    from kdflow.config import load_config
    from kdflow.jobs.report import build_report

    cfg = load_config(args.config)
    out_root = args.out or args.results[0]
    collection = build_report(cfg, args.results, out_root)
    done = collection.results[["task", "dataset", "run", "seed"]].drop_duplicates()
    print(f"{len(done)} transfer results and {collection.runs['source'].notna().sum()} pre-training runs "
          f"from {', '.join(collection.roots)} -> {out_root}/tables, {out_root}/plots")
    for label in collection.failed:
        print(f"failed: {label}")
    for label in collection.missing:
        print(f"missing: {label}")
    return 0


def migrate(args) -> int:
    from kdflow.migrate import migrate as run_migration

    return run_migration(args.configfile, args.snakemake_args, touch=not args.no_touch)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kdflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="report the installed stack").set_defaults(func=doctor)
    imp = sub.add_parser("import-kdep-svd", help="KDEP's released .npy trio -> kdflow SVD file")
    imp.add_argument("--v", required=True)
    imp.add_argument("--mean", required=True)
    imp.add_argument("--sigma", required=True, help="*_eigen_values.npy (singular values)")
    imp.add_argument("--n", type=int, required=True, help="number of images the SVD used (KDEP: 128000)")
    imp.add_argument("--out", required=True)
    imp.set_defaults(func=import_kdep_svd)
    val = sub.add_parser("validate", help="validate a config and list its runs")
    val.add_argument("config")
    val.set_defaults(func=validate)
    rep = sub.add_parser("report", help="tables and plots from partial results, several folders merged")
    rep.add_argument("--config", required=True, help="the config whose jobs the tables show")
    rep.add_argument("--out", help="where tables/ and plots/ go (default: the first results folder)")
    rep.add_argument("results", nargs="+", help="results folders; a job's result is taken from the first that has it")
    rep.set_defaults(func=report)
    mig = sub.add_parser("migrate", help="one-time upgrade of an older results folder (see kdflow.migrate)")
    mig.add_argument("--configfile", required=True, help="the config the results were made with")
    mig.add_argument("--no-touch", action="store_true", help="only rewrite manifests, do not run snakemake --touch")
    mig.add_argument("snakemake_args", nargs="*", help="more snakemake arguments, after --")
    mig.set_defaults(func=migrate)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
