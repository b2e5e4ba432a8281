"""A checkpoint survives a kill during its save: the target is always a whole old or a whole new file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from gopd_lightning.checkpointing import TEMP_MARK, AtomicCheckpointIO

SAVER = """
import sys, torch
from gopd_lightning.checkpointing import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({"version": 1, "weights": torch.zeros(1)}, sys.argv[1])
print("saved", flush=True)
sys.stdin.readline()
io.save_checkpoint({"version": 2, "weights": torch.ones(60_000_000)}, sys.argv[1])
"""


def test_a_kill_during_a_save_leaves_the_old_checkpoint_whole(tmp_path: Path) -> None:
    target = tmp_path / "run" / "last.ckpt"
    scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path / "tmp"  # temp dir on another filesystem
    env = {**os.environ, "TMPDIR": str(scratch)}
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert saver.stdout.readline().strip() == "saved"
    saver.stdout.close()
    first = target.stat()
    saver.stdin.write("go\n")
    saver.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill as soon as the second save touches anything in the folder
        entries = sorted(target.parent.iterdir())
        current = target.stat() if target.exists() else None
        if entries != [target] or current is None or (current.st_ino, current.st_size) != (first.st_ino, first.st_size):
            break
        time.sleep(0.0005)
    saver.send_signal(signal.SIGKILL)
    saver.wait()
    saver.stdin.close()
    assert torch.load(target, weights_only=True)["version"] in (1, 2)  # whole, whichever it is

    AtomicCheckpointIO().save_checkpoint({"version": 3}, target)  # the next save cleans up after the killed one
    assert torch.load(target, weights_only=True)["version"] == 3
    assert not [p for p in target.parent.iterdir() if TEMP_MARK in p.name]
