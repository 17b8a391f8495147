"""SVD-weight generation against the teacher's plain inference on the same batches, and the
accumulator's peak memory against the number of features it has seen.

  inference   the teacher's pooled features on batches already in memory
  svd         the same, plus kdflow's streaming scatter accumulation (kdflow.distill.svd)
  goal        svd / inference >= 0.95: the SVD pass costs no more than the teacher itself

Peak memory: the accumulator holds a D x D float64 scatter matrix whatever the number of
features; each count runs in its own process and its peak RSS is read (flat is the goal).
Written to ``results/benchmarks/svd_pass.json``.

    python benchmarks/svd_pass.py [--teacher resnet50 --size 112 --batch 32]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys

from common import RESULTS, machine, measure, ratio, write_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="resnet50")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--window-steps", type=int, default=2)
    p.add_argument("--memory-features", default="2048,8192,32768", help="feature counts for the memory probe")
    p.add_argument("--peak-of", type=int, default=None, help=argparse.SUPPRESS)  # the memory probe's child
    p.add_argument("--out", default=str(RESULTS / "svd_pass.json"))
    return p.parse_args(argv)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def memory_probe(n: int, dim: int) -> float:
    """Peak RSS (MB) of accumulating ``n`` random features of width ``dim`` in batches of 256."""
    import torch

    from kdflow.distill.svd import ScatterAccumulator

    acc = ScatterAccumulator(dim)
    for start in range(0, n, 256):
        acc.update(torch.randn(min(256, n - start), dim))
    return peak_rss_mb()


def main(argv=None):
    import torch

    from kdflow.distill.svd import ScatterAccumulator
    from kdflow.models.network import Network

    args = parse_args(argv)
    if args.peak_of is not None:
        print(json.dumps({"peak_rss_mb": memory_probe(args.peak_of, 2048)}))
        return None
    torch.manual_seed(0)
    teacher = Network(args.teacher, num_classes=0).eval()
    batches = [torch.rand(args.batch, 3, args.size, args.size) for _ in range(2)]
    acc = ScatterAccumulator(teacher.num_features)

    def inference(x):
        with torch.no_grad():
            teacher(x, output="features")
        return {"images": len(x)}

    def svd(x):
        with torch.no_grad():
            acc.update(teacher(x, output="features"))
        return {"images": len(x)}

    results = {}
    for name, step in (("inference", inference), ("svd", svd)):
        print(f"timing {name} ...", flush=True)
        results[name] = measure(step, itertools.cycle(batches), args.warmup, args.windows, args.window_steps)
    memory = {}
    for n in (int(v) for v in args.memory_features.split(",")):
        out = subprocess.run([sys.executable, __file__, "--peak-of", str(n)], capture_output=True, text=True,
                             check=True)
        memory[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    counts = sorted(memory)
    report = {"benchmark": "svd_pass", "machine": machine(), "settings": vars(args), "modes": results,
              "peak_rss_mb_by_features": memory,
              "ratios": {"svd_over_inference": ratio(results["svd"]["images"]["median"],
                                                     results["inference"]["images"]["median"]),
                         "peak_rss_largest_over_smallest": ratio(memory[counts[-1]], memory[counts[0]])},
              "goal": {"svd_over_inference": 0.95}}
    write_report(args.out, report)
    print(report["ratios"], flush=True)
    return report


if __name__ == "__main__":
    main()
