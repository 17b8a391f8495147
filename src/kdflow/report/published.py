"""Published reference numbers (``config/published/*.yaml``), shown beside kdflow's results.

Each file is one paper; each number carries where it was read (``source``) and the configuration
that produced it, or ``configuration: unknown`` when the source does not say (an aggregator's
"best KDEP" entry, say). A table shows a published number in its own block, and the difference
to a kdflow run only when the number's configuration is known and every key of it equals the
run's. No number is ever made up here: an entry without a value is refused.

    paper: KDEP
    citation: He et al., Knowledge Distillation as Efficient Pre-training, CVPR 2022
    numbers:
      - label: KDEP 100 % (aggregator)
        task: classification        # classification | segmentation | detection | pretraining
        dataset: cifar100           # the config dataset name it compares with (config/kdep.yaml's)
        metric: top1
        value: 82.89
        source: wizwand.com extraction of the paper's best KDEP entries
        configuration: unknown      # or {method: kdep, student: resnet18, pretrain_fraction: 1.0, ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

MATCH_KEYS = ("method", "student", "teacher", "pretrain_data", "pretrain_fraction", "pretrain_epochs")
_NUMBER_KEYS = {"label", "task", "dataset", "metric", "value", "source", "configuration", "note"}
_REQUIRED = ("label", "task", "dataset", "metric", "value", "source", "configuration")


class PublishedError(ValueError):
    pass


@dataclass(frozen=True)
class Published:
    paper: str
    label: str
    task: str
    dataset: str
    metric: str
    value: float
    source: str
    configuration: dict | None  # None: unknown
    note: str = ""
    file: str = ""

    @property
    def row_label(self) -> str:
        marker = "" if self.configuration is not None else " †"
        return f"{self.paper}: {self.label}{marker}"

    def matches(self, run: dict) -> bool:
        """True when the configuration is known and each of its keys equals the run's."""
        if self.configuration is None:
            return False
        return all(_same(run.get(key), value) for key, value in self.configuration.items())


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) < 1e-9
    return a == b


def _entry(raw: dict, paper: str, where: str, file: str) -> Published:
    if not isinstance(raw, dict):
        raise PublishedError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _NUMBER_KEYS)
    if unknown:
        raise PublishedError(f"{where}: unknown key(s) {unknown} (known: {sorted(_NUMBER_KEYS)})")
    for key in _REQUIRED:
        if raw.get(key) is None:
            raise PublishedError(f"{where}.{key}: required (a published number needs its value, source and "
                                 "configuration, 'unknown' where the source does not give it)")
    if not isinstance(raw["value"], (int, float)) or isinstance(raw["value"], bool):
        raise PublishedError(f"{where}.value: {raw['value']!r} is not a number")
    config = raw["configuration"]
    if config == "unknown":
        config = None
    elif not isinstance(config, dict) or not config or set(config) - set(MATCH_KEYS):
        raise PublishedError(f"{where}.configuration: 'unknown' or a mapping of some of {list(MATCH_KEYS)}, "
                             f"got {config!r}")
    return Published(paper=paper, label=str(raw["label"]), task=str(raw["task"]), dataset=str(raw["dataset"]),
                     metric=str(raw["metric"]), value=float(raw["value"]), source=str(raw["source"]),
                     configuration=config, note=str(raw.get("note", "")), file=file)


def load_published(files: Iterable[str | Path]) -> list[Published]:
    numbers = []
    for file in sorted(Path(f) for f in files):
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict) or "paper" not in data or not isinstance(data.get("numbers"), list):
            raise PublishedError(f"{file}: expected 'paper:' and a 'numbers:' list")
        unknown = sorted(set(data) - {"paper", "citation", "numbers"})
        if unknown:
            raise PublishedError(f"{file}: unknown top-level key(s) {unknown}")
        for i, raw in enumerate(data["numbers"]):
            numbers.append(_entry(raw, str(data["paper"]), f"{file}: numbers[{i}]", str(file)))
    return numbers


def published_files(folder: str | Path) -> list[str]:
    folder = Path(folder)
    return sorted(str(p) for p in folder.glob("*.yaml")) if folder.is_dir() else []
