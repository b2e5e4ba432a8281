"""FSDP2 all-gathers and time of one rollout, with the student gathered "whole" or "layerwise".

    python benchmarks/rollout_allgathers.py [--processes 2] [--layers 8] [--new-tokens 32] [--rows 8]

Starts CPU processes (gloo), shards a random tiny Qwen3 student with ``parallelize`` as
``GOPDModule`` does, and generates a rollout of exactly ``--new-tokens`` tokens per mode under
``unsharded_generation``; rank 0 prints a table. "whole" should need one all-gather per FSDP group
(the layers and the root), "layerwise" the root once and every layer for every forward, and
"whole" with too little memory (``rollout_memory_fraction=0``) falls back to "layerwise" on every
rank.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from transformers import Qwen3Config, Qwen3ForCausalLM

from gopd_lightning.sharding import ShardingConfig, count_all_gathers, parallelize, unsharded_generation

MODES = {
    "whole": ShardingConfig(param_dtype="float32"),
    "layerwise": ShardingConfig(param_dtype="float32", rollout_unshard="layerwise"),
    "whole, memory short": ShardingConfig(param_dtype="float32", rollout_memory_fraction=0.0),
}


def rollout(student: Qwen3ForCausalLM, prompts: torch.Tensor, config: ShardingConfig, new_tokens: int) -> None:
    with unsharded_generation(student, config):
        student.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=False,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            pad_token_id=0,
            eos_token_id=1,
        )


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.processes)
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    )
    student = Qwen3ForCausalLM(config).train()
    parallelize(student, [], init_device_mesh("cpu", (args.processes,)), MODES["whole"])
    prompts = torch.randint(2, config.vocab_size, (args.rows, 16))
    lines = ["| mode | all-gathers per rollout | seconds |", "|---|---|---|"]
    for name, mode in MODES.items():
        with count_all_gathers() as all_gathers:
            rollout(student, prompts, mode, args.new_tokens)
        dist.barrier()
        start = time.perf_counter()
        rollout(student, prompts, mode, args.new_tokens)
        lines.append(f"| {name} | {all_gathers.count} | {time.perf_counter() - start:.3f} |")
    if rank == 0:
        print(
            f"{args.processes} processes, {args.layers} layers, {args.rows} rows x {args.new_tokens} new tokens "
            f"(expected: whole {args.layers + 1}, layerwise {1 + args.layers * args.new_tokens})"
        )
        print("\n".join(lines), flush=True)
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(args, port), nprocs=args.processes)


if __name__ == "__main__":
    main()
