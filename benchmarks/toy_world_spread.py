"""How much the toy world's quality depends on the seed and the thread count.

Float rounding differs between CPUs (instruction sets pick other kernels), and over a thousand
training steps it changes a model the way another seed does: the spread over seeds is the spread
a fresh machine can see. For each seed this builds the whole toy world in a scratch cache (as
``gopd toy prepare --all`` does) and measures every model's held-out accuracy, as
``tests/test_toy_world.py`` does, with 1 and 2 threads. Prints a table and the spread; the recipe
is robust when every seed lands in the bands that test checks.

    python benchmarks/toy_world_spread.py --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from gopd_lightning.models import load_causal_lm, load_tokenizer
from gopd_lightning.toy.quality import held_out_accuracy
from gopd_lightning.toy.world import TOY_MODELS, ToyRecipe, prepare_toy_world

MEASURED = [  # (model, domain) pairs the toy-world tests check
    ("base", "math"),
    ("base", "code"),
    ("teacher-math", "math"),
    ("teacher-code", "code"),
    ("big-base", "math"),
    ("big-teacher-math", "math"),
]


def measure(seed: int, threads: list[int]) -> dict[tuple[str, str, int], float]:
    """Accuracy of every measured (model, domain) with each thread count, for the toy world of ``seed``."""
    with tempfile.TemporaryDirectory() as home:
        os.environ["GOPD_HOME"] = home
        paths = prepare_toy_world(ToyRecipe(seed=seed), names=list(TOY_MODELS))
        results = {}
        for count in threads:
            torch.set_num_threads(count)
            for model, domain in MEASURED:
                path = str(paths[model])
                accuracy = held_out_accuracy(load_causal_lm(path), load_tokenizer(path), domain)
                results[model, domain, count] = accuracy
                print(f"  seed {seed} threads {count} {model} on {domain}: {accuracy:.3f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    table = {seed: measure(seed, args.threads) for seed in args.seeds}
    columns = [(model, domain, count) for model, domain in MEASURED for count in args.threads]
    print("\n| seed | " + " | ".join(f"{m} {d} ({t}t)" for m, d, t in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for seed, results in table.items():
        print(f"| {seed} | " + " | ".join(f"{results[c]:.3f}" for c in columns) + " |")
    print("| min-max | " + " | ".join(_spread([r[c] for r in table.values()]) for c in columns) + " |")


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


if __name__ == "__main__":
    main()
