"""Peak memory and time of the full-vocabulary G-OPD loss: chunked from hidden states against whole logits.

    python benchmarks/full_vocab_memory.py [--vocab 151936] [--time 4096] [--hidden 256] [--chunks 1024 256]

One forward and backward of the loss for one response of ``--time`` positions over ``--vocab``
tokens (Qwen3's vocabulary), student, teacher and reference heads of width ``--hidden`` (the
logits' size does not depend on it). "whole logits" materialises every model's [time, vocab] fp32
logits and calls ``full_vocab_loss``; "chunked" calls ``full_vocab_kl_from_hidden`` as the module
does. Each variant runs in a fresh process, capped at ``--limit-gb`` of address space (a variant
that needs more is reported as such, not swapped to death); the table gives its peak resident
memory above the process's start and its wall time. Set the threads (``--threads``) to the cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANT = """
import json, resource, sys, time
import torch
from gopd_lightning.logprobs import full_vocab_kl_from_hidden
from gopd_lightning.objective import aggregate, full_vocab_loss, target_logprobs

vocab, length, width, chunk, threads = (int(x) for x in sys.argv[1:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
heads = [torch.nn.Linear(width, vocab, bias=False) for _ in range(3)]
hidden = [torch.randn(1, length, width) for _ in range(3)]
student_hidden = hidden[0].requires_grad_(True)
mask = torch.ones(1, length, dtype=torch.bool)
start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    if chunk == 0:
        logp = [head(h).log_softmax(-1) for head, h in zip(heads, hidden)]
        loss = full_vocab_loss(logp[0], target_logprobs(logp[1].detach(), logp[2].detach(), 1.25), mask)
    else:
        kl = full_vocab_kl_from_hidden(
            (student_hidden, heads[0]), (hidden[1], heads[1]), (hidden[2], heads[2]), 1.25, chunk
        )
        loss = aggregate(kl, mask)
    loss.backward()
    outcome = {"loss": float(loss.detach())}
except RuntimeError as error:  # the address-space cap: this variant needs more memory than allowed
    outcome = {"error": str(error).splitlines()[0][:80]}
outcome["seconds"] = time.perf_counter() - started
outcome["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss) / 1024
print(json.dumps(outcome))
"""


def run_variant(args: argparse.Namespace, chunk: int) -> dict:
    limit = int(args.limit_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            VARIANT,
            str(args.vocab),
            str(args.time),
            str(args.hidden),
            str(chunk),
            str(args.threads),
        ],
        capture_output=True,
        text=True,
        preexec_fn=cap,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or ['?'])[-1][:80]}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--time", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-gb", type=float, default=16.0, help="address-space cap of each variant")
    args = parser.parse_args()
    print(f"V = {args.vocab}, T = {args.time}, hidden {args.hidden}, {args.threads} threads, cap {args.limit_gb} GB")
    print("| variant | peak MB above start | wall s | loss |")
    print("|---|---|---|---|")
    baseline = None
    for chunk in [0, *args.chunks]:
        name = "whole logits" if chunk == 0 else f"chunked, {chunk} positions"
        result = run_variant(args, chunk)
        if "error" in result:
            print(f"| {name} | over the cap ({result['error']}) | | |")
            continue
        if chunk == 0:
            baseline = result["peak_mb"]
        ratio = f" ({result['peak_mb'] / baseline:.2f}x)" if chunk and baseline else ""
        print(f"| {name} | {result['peak_mb']:.0f}{ratio} | {result['seconds']:.1f} | {result['loss']:.6f} |")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
