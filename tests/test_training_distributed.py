"""Two gloo processes under torchrun (``python -m ibllm_agent.training``) with batch 2 each train exactly like
one process with batch 4: same per-step losses, same trained weights; with DDP, and with FSDP (sharded
layers), including an FSDP resume and export."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import pytest
import torch
from ibllm_agent.training import run
from training_fixtures import make_alpaca, one_thread  # noqa: F401 (autouse)

from ibllm_agent.model.checkpoint import read_safetensors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out, data, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "ibllm_agent.training", "finetune", "--config", "tiny_finetune.yaml", "--output-dir", str(out),
           "--batch-size", "2", "--data", str(data), "--lr", "3e-3", "--warmup-epochs", "0", "--save-every", "3",
           *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, "\n".join(ln for ln in proc.stderr.splitlines() if "Warning" not in ln)[-6000:]


def _single(tmp_path, data):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the torchrun workers (OMP_NUM_THREADS=1): same reduction order
    try:
        return run("finetune", "tiny_finetune.yaml", data=[str(data)], output_dir=str(tmp_path / "one"),
                   batch_size=4, lr=3e-3, warmup_epochs=0.0, max_steps=3, export=False, save_every=3)
    finally:
        torch.set_num_threads(threads)


def _same_weights(a_file, b_file):
    a, b = read_safetensors(a_file), read_safetensors(b_file)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    # the steps really moved the weights (so equality is not trivial)
    assert any(v.abs().sum() > 0 for k, v in b.items() if k.endswith("lora_b.weight"))


def _rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path):
    data = make_alpaca(tmp_path / "data", n=8)
    _torchrun(tmp_path / "ddp", data, "--max-steps", "3", "--export", "false")
    single = _single(tmp_path, data)
    rows = _rows(tmp_path / "ddp" / "metrics.csv")
    assert [float(r["loss"]) for r in rows] == pytest.approx(single.losses, rel=1e-5)
    _same_weights(tmp_path / "ddp" / "checkpoints" / "step-00000003" / "trainable.safetensors",
                  single.checkpoint / "trainable.safetensors")


@pytest.mark.slow
def test_two_process_fsdp_resumes_and_equals_single_process(tmp_path):
    data = make_alpaca(tmp_path / "data", n=8)
    out = tmp_path / "fsdp"
    _torchrun(out, data, "--strategy", "fsdp", "--max-steps", "2", "--export", "false")  # stops after step 2
    _torchrun(out, data, "--strategy", "fsdp", "--max-steps", "3")  # resumes: trainables + optimizer state
    single = _single(tmp_path, data)
    rows = _rows(out / "metrics.csv")
    assert [float(r["loss"]) for r in rows] == pytest.approx(single.losses, rel=1e-5)
    _same_weights(out / "checkpoints" / "step-00000003" / "trainable.safetensors",
                  single.checkpoint / "trainable.safetensors")
    from ibllm_agent.model import ImageBindLLM

    model = ImageBindLLM.from_pretrained(out / "export" / "model", device="cpu", dtype=torch.float32)
    assert model.generate("Repeat the word cat.", temperature=0, max_new_tokens=3).completion_tokens > 0
