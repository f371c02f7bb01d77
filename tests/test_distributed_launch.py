"""``torchrun --nproc-per-node 2 -m mtml_lib.train``: notebook 04's smoke MAML learner trained on two gloo
processes equals the one trained on one process, and lands in the checkpoint file the notebook reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtml_lib import fewshot

LEARNER = "MAML 5-way"


def launch(prefix: list[str], cache: Path, out: Path) -> str:
    env = {**os.environ, "MTML_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*prefix, "-m", "mtml_lib.train", "--profile", "smoke", "--learner", LEARNER,
                           "--threads", "1", "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_two_processes_train_the_one_process_learner(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    cache = tmp_path / "cache"
    two = launch([str(torchrun), "--standalone", "--nproc-per-node", "2"], cache, tmp_path / "two")
    assert "on 2 process(es)" in two
    written = sorted((cache / "fewshot").glob("maml-5-way-*.pt"))
    assert len(written) == 2  # the smoke profile's two seeds, in the notebook's checkpoint files
    shutil.move(cache / "fewshot", tmp_path / "fewshot-two")  # so that the next run trains afresh
    one = launch([sys.executable], cache, tmp_path / "one")
    assert "on 1 process(es)" in one
    for seed in (0, 1):
        a = fewshot.load(tmp_path / "two" / f"maml-5-way-seed{seed}.pt")
        b = fewshot.load(tmp_path / "one" / f"maml-5-way-seed{seed}.pt")
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
        assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=1e-6)
        pa, pb = a.learner.state_dict(), b.learner.state_dict()
        assert pa.keys() == pb.keys()
        for name in pa:
            # a convolution's bias feeds a normalisation that subtracts it again: its meta-gradient is zero
            # up to float32 rounding, which Adam's first step scales to ±lr; it changes no output
            tol = 1e-3 if name.endswith(".0.bias") else 1e-6
            assert torch.allclose(pa[name], pb[name], rtol=0, atol=tol), name
