"""Wall time of sandboxed scoring on HumanEval+: canonical solutions and as many infinite loops, on 2 workers.

    python benchmarks/code_scoring.py [--data ../shared/data/benchmarks] [--workers 2] [--loops 164]

Rows, run back to back in this process:

* ``script (before)``: each canonical solution and its check in one program (the weaker script form, how
  HumanEval+ was scored before the out-of-process judge): the baseline;
* ``first scoring: + reference runs``: the judge on an empty cache, which first records every check's calls on
  the canonical solution (once per problem);
* ``judged (now)``: the canonical solutions through the out-of-process judge (warm cache);
* ``loops (now)``: answers whose function never returns, stopped at EvalPlus' per-call limit.

Where a loop in the script form held a worker for the whole 120 s run limit, it now costs about a second.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gopd_lightning.data import load_benchmark
from gopd_lightning.rewards import code as code_rewards
from gopd_lightning.rewards.code import score_code_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).parents[2] / "shared" / "data" / "benchmarks"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loops", type=int, default=164, help="how many infinite loops to score")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ[code_rewards.CACHE_ENV] = tempfile.mkdtemp(prefix="gopd-bench-cache-")  # a fresh machine
    path = Path(args.data) / "humanevalplus-originfmt.jsonl.gz"
    rows = load_benchmark("humaneval_plus", path=str(path)).to_list()
    with gzip.open(path, "rt") as handle:
        upstream = {r["task_id"]: r for r in map(json.loads, handle)}
    prompts = [upstream[r["id"]]["prompt"] for r in rows]
    canonical = [fenced(p + upstream[r["id"]]["canonical_solution"]) for p, r in zip(prompts, rows, strict=True)]
    loops = [fenced(p + "    while True:\n        pass\n") for p in prompts][: args.loops]
    specs = [r["ground_truth"] for r in rows]
    scripts = [json.dumps({k: v for k, v in json.loads(s).items() if k != "reference"}) for s in specs]

    def score(responses: list[str], truths: list[str]) -> Callable[[], list[float]]:
        return lambda: score_code_batch(responses, truths, max_workers=args.workers)

    print(f"HumanEval+ ({len(rows)} tasks), {args.workers} workers\n")
    print("| run | answers | wall s | s per answer | scored 1 | vs before |\n|---|---|---|---|---|---|")
    baseline = None
    for name, run, count in [
        ("script (before)", score(canonical, scripts), len(rows)),
        ("first scoring: + reference runs", score(canonical, specs), len(rows)),
        ("judged (now)", score(canonical, specs), len(rows)),
        ("loops (now)", score(loops, specs[: len(loops)]), len(loops)),
    ]:
        started = time.perf_counter()
        scores = run()
        wall = time.perf_counter() - started
        baseline = baseline or wall / count
        ratio = wall / count / baseline
        print(f"| {name} | {count} | {wall:.1f} | {wall / count:.3f} | {int(sum(scores))} | {ratio:.2f}x |", flush=True)


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


if __name__ == "__main__":
    main()
