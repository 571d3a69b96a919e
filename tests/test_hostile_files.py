"""Messy folders: broken, hostile and unusual files are recorded with a reason or decoded correctly,
never a crash or a hang, and the user's files are never touched."""
from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datacheck
import datacheck.decode as dec
from datacheck import UserError


# ----------------------------------------------------------------------------- helpers
def _png_bytes(arr: np.ndarray, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries no pixel data: decoding it would fail with a
    'truncated' error, so a 'bomb' reason proves the refusal came from the header alone."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under root (without following links) -> (mtime_ns, size, sha256 of bytes)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = ""
            if os.path.isfile(p) and not os.path.islink(p) and os.access(p, os.R_OK):
                digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_mtime_ns, st.st_size, digest)
    return out


def _gradient(h: int = 12, w: int = 16) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 15, y * 20, (x + y) * 8], -1).astype(np.uint8)


@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        (root / "good" / f"g{i}.png").write_bytes(_png_bytes(_gradient()))
    full = _png_bytes(_gradient(64, 64) + rng.integers(0, 20, (64, 64, 3), dtype=np.uint8))
    bad = root / "bad"
    (bad / "empty.png").write_bytes(b"")
    (bad / "truncated.png").write_bytes(full[: len(full) // 2])
    jpg = bad / "_tmp.jpg"
    Image.fromarray(_gradient(64, 64)).save(jpg, quality=90)
    data = jpg.read_bytes()
    jpg.unlink()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (bad / "text.jpg").write_text("this is not a picture\n")
    (bad / "random.png").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (bad / "bomb.png").write_bytes(_png_header_only(10_000, 10_000))  # 1e8 px > 64e6 default
    (bad / "huge_bomb.png").write_bytes(_png_header_only(100_000, 100_000))  # beyond PIL's own limit
    (root / "readme.txt").write_text("notes")  # not an image, no image extension: skipped
    (root / "data.bin").write_bytes(rng.integers(0, 256, 100, dtype=np.uint8).tobytes())
    (root / "plan.txt").write_text("P3 is the parking level\n")  # starts like a PPM header: still just text
    (bad / "cut_png.dat").write_bytes(full[:200])  # PNG signature, odd name: a broken image all the same
    os.symlink(root / "nowhere.png", bad / "dangling.png")
    return root


# ----------------------------------------------------------------------------- broken files
def test_broken_files_are_recorded_with_reasons_and_the_rest_loads(messy: Path) -> None:
    before = _snapshot(messy)
    ds = datacheck.load(messy)
    assert ds.ids == ("good/g0.png", "good/g1.png", "good/g2.png")
    assert ds.class_names == ("good",) and ds.labels.tolist() == [0, 0, 0]
    reasons = {u["path"]: u["reason"] for u in ds.unreadable}
    assert set(reasons) == {
        "bad/empty.png", "bad/truncated.png", "bad/truncated.jpg", "bad/text.jpg",
        "bad/random.png", "bad/bomb.png", "bad/huge_bomb.png", "bad/dangling.png", "bad/cut_png.dat",
    }
    assert "empty" in reasons["bad/empty.png"]
    assert "decode" in reasons["bad/truncated.png"] and "decode" in reasons["bad/truncated.jpg"]
    assert "text" in reasons["bad/text.jpg"]
    assert "not an image" in reasons["bad/random.png"]
    assert "decompression bomb" in reasons["bad/bomb.png"] and "10000x10000" in reasons["bad/bomb.png"]
    assert "decompression bomb" in reasons["bad/huge_bomb.png"]
    assert "broken symbolic link" in reasons["bad/dangling.png"]
    assert "decode" in reasons["bad/cut_png.dat"]
    assert ds.skipped == 3  # readme.txt, data.bin, plan.txt
    assert _snapshot(messy) == before, "loading changed the user's folder"


def test_bomb_is_refused_from_the_header_before_decoding(tmp_path: Path) -> None:
    # header-only file: had the pixels been decoded, the reason would be a decode error
    r = dec.decode_file(str(_write(tmp_path / "b.png", _png_header_only(3000, 3000))), max_pixels=1_000_000)
    assert r.status == "unreadable" and "decompression bomb" in r.reason and "9,000,000 pixels" in r.reason
    # the limit is an option: a real 20x20 image over max_pixels=100 is refused, one under it loads
    (tmp_path / "f").mkdir()
    _write(tmp_path / "f" / "big.png", _png_bytes(np.zeros((20, 20), np.uint8)))
    _write(tmp_path / "f" / "small.png", _png_bytes(np.zeros((8, 8), np.uint8)))
    ds = datacheck.load(tmp_path / "f", max_pixels=100)
    assert ds.ids == ("small.png",)
    assert [u["path"] for u in ds.unreadable] == ["big.png"] and "400 pixels" in ds.unreadable[0]["reason"]


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_permission_denied_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "f"
    root.mkdir()
    _write(root / "ok.png", _png_bytes(_gradient()))
    locked = _write(root / "locked.png", _png_bytes(_gradient()))
    if os.geteuid() == 0:  # root reads mode-000 files anyway: simulate the kernel's answer
        real_open = open

        def fake_open(path, *a, **k):
            if str(path).endswith("locked.png"):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *a, **k)

        monkeypatch.setattr(dec, "open", fake_open, raising=False)
    else:
        locked.chmod(0)
    try:
        ds = datacheck.load(root)
    finally:
        locked.chmod(0o644)
    assert ds.ids == ("ok.png",)
    assert ds.unreadable == ({"path": "locked.png", "reason": "permission denied"},)


def test_nothing_decodable_is_a_one_line_user_error(messy: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no decodable image") as e:
        datacheck.load(messy / "bad")
    assert "\n" not in str(e.value) and "unreadable" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no files"):
        datacheck.load(tmp_path / "empty")


# ----------------------------------------------------------------------------- unusual modes
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    vals = np.array([[0, 257 * 64, 257 * 128, 65535]], np.uint16)
    Image.fromarray(vals).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    (tmp_path / "x").mkdir()
    os.replace(tmp_path / "deep.png", tmp_path / "x" / "deep.png")
    ds = datacheck.load(tmp_path / "x")
    assert ds.images.shape == (1, 1, 1, 4)
    assert ds.images[0, 0, 0].tolist() == [0, 64, 128, 255]
    assert ds.orig_modes[0].startswith("I")


def test_cmyk_palette_alpha_and_la_convert_over_white(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    root.mkdir()
    # CMYK (lossless TIFF): pure magenta+yellow = red
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(root / "cmyk.tif")
    # palette with a transparent index: index 0 transparent -> white, index 1 = blue
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.save(root / "pal.png", transparency=0)
    # RGBA: alpha 0, 255 and 128 over white
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[0, 2, 3] = 255, 0, 128
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    # LA: gray 0 with alpha 0 -> white
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 1] = 0
    la[0, 0] = (10, 255)
    Image.fromarray(la, "LA").save(root / "la.png")
    ds = datacheck.load(root)
    assert ds.shape == (3, 4, 4) and ds.policy["alpha_background"] == "white"
    img = {i: ds.images[k].transpose(1, 2, 0) for k, i in enumerate(ds.ids)}
    modes = dict(zip(ds.ids, ds.orig_modes))
    assert modes == {"cmyk.tif": "CMYK", "la.png": "LA", "pal.png": "P", "rgba.png": "RGBA"}
    assert img["cmyk.tif"][0, 0].tolist() == [255, 0, 0]
    assert img["pal.png"][0, 0].tolist() == [0, 0, 255] and img["pal.png"][1, 1].tolist() == [255, 255, 255]
    assert img["rgba.png"][0, 0].tolist() == [0, 200, 0]
    assert img["rgba.png"][0, 1].tolist() == [255, 255, 255]
    assert img["rgba.png"][0, 2].tolist() == [127, 227, 127]  # (128 * (0, 200, 0) + 127 * 255) / 255, rounded
    assert img["la.png"][0, 0].tolist() == [10, 10, 10] and img["la.png"][1, 1].tolist() == [255, 255, 255]


def test_animated_gif_and_png_give_the_first_frame(tmp_path: Path) -> None:
    root = tmp_path / "anim"
    root.mkdir()
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(root / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(root / "a.png", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(root / "a.png").n_frames == 3 and Image.open(root / "a.gif").n_frames == 3
    ds = datacheck.load(root)
    assert ds.ids == ("a.gif", "a.png")
    for k in range(2):
        assert ds.images[k, :, 3, 3].tolist() == [255, 0, 0]


def test_exif_rotated_jpeg_is_upright(tmp_path: Path) -> None:
    root = tmp_path / "exif"
    root.mkdir()
    a = np.zeros((16, 32), np.uint8)  # stored 16 high, 32 wide: left half black, right half white
    a[:, 16:] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(root / "rot.jpg", exif=exif, quality=95)
    ds = datacheck.load(root)
    assert ds.orig_sizes[0].tolist() == [32, 16] and ds.shape == (1, 32, 16)
    top, bottom = ds.images[0, 0, :12].mean(), ds.images[0, 0, 20:].mean()
    assert top < 20 and bottom > 235  # the left (black) half is now on top


# ----------------------------------------------------------------------------- walking
@pytest.mark.timeout(20)
def test_symlink_loops_do_not_hang_the_walk(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    (root / "a" / "deep").mkdir(parents=True)
    _write(root / "a" / "x.png", _png_bytes(_gradient()))
    _write(root / "a" / "deep" / "y.png", _png_bytes(_gradient()))
    os.symlink(root / "a", root / "a" / "deep" / "back_to_a")  # loop to an ancestor
    os.symlink(root, root / "a" / "to_root")  # loop to the root
    os.symlink(root / "a" / "deep", root / "a" / "deep" / "self_parent")  # loop to itself
    os.symlink("self.png", root / "a" / "self.png")  # a file link that points at itself
    before = _snapshot(root)
    ds = datacheck.load(root)
    assert ds.ids == ("a/deep/y.png", "a/x.png") and ds.class_names == ("a",)
    assert [u["path"] for u in ds.unreadable] == ["a/self.png"] and "symbolic links" in ds.unreadable[0]["reason"]
    assert _snapshot(root) == before


@pytest.mark.timeout(20)
def test_fifo_with_image_name_is_skipped_not_opened(tmp_path: Path) -> None:
    root = tmp_path / "fifo"
    root.mkdir()
    _write(root / "ok.png", _png_bytes(_gradient()))
    os.mkfifo(root / "pipe.png")  # opening it for reading would block forever
    ds = datacheck.load(root)
    assert ds.ids == ("ok.png",) and ds.skipped == 1


def test_hidden_entries_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "h"
    (root / ".ipynb_checkpoints").mkdir(parents=True)
    _write(root / ".ipynb_checkpoints" / "copy.png", _png_bytes(_gradient()))
    _write(root / "._ok.png", b"\x00\x05\x16\x07 AppleDouble resource fork")
    _write(root / "ok.png", _png_bytes(_gradient()))
    ds = datacheck.load(root)
    assert ds.ids == ("ok.png",) and ds.unreadable == () and ds.skipped == 2 and ds.class_names == ()


def test_undecodable_file_names_load_and_print(tmp_path: Path, capsys) -> None:
    from datacheck.cli import main

    root = tmp_path / "names"
    root.mkdir()
    broot = os.fsencode(root)
    with open(os.path.join(broot, b"caf\xe9.png"), "wb") as fh:  # latin-1 byte: not valid UTF-8
        fh.write(_png_bytes(_gradient()))
    with open(os.path.join(broot, b"bad\xff\nname.png"), "wb") as fh:
        fh.write(b"garbage")
    assert main(["profile", str(root)]) == 0
    out = capsys.readouterr().out
    assert "bad\\xff\\nname.png: " in out and "images       1" in out


def test_undecodable_file_names_stream_into_a_store_and_reaudit(tmp_path: Path, capsys) -> None:
    """The store names rows by a hash of each id: an id with lone surrogates (a file name that is not
    UTF-8) must hash, not raise, in the near-duplicate and graph stores, first audit and re-audit; and
    the written findings hold it as a \\xNN escape (the audit's writer raised UnicodeEncodeError)."""
    import json

    from datacheck.cli import main

    root = tmp_path / "names"
    root.mkdir()
    broot = os.fsencode(root)
    rng = np.random.default_rng(0)
    for i in range(30):
        name = b"caf\xe9%02d.png" % i if i % 3 == 0 else b"img%02d.png" % i
        with open(os.path.join(broot, name), "wb") as fh:
            fh.write(_png_bytes(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)))
    with open(os.path.join(broot, b"copy\xff.png"), "wb") as fh:  # flagged: its id reaches findings.csv
        fh.write(open(os.path.join(broot, b"img01.png"), "rb").read())
    out = tmp_path / "audit"
    modes = []
    for _ in range(2):  # first audit, then a re-audit from the store
        assert main(["audit", str(root), "--out", str(out), "--stream", "on"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_images"] == 31 and "near_duplicate" in summary["checks"]
        findings = (out / "findings.csv").read_bytes().decode("utf-8")  # valid UTF-8, the name escaped
        assert "copy\\xff.png,copy\\xff.png,exact_duplicate" in findings
        modes.append([g["update"]["mode"] for g in summary["neighbors"].values()])
    assert modes == [["built"], ["reused"]]
    assert "reused from the previous audit" in summary["checks"]["near_duplicate"]["summary"]["operating_point"]["note"]


def test_large_jpeg_with_target_size_decodes_at_reduced_scale(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    y, x = np.mgrid[0:512, 0:384]
    arr = np.stack([x % 256, y % 256, (x // 2 + y // 3) % 256], -1).astype(np.uint8)
    Image.fromarray(arr).save(root / "p.jpg", quality=92)
    ds = datacheck.load(root, size=(32, 24))
    assert ds.orig_sizes.tolist() == [[512, 384]] and ds.shape == (3, 32, 24)
    full = np.asarray(Image.open(root / "p.jpg").convert("RGB").resize((24, 32), Image.Resampling.BILINEAR))
    assert np.abs(ds.images[0].transpose(1, 2, 0).astype(int) - full).mean() < 4  # same picture


def test_unlistable_subfolder_is_unreadable_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "f"
    _write((root / "open").mkdir(parents=True) or root / "open" / "a.png", _png_bytes(_gradient()))
    (root / "locked").mkdir()
    _write(root / "locked" / "b.png", _png_bytes(_gradient()))
    if os.geteuid() == 0:  # root lists mode-000 folders anyway: simulate the kernel's answer
        import datacheck.sources as src

        real = os.scandir

        def fake_scandir(path):
            if str(path).endswith("locked"):
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(src.os, "scandir", fake_scandir)
    else:
        (root / "locked").chmod(0)
    try:
        ds = datacheck.load(root)
    finally:
        (root / "locked").chmod(0o755)
    assert ds.ids == ("open/a.png",)
    assert ds.unreadable == ({"path": "locked/", "reason": "cannot list folder: Permission denied"},)


def test_streamed_audit_of_a_messy_folder_records_the_same_files_and_changes_nothing(messy: Path, tmp_path: Path) -> None:
    from datacheck.auditing import run_audit

    before = _snapshot(messy)
    ds = datacheck.load(messy)
    run = run_audit(messy, out=tmp_path / "audit", stream=True, checks=["unreadable", "dark"],
                    load_options={"workers": 1})
    assert run.ds.ids == ds.ids and run.ds.unreadable == ds.unreadable and run.ds.skipped == ds.skipped
    assert set(run.findings.loc[run.findings.check == "unreadable", "id"]) == {u["path"] for u in ds.unreadable}
    assert _snapshot(messy) == before, "the streamed audit changed the user's folder"
