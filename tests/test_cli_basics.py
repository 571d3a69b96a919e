from __future__ import annotations

import json

import pytest

from datacheck.cli import main as datacheck_main
from generative.cli import main as generative_main
from reports.cli import main as reports_main


def test_profile_digits_prints_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "p.json"
    assert datacheck_main(["profile", "digits", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1797" in text and "fingerprint" in text
    prof = json.loads(out.read_text())
    for key in ("n_images", "n_classes", "class_counts", "shape", "sizes_found", "unreadable", "skipped", "fingerprint"):
        assert key in prof
    assert prof["n_images"] == 1797 and prof["n_classes"] == 10 and prof["shape"] == [1, 8, 8]
    assert sum(prof["class_counts"].values()) == 1797


@pytest.mark.parametrize("main", [datacheck_main, generative_main, reports_main])
def test_unknown_subcommand_is_a_one_line_error(main, capsys) -> None:
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err


def test_missing_source_is_a_one_line_error(tmp_path, capsys) -> None:
    assert datacheck_main(["profile", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and "Traceback" not in err


def test_no_command_writes_into_a_source_folder(tmp_path, capsys) -> None:
    """generative train, reports evaluate and reports ablate refuse an --out inside the data folder, as
    datacheck does (a file written there would be read back as data); the folder is left unchanged."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(60):
        (data / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(data / f"c{i % 2}" / f"{i}.png")
    fake = tmp_path / "fake.npz"
    np.savez(fake, images=rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8))
    before = sorted((p.relative_to(data), p.read_bytes()) for p in data.rglob("*") if p.is_file())
    runs = [
        (generative_main, ["train", "--model", "vae", "--data", str(data), "--out", str(data / "run"), "--steps", "2",
                           "--no-progress"]),
        (reports_main, ["evaluate", "--real", str(data), "--fake", str(fake), "--out", str(data / "eval.json"),
                        "--features", "pixels"]),
        (reports_main, ["ablate", "--data", str(data), "--out", str(data / "study"), "--factors", "size",
                        "--levels", "size=0.5", "--models", "vae", "--seeds", "1", "--steps", "2",
                        "--n-samples", "20", "--workers", "1"]),
    ]
    for main, argv in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is inside the source folder" in err, err
    assert sorted((p.relative_to(data), p.read_bytes()) for p in data.rglob("*") if p.is_file()) == before
