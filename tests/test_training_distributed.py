"""Two gloo processes under torchrun (``python -m ibllm_agent.training``) with batch 2 each train exactly like
one process with batch 4: same per-step losses, same trained weights."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import pytest
import torch
from training_fixtures import make_alpaca, one_thread  # noqa: F401 (autouse)

from ibllm_agent.model.checkpoint import read_safetensors
from ibllm_agent.training import run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path):
    data = make_alpaca(tmp_path / "data", n=8)
    common = ["--data", str(data), "--lr", "3e-3", "--warmup-epochs", "0", "--max-steps", "3", "--export", "false",
              "--save-every", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "ibllm_agent.training", "finetune", "--config", "tiny_finetune.yaml",
           "--output-dir", str(tmp_path / "ddp"), "--batch-size", "2", *common]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the torchrun workers (OMP_NUM_THREADS=1): same reduction order
    try:
        single = run("finetune", "tiny_finetune.yaml", data=[str(data)], output_dir=str(tmp_path / "one"),
                     batch_size=4,
                     lr=3e-3, warmup_epochs=0.0, max_steps=3, export=False, save_every=3)
    finally:
        torch.set_num_threads(threads)
    rows = list(csv.DictReader(open(tmp_path / "ddp" / "metrics.csv")))
    assert [float(r["loss"]) for r in rows] == pytest.approx(single.losses, rel=1e-5)
    a = read_safetensors(tmp_path / "ddp" / "checkpoints" / "step-00000003" / "trainable.safetensors")
    b = read_safetensors(single.checkpoint / "trainable.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    # the step really moved the weights (so equality is not trivial)
    assert any(v.abs().sum() > 0 for k, v in b.items() if k.endswith("lora_b.weight"))
