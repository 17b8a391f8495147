"""One DDP rank started by kdflow.train.launch: ``python -m kdflow.train.worker SPEC``.

SPEC (a pickle written by the launcher) names the workflow script and its parsed arguments; the
script is loaded as a module (its ``__main__`` block does not run) and its ``run(args)`` called.
"""

from __future__ import annotations

import pickle
import runpy
import sys

from kdflow.train.launch import set_threads


def main(spec_path: str) -> None:
    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    set_threads(spec["threads"])
    script = runpy.run_path(spec["script"], run_name="__kdflow_worker__")
    script["run"](spec["args"])


if __name__ == "__main__":
    main(sys.argv[1])
