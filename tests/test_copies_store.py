"""datacheck copies against an audit folder (issue #20): the training (and held-out) set read from the audit's
store, no audited image decoded again; the same copies as against the folder when the images are small (the
thumbnails are the images); large images compared on the thumbnails, identical ones still exact; a store
that cannot give what copies needs, or is not a current audit, is a one-line error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import datacheck
from datacheck.auditing import run_audit
from datacheck.cli import main
from datacheck.copies import find_copies
from datacheck.errors import UserError
from datacheck.stream import StreamOptions

SO = StreamOptions(workers=1, progress=False)


def _folder(path: Path, images: np.ndarray, first: int = 0) -> Path:
    """(N, C, H, W) uint8 images as PNGs in ``path``."""
    path.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0)).save(path / f"im{first + i:04d}.png")
    return path


@pytest.fixture(scope="module")
def digits_audited(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8x8 digits: a training folder and a held-out folder, each with its streamed audit; a generated set
    (.npz) of 20 training digits, 10 brightened training digits and 30 digits neither set holds."""
    base = tmp_path_factory.mktemp("copies_store")
    d = datacheck.load("digits")
    train = _folder(base / "train", d.images[:600])
    held = _folder(base / "held", d.images[1000:1300], 1000)
    for src, out in ((train, "train_aud"), (held, "held_aud")):
        run_audit(str(src), ["exact_duplicate"], None, base / out, stream=True, stream_options=SO)
    bright = np.clip(d.images[100:110].astype(int) + 8, 0, 255).astype(np.uint8)
    fake = np.concatenate([d.images[:20], bright, d.images[1500:1530]])
    np.savez(base / "fake.npz", images=fake[:, 0], ids=np.array([f"f{i}" for i in range(len(fake))]))
    return {"base": base, "train": train, "held": held, "train_aud": base / "train_aud",
            "held_aud": base / "held_aud", "fake": base / "fake.npz"}


def test_copies_against_an_audit_are_the_copies_against_its_folder(
        digits_audited: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = digits_audited
    common = ["copies", str(p["fake"]), "--json"]
    assert main([*common, str(tmp_path / "f.json"), "--train", str(p["train"]), "--heldout", str(p["held"]),
                 "--out", str(tmp_path / "folder.csv")]) == 0
    assert "store" not in capsys.readouterr().out
    assert main([*common, str(tmp_path / "s.json"), "--train", str(p["train_aud"]), "--heldout", str(p["held_aud"]),
                 "--out", str(tmp_path / "store.csv"), "--html", str(tmp_path / "s.html")]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert (f"; training set from the audit store {p['train_aud'] / 'store'}, held-out set from the audit store "
            f"{p['held_aud'] / 'store'} (thumbnails compared at 1x8x8, no audited image decoded)") in line
    # 8x8 images: the thumbnails are the images, so the very same table, threshold and rates
    assert (tmp_path / "store.csv").read_text() == (tmp_path / "folder.csv").read_text()
    f, s = json.loads((tmp_path / "f.json").read_text()), json.loads((tmp_path / "s.json").read_text())
    assert s.pop("train_store") == str(p["train_aud"] / "store") and s.pop("compared_at") == "1x8x8"
    assert s.pop("heldout_store") == str(p["held_aud"] / "store") and s == f
    df = pd.read_csv(tmp_path / "store.csv")
    assert {f"f{i}" for i in range(20)} <= set(df[df.kind == "exact"].fake_id)  # the planted copies
    assert {f"f{i}" for i in range(20, 30)} <= set(df.fake_id)
    assert s["n_copies"] - 30 <= 1  # the unseen digits: at most one false alarm
    # the Python API takes the audit folder too
    api = find_copies(str(p["fake"]), train=str(p["train_aud"]))
    pd.testing.assert_frame_equal(api, find_copies(str(p["fake"]), train=str(p["train"])))
    assert api.attrs["summary"]["train_store"] == str(p["train_aud"] / "store")


def test_copies_never_opens_the_audited_files(digits_audited: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    p = digits_audited
    assert main(["copies", str(p["fake"]), "--train", str(p["train_aud"]), "--out", str(tmp_path / "a.csv")]) == 0
    import datacheck.decode
    import datacheck.sources

    def no_decoding(*a, **k):
        raise AssertionError("copies against an audit must not decode the audited images")

    monkeypatch.setattr(datacheck.sources, "decode_paths", no_decoding)
    monkeypatch.setattr(datacheck.decode, "decode_file", no_decoding)
    gone = p["base"] / "train_gone"
    p["train"].rename(gone)  # the audited folder is not there at all
    try:
        assert main(["copies", str(p["fake"]), "--train", str(p["train_aud"]), "--out", str(tmp_path / "b.csv")]) == 0
    finally:
        gone.rename(p["train"])
    assert (tmp_path / "b.csv").read_text() == (tmp_path / "a.csv").read_text()


def _blobs(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    """(n, 3, side, side) smooth colour images: 6x6 noise blown up."""
    small = np.clip(rng.normal(128, 50, (n, 6, 6, 3)), 0, 255).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((side, side), Image.BILINEAR)).transpose(2, 0, 1)
                     for s in small])


def test_large_images_are_compared_on_the_thumbnails_and_identical_ones_stay_exact(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """256 px images: thumbnails 64x64 (a 4x shrink, which the audit makes in two steps); a generated folder's
    images are shrunk as the audit shrank its own, so an identical image is still an exact copy."""
    rng = np.random.default_rng(0)
    train = _blobs(rng, 120, 256)
    src = _folder(tmp_path / "train", train)
    run_audit(str(src), ["exact_duplicate"], None, tmp_path / "aud", stream=True, stream_options=SO)
    bright = np.clip(train[10:15].astype(int) + 8, 0, 255).astype(np.uint8)
    fake = _folder(tmp_path / "fake", np.concatenate([train[:10], bright, _blobs(rng, 10, 256)]))
    assert main(["copies", str(fake), "--train", str(tmp_path / "aud"), "--out", str(tmp_path / "c.csv")]) == 0
    assert "compared at 3x64x64" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "c.csv")
    exact = df[df.kind == "exact"]
    assert sorted(exact.fake_id) == [f"im{i:04d}.png" for i in range(10)] and (exact.similarity == 1.0).all()
    assert list(exact.fake_id.str[2:6].astype(int)) == list(exact.train_id.str[2:6].astype(int))
    assert sorted(df.fake_id) == [f"im{i:04d}.png" for i in range(15)]  # the brightened ones too, no fresh one
    # the same from an .npz of the full-size images (an array source is shrunk the same way)
    np.savez(tmp_path / "fake.npz", images=train[:10].transpose(0, 2, 3, 1))
    api = find_copies(str(tmp_path / "fake.npz"), str(tmp_path / "aud"))
    assert (api.kind == "exact").sum() == 10
    # a smaller comparison size is given by shrinking the thumbnails; a larger one cannot be
    assert main(["copies", str(fake), "--train", str(tmp_path / "aud"), "--size", "32x32",
                 "--out", str(tmp_path / "d.csv")]) == 0
    assert "compared at 3x32x32" in capsys.readouterr().out
    assert sorted(pd.read_csv(tmp_path / "d.csv").fake_id) == sorted(df.fake_id)
    assert main(["copies", str(fake), "--train", str(tmp_path / "aud"), "--size", "128x128",
                 "--out", str(tmp_path / "e.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "keeps thumbnails of 64x64, smaller than the 128x128" in err and "--size 64x64" in err
    assert not (tmp_path / "e.csv").exists()


def test_what_is_not_a_current_audit_is_a_one_line_error(digits_audited: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    p = digits_audited
    mem = tmp_path / "mem"  # an audit kept in memory: findings and summary, no store
    run_audit(str(p["held"]), ["exact_duplicate"], None, mem, stream=False)
    old = tmp_path / "old"
    shutil.copytree(p["train_aud"] / "store", old / "store")
    idx = json.loads((old / "store" / "index.json").read_text())
    (old / "store" / "index.json").write_text(json.dumps({**idx, "version": 1}))
    for flag, bad, says in (("--train", mem, "not an audit with a store"), ("--heldout", mem, "not an audit with a store"),
                            ("--train", old, "another version")):
        train = str(p["train_aud"]) if flag == "--heldout" else str(bad)
        args = ["copies", str(p["fake"]), "--train", train, "--out", str(tmp_path / "x.csv")]
        assert main(args + ([flag, str(bad)] if flag == "--heldout" else [])) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(UserError, match="another version"):
        find_copies(str(p["fake"]), train=str(old))
