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
