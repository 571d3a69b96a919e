"""generative CLI and conditional sampling, through generative.cli.main."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import datacheck
import generative
from generative.cli import main


@pytest.fixture(scope="module")
def data_npz(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("d") / "digits300.npz"
    datacheck.load("digits").subset(np.arange(300)).save(p)
    return p


def test_train_then_sample_unconditional(data_npz: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    rc = main(["train", "--model", "dcgan", "--data", str(data_npz), "--out", str(run), "--steps", "3",
               "--batch-size", "16", "--no-progress", "--set", "ema=0.9"])
    out = capsys.readouterr().out
    assert rc == 0 and "trained dcgan for 3 steps" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_config"]["ema"] == 0.9 and cfg["train"]["batch_size"] == 16
    rc = main(["sample", str(run), "--n", "7", "--out", str(tmp_path / "s.npz"), "--seed", "2"])
    assert rc == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (7, 8, 8, 1) and z["images"].dtype == np.uint8
        assert "labels" not in z.files
    # --label on an unconditional model is a one-line error.
    rc = main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "x.npz"), "--label", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "class-conditional" in err


def test_conditional_sampling_honours_labels(data_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "c"
    assert main(["train", "--model", "cgan", "--data", str(data_npz), "--out", str(run), "--steps", "2",
                 "--batch-size", "16", "--no-progress"]) == 0
    assert main(["sample", str(run), "--n", "6", "--out", str(tmp_path / "l.npz"), "--label", "3"]) == 0
    with np.load(tmp_path / "l.npz") as z:
        assert z["images"].shape == (6, 8, 8, 1)
        np.testing.assert_array_equal(z["labels"], np.full(6, 3))
    assert main(["sample", str(run), "--n", "20", "--out", str(tmp_path / "b.npz")]) == 0
    with np.load(tmp_path / "b.npz") as z:
        np.testing.assert_array_equal(np.bincount(z["labels"]), np.full(10, 2))
    model = generative.load(run)
    g = torch.Generator().manual_seed(0)
    imgs, labels = model.sample_with_labels(4, generator=g, labels=[0, 1, 2, 9])
    assert imgs.shape == (4, 1, 8, 8) and labels.tolist() == [0, 1, 2, 9]
    # Different labels with the same noise give different images: the label is used.
    a = model.sample(10, generator=torch.Generator().manual_seed(5), labels=0)
    b = model.sample(10, generator=torch.Generator().manual_seed(5), labels=7)
    assert not np.array_equal(a, b)
    with pytest.raises(datacheck.UserError, match=r"labels must lie in \[0, 10\)"):
        model.sample(2, labels=10)


def test_cli_errors_are_one_line(data_npz: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("hello")
    rc = main(["sample", str(bad), "--n", "2", "--out", str(tmp_path / "o.npz")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not a generative checkpoint" in err
    rc = main(["train", "--model", "vae", "--data", str(data_npz), "--out", str(tmp_path / "r"), "--steps", "1",
               "--set", "nope=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "unknown vae model option nope" in err and "beta" in err
    rc = main(["models"])
    out = capsys.readouterr().out
    assert rc == 0 and all(name in out for name in generative.MODELS)
