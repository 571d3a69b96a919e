from __future__ import annotations

import numpy as np
import pytest

import datacheck
from datacheck import Dataset, UserError, concat


def test_digits_loads_as_uint8_nchw() -> None:
    ds = datacheck.load("digits")
    assert len(ds) == 1797
    assert ds.images.dtype == np.uint8 and ds.images.shape == (1797, 1, 8, 8)
    assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == set(range(10))
    assert ds.class_names == tuple(str(i) for i in range(10))
    assert ds.ids[5] == "digits:5"
    assert ds.images.max() == 255 and ds.images.min() == 0
    assert len(ds.fingerprint) == 64
    assert datacheck.load("digits").fingerprint == ds.fingerprint


def test_fingerprint_tracks_pixels_and_labels() -> None:
    ds = datacheck.load("digits").subset(range(50))
    imgs = ds.images.copy()
    imgs[0, 0, 0, 0] ^= 1
    assert ds.replace(images=imgs).fingerprint != ds.fingerprint
    labels = ds.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    assert ds.replace(labels=labels).fingerprint != ds.fingerprint
    # ids are not content: renaming files keeps the fingerprint
    assert ds.replace(ids=tuple(f"x/{i}" for i in range(50))).fingerprint == ds.fingerprint


def test_subset_mask_and_concat_roundtrip() -> None:
    ds = datacheck.load("digits")
    a, b = ds.subset(np.arange(0, 10)), ds.subset(ds.labels == 3)
    assert len(b) == int((ds.labels == 3).sum()) and (b.labels == 3).all()
    c = concat([a, ds.subset(np.arange(10, 20))])
    assert np.array_equal(c.images, ds.images[:20]) and c.ids == ds.ids[:20]
    with pytest.raises(UserError, match="duplicate ids"):
        concat([a, a])


def test_concat_merges_class_names_by_name() -> None:
    img = np.zeros((2, 1, 4, 4), np.uint8)
    a = Dataset(img, np.array([0, 1]), ("a0", "a1"), class_names=("cat", "dog"))
    b = Dataset(img, np.array([0, -1]), ("b0", "b1"), class_names=("dog",))
    c = concat([a, b])
    assert c.class_names == ("cat", "dog")
    assert c.labels.tolist() == [0, 1, 1, -1]


def test_save_and_load_npz_roundtrip(tmp_path) -> None:
    ds = datacheck.load("digits").subset(range(100))
    path = tmp_path / "d.npz"
    ds.save(path)
    back = datacheck.load(str(path))
    assert np.array_equal(back.images, ds.images)
    assert np.array_equal(back.labels, ds.labels)
    assert back.ids == ds.ids and back.class_names == ds.class_names
    assert back.fingerprint == ds.fingerprint
    assert not list(tmp_path.glob("*.tmp")), "atomic write left a temp file"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2), ids=("a", "b")), "uint8 array of shape"),
        (dict(images=np.zeros((2, 1, 4, 4), np.float32), labels=np.zeros(2), ids=("a", "b")), "uint8"),
        (dict(images=np.zeros((2, 2, 4, 4), np.uint8), labels=np.zeros(2), ids=("a", "b")), "1 or 3 channels"),
        (dict(images=np.zeros((2, 1, 4, 4), np.uint8), labels=np.zeros(3), ids=("a", "b")), "labels must have shape"),
        (dict(images=np.zeros((2, 1, 4, 4), np.uint8), labels=np.zeros(2), ids=("a",)), "ids must have 2"),
    ],
)
def test_dataset_rejects_bad_arrays(kwargs, match) -> None:
    with pytest.raises(UserError, match=match):
        Dataset(**kwargs)


def test_atomic_writes_respect_umask(tmp_path) -> None:
    import os

    from datacheck.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_label_name_reads_names_numbers_and_unlabeled() -> None:
    imgs = np.zeros((3, 1, 4, 4), np.uint8)
    named = datacheck.Dataset(images=imgs, labels=np.array([0, 1, -1]), ids=("a", "b", "c"), class_names=("cat", "dog"))
    assert [named.label_name(v) for v in named.labels] == ["cat", "dog", ""]
    unnamed = datacheck.Dataset(images=imgs, labels=np.array([0, 7, -1]), ids=("a", "b", "c"))
    assert [unnamed.label_name(v) for v in unnamed.labels] == ["0", "7", ""]
