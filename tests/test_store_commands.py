"""Commands that read an audit's store (issue #20): check-new, dedupe and split given an audit folder, and
the content identity of the incremental cache."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datacheck import stream
from datacheck.auditing import run_audit
from datacheck.cli import main
from datacheck.stream import StreamOptions


def _blob(rng: np.random.Generator) -> np.ndarray:
    small = np.clip(rng.normal(128, 50, (6, 6, 3)), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((32, 32), Image.BILINEAR))


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[np.ndarray]]:
    """(source folder of 48 32x32 PNGs in two classes, its streamed audit folder, the images)."""
    base = tmp_path_factory.mktemp("store")
    src = base / "src"
    rng = np.random.default_rng(0)
    imgs = [_blob(rng) for _ in range(48)]
    for i, a in enumerate(imgs):
        (src / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(src / "ab"[i % 2] / f"im{i:02d}.png")
    Image.fromarray(imgs[4]).save(src / "a" / "copy04.png")  # an exact copy
    run_audit(str(src), ["exact_duplicate", "near_duplicate"], None, base / "aud", stream=True,
              stream_options=StreamOptions(workers=1, progress=False))
    return src, base / "aud", imgs


def test_check_new_finds_exact_and_near_copies(audited: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, aud, imgs = audited
    new = tmp_path / "new"
    new.mkdir()
    Image.fromarray(imgs[3]).save(new / "same3.png")
    Image.fromarray(np.clip(imgs[5].astype(int) * 1.1 + 4, 0, 255).astype(np.uint8)).save(new / "bright5.png")
    Image.fromarray(imgs[7]).save(new / "q7.jpg", quality=85)
    Image.fromarray(_blob(np.random.default_rng(9))).save(new / "fresh.png")
    (new / "broken.png").write_bytes(b"not an image")
    before = {p: p.stat().st_mtime_ns for p in src.rglob("*")}
    assert main(["check-new", str(new), "--against", str(aud), "--out", str(tmp_path / "m.csv")]) == 0
    rows = {r.split(",")[0]: r.split(",") for r in (tmp_path / "m.csv").read_text().splitlines()[1:]}
    assert set(rows) == {"same3.png", "bright5.png", "q7.jpg"}
    assert rows["same3.png"][1:2] == ["b/im03.png"] and rows["same3.png"][3] == "exact"
    assert rows["bright5.png"][1] == "b/im05.png" and rows["bright5.png"][3] == "near"
    assert rows["q7.jpg"][1] == "b/im07.png" and rows["q7.jpg"][3] == "near"
    assert "3 of 4 new images duplicate" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in src.rglob("*")}  # the audited files were not touched


def test_check_new_refuses_what_is_not_a_current_audit(audited: tuple, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    src, aud, _ = audited
    assert main(["check-new", str(src), "--against", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an audit with a store" in err and len(err.splitlines()) == 1
    old = tmp_path / "old"
    shutil.copytree(aud / "store", old / "store")
    idx = json.loads((old / "store" / "index.json").read_text())
    (old / "store" / "index.json").write_text(json.dumps({**idx, "version": 1}))
    assert main(["check-new", str(src), "--against", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert "another version" in err and len(err.splitlines()) == 1


def test_dedupe_and_split_read_the_store(audited: tuple, tmp_path: Path) -> None:
    src, aud, _ = audited
    for cmd in ("dedupe", "split"):
        assert main([cmd, str(aud), "--out", str(tmp_path / f"{cmd}_store.csv")]) == 0
        assert main([cmd, str(src), "--out", str(tmp_path / f"{cmd}_src.csv")]) == 0
        assert (tmp_path / f"{cmd}_store.csv").read_text() == (tmp_path / f"{cmd}_src.csv").read_text()
    assert "copy04.png" in (tmp_path / "dedupe_store.csv").read_text()


def test_content_identity_skips_touched_files(audited: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, _aud, _ = audited
    work = tmp_path / "src"
    shutil.copytree(src, work)
    calls: list[str] = []
    real = stream.measure_file
    monkeypatch.setattr(stream, "measure_file", lambda p, **kw: calls.append(p) or real(p, **kw))
    so = StreamOptions(workers=1, progress=False, identity="content")
    run_audit(str(work), ["dark"], None, tmp_path / "aud", stream=True, stream_options=so)
    assert len(calls) == 49
    for p in list((work / "a").glob("*.png"))[:5]:
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))  # touched, same bytes
    calls.clear()
    run_audit(str(work), ["dark"], None, tmp_path / "aud", stream=True, stream_options=so)
    assert calls == []
    calls.clear()
    run_audit(str(work), ["dark"], None, tmp_path / "aud", stream=True,
              stream_options=StreamOptions(workers=1, progress=False))  # stat mode after the content run:
    assert calls == []  # the content run recorded their new modification times


def test_profile_of_an_audit_folder_is_the_folders_profile_without_decoding(
        audited: tuple, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    src, aud, _ = audited
    assert main(["profile", str(src)]) == 0
    direct = capsys.readouterr().out.splitlines()
    import datacheck.sources

    def no_decoding(*a, **k):
        raise AssertionError("an audit folder's profile must not decode the images again")

    monkeypatch.setattr(datacheck.sources, "decode_paths", no_decoding)
    assert main(["profile", str(aud), "--json", str(tmp_path / "p.json")]) == 0
    stored = capsys.readouterr().out.splitlines()
    # the same images, sizes, channel statistics and fingerprint; only the policy line says it streamed
    assert [x for x in direct if not x.startswith("policy")] == [x for x in stored if not x.startswith("policy")]
    assert json.loads((tmp_path / "p.json").read_text())["fingerprint"] in "\n".join(stored)
    (aud / "profile.json").rename(aud / "gone.json")
    try:
        assert main(["profile", str(aud)]) == 2
        assert "no readable profile.json" in capsys.readouterr().err
    finally:
        (aud / "gone.json").rename(aud / "profile.json")
