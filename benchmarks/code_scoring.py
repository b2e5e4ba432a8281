"""Time sandboxed scoring of the 164 HumanEval+ canonical solutions (the target: at most 90 s on 2 cores).

    python benchmarks/code_scoring.py [--data ../shared/data/benchmarks] [--workers N ...]

Prints one row per worker count: wall time, programs per second, and how many passed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from gopd_lightning.data import load_benchmark
from gopd_lightning.rewards.code import score_code_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).parents[2] / "shared" / "data" / "benchmarks"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = Path(args.data) / "humanevalplus-originfmt.jsonl.gz"
    rows = load_benchmark("humaneval_plus", path=str(path)).to_list()
    with gzip.open(path, "rt") as handle:
        upstream = {r["task_id"]: r for r in map(json.loads, handle)}
    responses = [
        f"```python\n{upstream[r['id']]['prompt']}{upstream[r['id']]['canonical_solution']}\n```" for r in rows
    ]
    specs = [r["ground_truth"] for r in rows]
    print(f"| workers | wall s | programs/s | passed (of {len(rows)}) |\n|---|---|---|---|")
    for workers in args.workers:
        started = time.perf_counter()
        scores = score_code_batch(responses, specs, max_workers=workers)
        wall = time.perf_counter() - started
        print(f"| {workers} | {wall:.1f} | {len(rows) / wall:.1f} | {int(sum(scores))} |", flush=True)


if __name__ == "__main__":
    main()
