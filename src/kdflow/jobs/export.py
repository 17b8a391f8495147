"""Export jobs: a pre-trained student -> pretrain/<run>/export/<engine>/ (weights, report, provenance)."""

from __future__ import annotations

from pathlib import Path

from kdflow.export.mmseg import export_mmseg
from kdflow.provenance import Provenance


def export_mmseg_job(run: str, student_path: str | Path, out_dir: str | Path) -> dict:
    """Export run ``run``'s student to ``<out_dir>/backbone.pth`` + ``report.json`` (strictly
    verified, kdflow.export.mmseg) and record how in ``<out_dir>/provenance.json``.

    The export depends on nothing but the student file, whose sha256 the provenance records."""
    out_dir = Path(out_dir)
    prov = Provenance("export_mmseg", name=run, config={"run": run, "engine": "mmseg"})
    prov.add_inputs([student_path])
    report = export_mmseg(student_path, out_dir / "backbone.pth", out_dir / "report.json")
    prov.write(out_dir / "provenance.json",
               extra={key: report[key] for key in ("arch", "student_config_hash", "backbone", "counts",
                                                   "verification", "output")})
    counts = report["counts"]
    print(f"[export_mmseg {run}] {report['arch']} -> mmseg {report['backbone']['type']}: "
          f"{counts['mapped']} keys mapped, {counts['dropped']} dropped (classifier), "
          f"strict load of {report['verification']['loaded']} ok -> {report['output']['path']}", flush=True)
    return report
