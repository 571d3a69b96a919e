"""Every source kind, with small files the tests make, plus the shape policy, options and CLI errors."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datacheck
from datacheck import UserError
from datacheck import sources
from datacheck.cli import main as datacheck_main
from datacheck.sources import detect_kind


def _img(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gray(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


# ----------------------------------------------------------------------------- folder
def test_folder_classes_content_detection_and_ids(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    _img(root / "cats" / "b.png", _rgb(8, 8, 1))
    _img(root / "cats" / "a.png", _rgb(8, 8, 2))
    _img(root / "dogs" / "puppies" / "c.png", _rgb(8, 8, 3))  # nested: class is the first level
    _img(root / "dogs" / "d.bmp", _rgb(8, 8, 4))
    (root / "dogs" / "no_extension").write_bytes((root / "cats" / "a.png").read_bytes())  # content decides
    (root / "dogs" / "photo.dat").write_bytes((root / "cats" / "b.png").read_bytes())
    _img(root / "loose.png", _rgb(8, 8, 5))  # directly in the root: unlabeled
    (root / "cats" / "notes.txt").write_text("hello")
    (root / "docs").mkdir()
    (root / "docs" / "readme.md").write_text("# not a class: no images here")
    ds = datacheck.load(str(root))
    assert detect_kind(str(root)) == "folder"
    assert ds.ids == ("cats/a.png", "cats/b.png", "dogs/d.bmp", "dogs/no_extension", "dogs/photo.dat",
                      "dogs/puppies/c.png", "loose.png")
    assert ds.class_names == ("cats", "dogs")
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 1, -1]
    assert ds.skipped == 2 and ds.unreadable == ()
    assert ds.shape == (3, 8, 8)
    assert np.array_equal(ds.images[0].transpose(1, 2, 0), _rgb(8, 8, 2))  # PNG is lossless
    assert np.array_equal(ds.images[3], ds.images[0])  # same bytes, no extension
    assert ds.abspath_of(5) == os.path.join(os.path.abspath(root), "dogs/puppies/c.png")
    assert ds.class_counts() == {"cats": 2, "dogs": 4}
    # deterministic: loading again gives the same fingerprint
    assert datacheck.load(root).fingerprint == ds.fingerprint


def test_flat_folder_is_unlabeled_and_numeric_classes_sort_by_value(tmp_path: Path) -> None:
    for i in range(3):
        _img(tmp_path / "flat" / f"{i}.png", _gray(5, 5, i))
    flat = datacheck.load(tmp_path / "flat")
    assert flat.class_names == () and flat.labels.tolist() == [-1, -1, -1] and not flat.labeled
    assert flat.shape == (1, 5, 5)
    for c in ("10", "2", "1"):
        _img(tmp_path / "num" / c / "x.png", _gray(5, 5, int(c)))
    num = datacheck.load(tmp_path / "num")
    assert num.class_names == ("1", "2", "10") and num.ids == ("1/x.png", "10/x.png", "2/x.png")
    assert num.labels.tolist() == [0, 2, 1]


def test_process_pool_and_progress_give_the_same_dataset(tmp_path: Path, monkeypatch, capsys) -> None:
    for i in range(40):
        _img(tmp_path / "many" / f"c{i % 3}" / f"{i:03d}.png", _rgb(6, 6, i))
    (tmp_path / "many" / "c0" / "bad.png").write_text("nope")
    serial = datacheck.load(tmp_path / "many", workers=1)
    monkeypatch.setattr(sources, "POOL_MIN_FILES", 10)
    pooled = datacheck.load(tmp_path / "many", workers=2, progress=True)
    assert pooled.fingerprint == serial.fingerprint and pooled.ids == serial.ids
    assert pooled.unreadable == serial.unreadable and len(serial.unreadable) == 1
    assert "loading many" in capsys.readouterr().err  # the tqdm bar went to stderr


# ----------------------------------------------------------------------------- policy
def test_mixed_sizes_and_modes_follow_the_recorded_policy(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    _img(root / "a.png", _gray(10, 12, 0))
    _img(root / "b.png", _gray(10, 12, 1))
    _img(root / "c.png", _rgb(20, 30, 2))  # color, another size
    _img(root / "d.png", np.stack([_gray(10, 12, 3)] * 3, -1))  # gray stored as RGB
    ds = datacheck.load(root)
    assert ds.shape == (3, 10, 12)
    assert ds.orig_sizes.tolist() == [[10, 12], [10, 12], [20, 30], [10, 12]]
    assert ds.orig_modes == ("L", "L", "RGB", "RGB")
    pol = ds.policy
    assert pol["size"] == [10, 12] and pol["channels"] == 3 and pol["resample"] == "bilinear"
    assert pol["n_resized"] == 1 and pol["n_color"] == 1
    assert "most common size 10x12 (3 of 4" in pol["reason"] and "color" in pol["reason"]
    # gray images are replicated into the three channels unchanged
    assert np.array_equal(ds.images[0], np.repeat(_gray(10, 12, 0)[None], 3, 0))
    # the resized one matches PIL's bilinear resize
    want = np.asarray(Image.fromarray(_rgb(20, 30, 2)).resize((12, 10), Image.Resampling.BILINEAR))
    assert np.array_equal(ds.images[2].transpose(1, 2, 0), want)

    gray_only = datacheck.load(root, kind="folder", size=(6, 6), channels=None, resample="nearest")
    assert gray_only.shape == (3, 6, 6)  # still RGB: c.png has color
    (root / "c.png").unlink()  # now only gray pictures, one stored as RGB
    g = datacheck.load(root)
    assert g.shape == (1, 10, 12) and g.policy["channels"] == 1 and "no image has color" in g.policy["reason"]
    forced = datacheck.load(root, size="16x8", channels=3)
    assert forced.shape == (3, 16, 8) and "given" in forced.policy["reason"]


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(resample="sinc"), "nearest, box, bilinear"),
        (dict(channels=2), "channels must be 1, 3"),
        (dict(size=(0, 4)), "size must be"),
        (dict(size="big"), "size must be"),
        (dict(max_pixels=0), "max_pixels"),
        (dict(colour=True), "does not take colour"),
        (dict(split="train"), "does not take split"),
    ],
)
def test_bad_options_are_user_errors(tmp_path: Path, opts, match) -> None:
    _img(tmp_path / "f" / "a.png", _gray(4, 4, 0))
    with pytest.raises(UserError, match=match):
        datacheck.load(tmp_path / "f", **opts)


def test_digits_take_shape_options_but_not_file_options() -> None:
    d = datacheck.load("digits", size=16, channels=3)
    assert d.shape == (3, 16, 16) and d.policy["size"] == [16, 16]
    with pytest.raises(UserError, match="digits source does not take max_pixels"):
        datacheck.load("digits", max_pixels=10)


# ----------------------------------------------------------------------------- csv
def test_csv_manifest_paths_labels_missing_and_duplicates(tmp_path: Path) -> None:
    _img(tmp_path / "imgs" / "a.png", _gray(6, 6, 0))
    _img(tmp_path / "imgs" / "b.png", _gray(6, 6, 1))
    _img(tmp_path / "other" / "c.png", _gray(6, 6, 2))
    (tmp_path / "imgs" / "text.png").write_text("not an image")
    (tmp_path / "imgs" / "notes.txt").write_text("listed explicitly, so unreadable rather than skipped")
    man = tmp_path / "sub" / "manifest.csv"
    man.parent.mkdir()
    man.write_text(
        "path,label\n"
        "../imgs/a.png,10\n"
        "../imgs/b.png,2\n"
        "../other/c.png,\n"
        "../imgs/missing.png,2\n"
        "../imgs/text.png,10\n"
        "../imgs/notes.txt,2\n"
        "../imgs/a.png,2\n"
    )
    assert detect_kind(str(man)) == "csv"
    ds = datacheck.load(man)
    assert ds.ids == ("../imgs/a.png", "../imgs/b.png", "../other/c.png")
    assert ds.class_names == ("2", "10") and ds.labels.tolist() == [1, 0, -1]
    reasons = {u["path"]: u["reason"] for u in ds.unreadable}
    assert reasons.keys() == {"../imgs/missing.png", "../imgs/text.png", "../imgs/notes.txt", "../imgs/a.png"}
    assert "not found" in reasons["../imgs/missing.png"] and "text" in reasons["../imgs/text.png"]
    assert "listed again in row 8" in reasons["../imgs/a.png"]
    assert np.array_equal(ds.images[ds.ids.index("../other/c.png"), 0], _gray(6, 6, 2))
    assert os.path.normpath(ds.abspath_of(0)) == str(tmp_path / "imgs" / "a.png")


def test_csv_without_path_column_or_rows_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.png,1\n")
    with pytest.raises(UserError, match="no 'path' column.*'file'"):
        datacheck.load(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n")
    with pytest.raises(UserError, match="lists no files"):
        datacheck.load(empty)


# ----------------------------------------------------------------------------- npz
def test_npz_rgb_with_size_option(tmp_path: Path) -> None:
    imgs = np.stack([_rgb(8, 8, i) for i in range(4)])
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.array([0, 1, 0, 1]))
    ds = datacheck.load(tmp_path / "a.npz")
    assert ds.shape == (3, 8, 8) and np.array_equal(ds.images.transpose(0, 2, 3, 1), imgs)
    assert ds.class_names == ("0", "1") and ds.ids[0] == "a.npz:0"
    small = datacheck.load(tmp_path / "a.npz", size=4, channels=1)
    assert small.shape == (1, 4, 4) and small.policy["n_resized"] == 4
    (tmp_path / "fake.npz").write_text("path\na.png\n")
    with pytest.raises(UserError, match="not an .npz"):
        datacheck.load(tmp_path / "fake.npz")


# ----------------------------------------------------------------------------- IDX
def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def _write_mnist(folder: Path, gz: bool, n_train: int = 5, n_test: int = 3) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    tr, te = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    ltr, lte = np.arange(n_train, dtype=np.uint8) % 10, (np.arange(n_test, dtype=np.uint8) + 3) % 10
    sfx = ".gz" if gz else ""
    for name, arr in (("train-images-idx3-ubyte", tr), ("train-labels-idx1-ubyte", ltr),
                      ("t10k-images-idx3-ubyte", te), ("t10k-labels-idx1-ubyte", lte)):
        data = _idx(arr)
        (folder / (name + sfx)).write_bytes(gzip.compress(data) if gz else data)
    return np.concatenate([tr, te]), np.concatenate([ltr, lte])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_and_images_file(tmp_path: Path, gz: bool) -> None:
    imgs, labels = _write_mnist(tmp_path / "mnist", gz)
    assert detect_kind(str(tmp_path / "mnist")) == "idx"
    ds = datacheck.load(tmp_path / "mnist")
    assert ds.shape == (1, 28, 28) and len(ds) == 8
    assert np.array_equal(ds.images[:, 0], imgs) and ds.labels.tolist() == labels.tolist()
    assert ds.ids[0] == "train:0" and ds.ids[5] == "t10k:0" and ds.class_names == tuple("0123456789")
    test = datacheck.load(tmp_path / "mnist", split="test")
    assert len(test) == 3 and np.array_equal(test.images[:, 0], imgs[5:])
    one = tmp_path / "mnist" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    assert detect_kind(str(one)) == "idx"
    f = datacheck.load(one)
    assert len(f) == 5 and np.array_equal(f.labels, labels[:5])


def test_idx_fashion_names_missing_labels_and_truncation(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = datacheck.load(tmp_path / "FashionMNIST" / "raw", split="train")
    assert ds.class_names[0] == "T-shirt/top" and len(ds) == 5
    _write_mnist(tmp_path / "m", gz=False)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte not found.*nothing is downloaded"):
        datacheck.load(tmp_path / "m")
    img = tmp_path / "m" / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-10])
    with pytest.raises(UserError, match="holds"):
        datacheck.load(tmp_path / "m", split="train")


# ----------------------------------------------------------------------------- CIFAR-10
def _write_cifar(folder: Path, n: int = 4, names: tuple[str, ...] = ("data_batch_1", "data_batch_2", "data_batch_3",
                 "data_batch_4", "data_batch_5", "test_batch"), protocol: int = 2) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, name in enumerate(names):
        data = np.random.default_rng(k).integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [(k + i) % 10 for i in range(n)], b"data": data,
                 b"filenames": [f"f{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        out[name] = data
    meta = {b"label_names": [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                  "frog", "horse", "ship", "truck")], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


@pytest.mark.parametrize("protocol", [2, 5])  # 2 as the original files; 5 as numpy writes today
def test_cifar10_batches(tmp_path: Path, protocol: int) -> None:
    data = _write_cifar(tmp_path / "c" / "cifar-10-batches-py", protocol=protocol)
    for src in (tmp_path / "c", tmp_path / "c" / "cifar-10-batches-py"):  # the folder or its parent
        assert detect_kind(str(src)) == "cifar10"
    ds = datacheck.load(tmp_path / "c")
    assert len(ds) == 24 and ds.shape == (3, 32, 32) and ds.class_names[:2] == ("airplane", "automobile")
    assert ds.ids[0] == "data_batch_1:0" and ds.ids[-1] == "test_batch:3"
    assert np.array_equal(ds.images[0].reshape(-1), data["data_batch_1"][0])
    assert ds.labels[:4].tolist() == [0, 1, 2, 3]
    test = datacheck.load(tmp_path / "c", split="test")
    assert len(test) == 4 and np.array_equal(test.images.reshape(4, -1), data["test_batch"])


def test_cifar10_missing_file_and_malicious_pickle(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "c", names=("data_batch_1", "test_batch"))
    with pytest.raises(UserError, match="data_batch_2 is missing.*nothing is downloaded"):
        datacheck.load(tmp_path / "c")
    assert len(datacheck.load(tmp_path / "c", split="test")) == 4
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(UserError, match="refusing to load"):
        datacheck.load(tmp_path / "c", split="test")
    assert not marker.exists()


# ----------------------------------------------------------------------------- CLI
def test_cli_profile_folder_lists_unreadable_and_writes_json(tmp_path: Path, capsys) -> None:
    _img(tmp_path / "f" / "a" / "x.png", _rgb(8, 8, 0))
    _img(tmp_path / "f" / "b" / "y.png", _rgb(6, 6, 1))
    (tmp_path / "f" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (tmp_path / "f" / "notes.txt").write_text("x")
    out = tmp_path / "p.json"
    assert datacheck_main(["profile", str(tmp_path / "f"), "--json", str(out), "--size", "4x4", "--channels", "1"]) == 0
    text = capsys.readouterr().out
    assert "b/broken.jpg: corrupt header" in text and "unreadable   1 file(s)" in text
    prof = json.loads(out.read_text())
    assert prof["n_images"] == 2 and prof["shape"] == [1, 4, 4] and prof["class_counts"] == {"a": 1, "b": 1}
    assert prof["sizes_found"] == {"8x8": 1, "6x6": 1} and prof["skipped"] == 1
    assert [u["path"] for u in prof["unreadable"]] == ["b/broken.jpg"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["profile", "digits", "--kind", "nope"], "unknown source kind 'nope'"),
        (["profile", "digits", "--resample", "sinc"], "unknown resample filter"),
        (["profile", "digits", "--size", "0"], "size must be"),
        (["profile", "digits", "--max-pixels", "5"], "does not take max_pixels"),
        (["profile", "EMPTY"], "no files"),
        (["profile", "FILE.xyz"], "cannot tell what kind"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path: Path, capsys, argv, match) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "f.xyz").write_text("?")
    argv = [a.replace("EMPTY", str(tmp_path / "empty")).replace("FILE.xyz", str(tmp_path / "f.xyz")) for a in argv]
    assert datacheck_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err


def test_csv_dialects_single_column_quoted_and_semicolons(tmp_path: Path) -> None:
    _img(tmp_path / "e" / "a,b.png", _gray(4, 4, 0))
    _img(tmp_path / "e" / "c.png", _gray(4, 4, 1))
    (tmp_path / "one.csv").write_text("path\ne/c.png\n")
    (tmp_path / "quoted.csv").write_text('path,label\n"e/a,b.png",x\ne/c.png,y\n')
    (tmp_path / "semi.csv").write_text("\ufeffPath;Label\ne/a,b.png;x\ne/c.png;y\n")  # BOM, capitalized header
    assert datacheck.load(tmp_path / "one.csv").ids == ("e/c.png",)
    for name in ("quoted.csv", "semi.csv"):
        ds = datacheck.load(tmp_path / name)
        assert ds.ids == ("e/a,b.png", "e/c.png") and ds.class_names == ("x", "y"), name


@pytest.mark.parametrize("kind, src, match", [
    ("csv", "folder", "not a readable CSV"),
    ("folder", "file", "is not a folder"),
    ("idx", "folder", "no IDX images file"),
    ("cifar10", "folder", "no CIFAR-10 batches"),
    ("npz", "file", "not an .npz"),
    ("idx", "file", "not an IDX file"),
])
def test_forced_kind_that_does_not_fit_is_a_user_error(tmp_path: Path, kind, src, match) -> None:
    _img(tmp_path / "folder" / "a.png", _gray(4, 4, 0))
    (tmp_path / "file.csv").write_text("path\nfolder/a.png\n")
    with pytest.raises(UserError, match=match):
        datacheck.load(tmp_path / ("folder" if src == "folder" else "file.csv"), kind=kind)


def test_cli_profile_json_inside_the_source_or_unwritable_is_refused(tmp_path: Path, capsys) -> None:
    _img(tmp_path / "f" / "a.png", _gray(4, 4, 0))
    before = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert datacheck_main(["profile", str(tmp_path / "f"), "--json", str(tmp_path / "f" / "p.json")]) == 2
    assert "inside the source folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == before
    (tmp_path / "plain").write_text("a file, not a folder")
    assert datacheck_main(["profile", "digits", "--json", str(tmp_path / "plain" / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write --json" in err
