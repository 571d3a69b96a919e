"""Property-based fuzzing (hypothesis): hostile bytes behind valid image signatures, random npz
contents, random CSV manifests, and damaged study/checkpoint files. Whatever the input: a finding
(unreadable/skipped) or a one-line UserError, never another exception, never a write inside the source."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import datacheck
import datacheck.decode as dec
from datacheck.errors import UserError

SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP",
              b"II*\x00", b"MM\x00*", b""]
def cases(n: int) -> settings:
    """``n`` examples, derandomized (CI sees the same cases every run), no deadline, no example database."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


REAL = _png(np.arange(64, dtype=np.uint8).reshape(8, 8))


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt EXIF it is fed
@cases(1500)
@given(sig=st.sampled_from(SIGNATURES), body=st.binary(max_size=300), cut=st.integers(0, len(REAL)),
       flip=st.integers(0, len(REAL) - 1), name=st.sampled_from(["x.png", "x.jpg", "x.gif", "x.bin", "x"]))
def test_decode_never_raises_on_hostile_bytes(sig: bytes, body: bytes, cut: int, flip: int, name: str) -> None:
    # either random bytes behind a signature, or a real PNG cut short / with one byte flipped
    variants = [sig + body, REAL[:cut], REAL[:flip] + bytes([REAL[flip] ^ 0xFF]) + REAL[flip + 1:]]
    with tempfile.TemporaryDirectory() as tmp:
        for k, data in enumerate(variants):
            p = Path(tmp) / f"{k}{name}"
            p.write_bytes(data)
            d = dec.decode_file(str(p), size=(8, 8))
            assert d.status in ("ok", "unreadable", "skipped")
            if d.status == "ok":
                assert d.array.dtype == np.uint8 and d.array.shape[:2] == (8, 8)
            else:
                assert d.status == "skipped" or d.reason
            assert p.read_bytes() == data  # never modified


_DTYPES = st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_, np.complex64])


@cases(400)
@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=5), dtype=_DTYPES,
       key=st.sampled_from(["images", "pixels", "labels"]),
       labels=st.one_of(st.none(), st.lists(st.integers(-3, 300), max_size=8)),
       ids=st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=8)),
       names=st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=4)))
def test_npz_loader_gives_a_dataset_or_a_user_error(shape, dtype, key, labels, ids, names) -> None:
    rng = np.random.default_rng(len(shape))
    arrays = {key: (rng.random(shape) * 300).astype(dtype)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    if ids is not None:
        arrays["ids"] = np.asarray(ids, dtype=str) if ids else np.zeros(0)
    if names is not None:
        arrays["class_names"] = np.asarray(names, dtype=str) if names else np.zeros(0)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "d.npz"
        np.savez(p, **arrays)
        try:
            ds = datacheck.load(str(p))
        except UserError as e:
            assert str(e) and "\n" not in str(e).strip()
            return
        assert ds.images.dtype == np.uint8 and ds.images.ndim == 4 and len(ds.labels) == len(ds)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manifest")
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / f"{i}.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


_CELLS = st.one_of(st.sampled_from(["0.png", "1.png", "bad.png", "missing.png", "../0.png", "/etc/passwd", "",
                                    "2.png", "3.png"]), st.text(max_size=8))


@cases(300)
@given(header=st.sampled_from(["path,label", "path", "file,label", "label,path", "path,label,extra", ""]),
       rows=st.lists(st.tuples(_CELLS, st.one_of(st.integers(-2, 5).map(str), st.text(max_size=4))), max_size=6),
       sep=st.sampled_from([",", ";", "\t"]))
def test_csv_manifest_gives_a_dataset_or_a_user_error(folder: Path, header: str, rows, sep: str) -> None:
    before = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.suffix != ".csv")
    text = header.replace(",", sep) + "\n" + "".join(f"{a}{sep}{b}\n" for a, b in rows)
    manifest = folder / "m.csv"
    manifest.write_text(text)
    try:
        ds = datacheck.load(str(manifest))
    except UserError as e:
        assert str(e)
    else:
        assert ds.images.dtype == np.uint8 and len(ds.ids) == len(ds)
    finally:
        manifest.unlink()
    assert sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.suffix != ".csv") == before


@cases(300)
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                      st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=5),
                                   lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                                   max_leaves=8).map(lambda v: json.dumps(v).encode())))
def test_study_and_checkpoint_readers_refuse_damaged_files_with_one_line(data: bytes) -> None:
    from generative.checkpoint import load_checkpoint
    from generative.population import _load_state
    from reports.store import _check_protocol, finished_arms

    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp)
        (study / "arms" / "a").mkdir(parents=True)
        (study / "arms" / "a" / "result.json").write_bytes(data)
        finished_arms(study)  # a damaged result.json is a warning (the arm runs again), never an exception
        (study / "study.json").write_bytes(data)
        try:
            _check_protocol(study, {"study_version": 1})
        except UserError as e:
            assert "\n" not in str(e)
        for reader in (load_checkpoint, _load_state):
            (study / "x.pt").write_bytes(data)
            with pytest.raises(UserError):
                reader(study / "x.pt")
