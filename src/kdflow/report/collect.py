"""Every ``metrics.json`` -> one tidy DataFrame (one row per metric value)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from kdflow.io import read_json

COLUMNS = ["task", "dataset", "run", "seed", "metric", "checkpoint", "value", "protocol",
           "protocol_hash", "run_config_hash", "source"]


def collect(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = []
    paths = list(paths)
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} result(s) of the config's jobs are missing (run the workflow "
                                "first): " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    for path in paths:
        record = read_json(path)
        for m in record["metrics"]:
            rows.append({
                "task": record["task"], "dataset": record.get("dataset"), "run": record["run"],
                "seed": record.get("seed"), "metric": m["metric"], "checkpoint": m.get("checkpoint", "final"),
                "value": float(m["value"]), "protocol": record.get("protocol"),
                "protocol_hash": record.get("protocol_hash"), "run_config_hash": record.get("run_config_hash"),
                "source": str(path),
            })
    return pd.DataFrame(rows, columns=COLUMNS)
