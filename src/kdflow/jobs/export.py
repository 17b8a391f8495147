"""Export jobs: a pre-trained student -> pretrain/<run>/export/<engine>/ (weights, report, provenance)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdflow import paths
from kdflow.provenance import Provenance


def _export_mmseg(student_path, files: dict[str, Path]) -> tuple[dict, str]:
    from kdflow.export.mmseg import export_mmseg

    report = export_mmseg(student_path, files["weights"], files["report"])
    return report, f"mmseg {report['backbone']['type']}"


def _export_detectron2(student_path, files: dict[str, Path]) -> tuple[dict, str]:
    from kdflow.export.detectron2 import export_detectron2

    report = export_detectron2(student_path, files["weights"], files["report"], files["config"])
    model = report["config"]["MODEL"]
    if "RESNETS" in model:
        return report, f"detectron2 ResNet-{model['RESNETS']['DEPTH']}"
    return report, f"detectron2 {model['BACKBONE']['NAME']} ({report['arch']})"


ENGINES = {"mmseg": _export_mmseg, "detectron2": _export_detectron2}


def export_job(run: str, engine: str, student_path: str | Path, out_dir: str | Path) -> dict:
    """Export run ``run``'s student for ``engine`` into ``out_dir`` (weights and report, strictly
    verified: kdflow.export) and record how in ``<out_dir>/provenance.json``.

    The export depends on nothing but the student file, whose sha256 the provenance records."""
    out_dir = Path(out_dir)
    prov = Provenance(f"export_{engine}", name=run, config={"run": run, "engine": engine})
    prov.add_inputs([student_path])
    files = {name: out_dir / Path(path).name for name, path in paths.export_files("", "", engine).items()}
    report, target = ENGINES[engine](student_path, files)
    prov.write(out_dir / "provenance.json",
               extra={key: report[key] for key in ("arch", "student_config_hash", "counts", "verification", "output")})
    counts = report["counts"]
    print(f"[export_{engine} {run}] {report['arch']} -> {target}: {counts['mapped']} keys mapped, "
          f"{counts['dropped']} dropped (classifier or unread), strict check of {report['verification']['loaded']} ok "
          f"-> {report['output']['path']}", flush=True)
    return report


# ----------------------------------------------------------------------------- rule scripts
def job_args(cfg: dict, run: str, engine: str) -> argparse.Namespace:
    from kdflow.config import method_of

    if run not in cfg["pretrain"]:
        raise SystemExit(f"no run {run!r} under pretrain: in the config")
    if method_of(cfg, run).student == "none":
        raise SystemExit(f"run {run!r} (method {cfg['pretrain'][run]['method']!r}) has no student to export")
    results = cfg["results"]
    return argparse.Namespace(run=run, engine=engine, student=paths.student_weights(results, run),
                              out_dir=paths.export_dir(results, run, engine))


def args_from_snakemake(smk, engine: str) -> argparse.Namespace:
    """The rule's own paths; the job names its files, so the declared ones must be those names."""
    if engine not in ENGINES:
        raise ValueError(f"rule {smk.rule}: no export engine {engine!r} ({', '.join(ENGINES)})")
    out_dir = Path(smk.output.weights).parent
    for name, path in paths.export_files("", "", engine).items():
        if Path(smk.output[name]) != out_dir / Path(path).name:
            raise ValueError(f"rule {smk.rule}: output {name} is {smk.output[name]}, the job writes "
                             f"{out_dir / Path(path).name}")
    return argparse.Namespace(run=smk.wildcards.run, engine=engine, student=smk.input.student, out_dir=str(out_dir))


def args_from_cli(doc: str) -> argparse.Namespace:
    from kdflow.config import load_config

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", required=True, choices=sorted(ENGINES))
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-id", dest="run", required=True, help="name of an entry under pretrain:")
    args = parser.parse_args()
    return job_args(load_config(args.config), args.run, args.engine)
