"""The same two-arm study runs on a local Ray instance (the cluster executor) unchanged, its two arms
shipped as one fused group (one Ray task)."""
from __future__ import annotations


import pandas as pd
import pytest

from reports.cli import main


def test_two_arm_study_on_local_ray(tmp_path, local_ray, capsys) -> None:
    out = tmp_path / "ray-study"
    args = ["ablate", "--out", str(out), "--executor", "ray", "--workers", "1", "--factors", "corruption",
            "--levels", "corruption=0.5", "--models", "vae", "--seeds", "1", "--steps", "3", "--n-samples", "60", "--fuse", "on"]
    assert main(args) == 0
    df = pd.read_csv(out / "results.csv")
    assert sorted(df.arm_id) == ["baseline-vae-s0", "corruption-0.5-vae-s0"]
    assert df.fid.notna().all() and (df.n_fake == 60).all()
    assert set(df.trained) == {"fused x2"}  # one Ray task trained both arms as one job
    # the driver wrote what the Ray workers returned
    for arm in df.arm_id:
        assert (out / "arms" / arm / "samples.png").stat().st_size > 0
        assert (out / "arms" / arm / "result.json").exists()
    assert (out / "report.html").exists()
    capsys.readouterr()
    # resume works the same way with Ray
    assert main(args) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out
