"""The streaming audit (``datacheck.stream``) and the in-memory load's memory guard: planted issues in
large images are found, findings match the in-memory path, decoded pixels are never accumulated, and
a load that does not fit is a one-line error."""
from __future__ import annotations

import os
import re
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import datacheck
import datacheck.decode as dec
from datacheck import stream
from datacheck.auditing import run_audit
from datacheck.cli import main
from datacheck.errors import UserError

H, W = 300, 400
_REAL_DECODE = dec.decode_file
PER_IMAGE = ("unreadable", "dark", "light", "blurry", "noisy", "low_information", "odd_size", "odd_aspect_ratio",
             "grayscale", "exact_duplicate")


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour field at a random scale plus fine texture."""
    cells = int(rng.integers(3, 12))
    small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    a = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.int16)
    a = a + rng.integers(-6, 7, (h, w, 1), dtype=np.int16)
    return np.clip(a, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 JPEGs of 300x400 with two dark ones, a byte copy, a re-encoded copy, a truncated file and
    a text file."""
    root = tmp_path_factory.mktemp("big") / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        a = _photo(rng, H, W)
        if i in (3, 7):
            a = (a.astype(np.uint16) * 30 // 255).astype(np.uint8)
        Image.fromarray(a).save(root / f"img{i:02d}.jpg", quality=90)
    (root / "copy.jpg").write_bytes((root / "img01.jpg").read_bytes())
    Image.open(root / "img05.jpg").save(root / "reencoded.jpg", quality=70)
    data = (root / "img02.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def both(big: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    out = tmp_path_factory.mktemp("audits")
    s = run_audit(big, out=out / "s", stream=True, load_options={"workers": 1})
    m = run_audit(big, out=out / "m", stream=False)
    return s, m


def _rows(df: pd.DataFrame, checks: tuple[str, ...]) -> list[tuple]:
    df = df[df["check"].isin(checks)]
    return sorted(map(tuple, df.astype(str).values.tolist()))


def test_streamed_audit_finds_the_plants_and_writes_the_store(both) -> None:
    s, _m = both
    f = s.findings
    assert set(f.loc[f.check == "dark", "id"]) == {"img03.jpg", "img07.jpg"}
    assert set(f.loc[f.check == "exact_duplicate", "id"]) == {"copy.jpg", "img01.jpg"}
    assert set(f.loc[f.check == "near_duplicate", "id"]) == {"img05.jpg", "reencoded.jpg"}
    assert set(f.loc[f.check == "unreadable", "id"]) == {"trunc.jpg"}
    ds = s.ds
    assert ds.policy["streamed"] and ds.skipped == 1
    assert max(ds.images.shape[2:]) <= stream.THUMB_SIDE and ds.shape == (3, 48, 64)  # 300x400 shrunk to fit 64
    assert ds.orig_sizes.tolist() == [[H, W]] * len(ds)
    for name in ("findings.csv", "summary.json", "profile.json", "report.html", "store/thumbs.npy",
                 "store/measures.npz", "store/index.json"):
        assert (s.out / name).is_file(), name
    assert not list((s.out / "store").glob(".*"))  # no temp files left
    assert np.load(s.out / "store/thumbs.npy", mmap_mode="r").shape == ds.images.shape


def test_streamed_per_image_findings_equal_the_in_memory_ones(both) -> None:
    s, m = both
    assert _rows(s.findings, PER_IMAGE) == _rows(m.findings, PER_IMAGE)
    # cross-image checks run on thumbnails: the same items, scores may differ
    for check in ("near_duplicate",):
        assert set(s.findings.loc[s.findings.check == check, "id"]) == set(m.findings.loc[m.findings.check == check, "id"])
    ps, pm = s.profile, m.profile
    assert ps["sizes_found"] == pm["sizes_found"] and ps["unreadable"] == pm["unreadable"]
    assert np.allclose(ps["channel_means"], pm["channel_means"], atol=1e-9)
    assert np.allclose(ps["channel_stds"], pm["channel_stds"], atol=1e-9)


def test_small_images_stream_to_the_very_same_findings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images that fit in a thumbnail are their own thumbnails: every check sees the pixels the
    in-memory path sees, so every finding (and the fingerprint) is the same, pooled or not."""
    root = tmp_path / "small"
    rng = np.random.default_rng(1)
    for i in range(40):
        a = _photo(rng, 24, 32)
        if i == 5:
            a //= 10
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / f"c{i % 2}" / f"{i:02d}.png")
    (root / "c0" / "dup.png").write_bytes((root / "c1" / "03.png").read_bytes())
    m = run_audit(root, stream=False)
    monkeypatch.setattr(stream, "POOL_MIN_FILES", 8)
    s = run_audit(root, stream=True, load_options={"workers": 2})
    assert s.ds.shape == m.ds.shape == (3, 24, 32)
    assert s.ds.fingerprint == m.ds.fingerprint and s.ds.ids == m.ds.ids
    pd.testing.assert_frame_equal(s.findings, m.findings)
    assert {"dark", "exact_duplicate"} <= set(s.findings.check)


def test_stream_never_holds_more_than_one_decoded_image(big: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured serially: each decoded array is freed before the next file is decoded, and nothing
    assembles an N x C x H x W array."""
    live: set[int] = set()
    peak = [0, 0]
    real = dec.decode_file

    def tracked(path, **kw):
        d = real(path, **kw)
        if d.array is not None:
            key = id(d.array)
            live.add(key)
            weakref.finalize(d.array, live.discard, key)
            peak[0] = max(peak[0], len(live))
            peak[1] += 1
        return d

    def forbidden(*a, **k):
        raise AssertionError("the streaming audit must not load the folder in memory")

    monkeypatch.setattr(dec, "decode_file", tracked)
    monkeypatch.setattr(datacheck.sources, "_assemble", forbidden)
    monkeypatch.setattr(datacheck.sources, "decode_paths", forbidden)
    run = run_audit(big, out=tmp_path / "o", stream=True, checks=["dark", "exact_duplicate"],
                    load_options={"workers": 1})
    assert peak == [1, 26]  # 24 + copy + re-encoded decoded, one at a time (trunc.jpg never decodes)
    assert isinstance(run.ds.images, np.memmap)


def test_auto_streams_above_the_threshold_and_says_so_in_the_policy(big: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATACHECK_STREAM_MIN_BYTES", "1M")
    run = run_audit(big, out=tmp_path / "o", checks=["dark"])
    assert run.ds.policy.get("streamed") is True
    monkeypatch.setenv("DATACHECK_STREAM_MIN_BYTES", "1G")
    run = run_audit(big, checks=["dark"])
    assert "streamed" not in run.ds.policy and run.ds.shape == (3, H, W)


def test_memory_guard_is_a_one_line_error_naming_a_size_that_fits(big: Path, tmp_path: Path, capsys,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATACHECK_MEMORY_LIMIT", "10M")  # the folder needs about 2 x 26 x 360 KB
    with pytest.raises(UserError, match=r"--size \d+") as e:
        datacheck.load(big)
    size = int(re.search(r"--size (\d+)", str(e.value)).group(1))
    assert 64 <= size < H and len(datacheck.load(big, size=size)) == 26  # the size it named fits
    for argv in (["profile", str(big)], ["audit", str(big), "--out", str(tmp_path / "a"), "--stream", "off"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err and f"--size {size}" in err and "available" in err
    # the audit's auto mode streams instead of failing
    assert main(["audit", str(big), "--out", str(tmp_path / "b"), "--checks", "dark"]) == 0
    assert (tmp_path / "b" / "store" / "thumbs.npy").is_file()


def test_stream_bad_input_is_one_line(big: Path, tmp_path: Path, capsys) -> None:
    assert main(["audit", "digits", "--out", str(tmp_path / "d"), "--stream", "on"]) == 2
    assert "folder or a CSV manifest" in capsys.readouterr().err
    assert main(["audit", str(big), "--out", str(big / "out"), "--stream", "on"]) == 2
    assert "never writes into its input" in capsys.readouterr().err
    assert not (big / "out").exists()


# ----------------------------------------------------------------------------- resume and re-audit
def _small_folder(root: Path, n: int = 24, seed: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        a = _photo(rng, 24, 32)
        if i == 4:
            a //= 10
        Image.fromarray(a).save(root / f"{i:02d}.png")
    return root


class _Killed(BaseException):
    """A simulated kill (pytest treats a real KeyboardInterrupt as the end of the session)."""


class _Counter:
    """Counts decode_file calls; raises `_Killed` at call ``kill_at``."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.calls, self.kill_at = 0, kill_at

    def __call__(self, path, **kw):
        self.calls += 1
        if self.kill_at is not None and self.calls >= self.kill_at:
            raise _Killed
        return _REAL_DECODE(path, **kw)


def _stream(root: Path, out: Path, **kw):
    return run_audit(root, out=out, stream=True, load_options={"workers": 1}, **kw)


def test_reaudit_measures_only_added_and_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datacheck import stream_cache

    monkeypatch.setattr(stream_cache, "STALE_SHARE", 0.05)  # 2 stale results of 24: merged
    root = _small_folder(tmp_path / "imgs")
    counter = _Counter()
    monkeypatch.setattr(dec, "decode_file", counter)
    _stream(root, tmp_path / "a")
    assert counter.calls == 24
    rng = np.random.default_rng(9)
    for name in ("new1.png", "new2.png"):
        Image.fromarray(_photo(rng, 24, 32)).save(root / name)
    (root / "05.png").unlink()
    Image.fromarray(_photo(rng, 24, 32)).save(root / "06.png")  # changed content (and size, and mtime)
    st = os.stat(root / "06.png")
    os.utime(root / "06.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    counter.calls = 0
    from datacheck import listing

    headers: list[str] = []
    real_headers = listing.header_sizes
    monkeypatch.setattr(listing, "header_sizes", lambda paths, *a: headers.extend(paths) or real_headers(paths, *a))
    again = _stream(root, tmp_path / "a")
    assert counter.calls == 3  # two new files and the changed one
    assert sorted(os.path.basename(p) for p in headers) == ["06.png", "new1.png", "new2.png"]  # the rest from the cache
    monkeypatch.setattr(listing, "header_sizes", real_headers)
    counter.calls = 0
    fresh = _stream(root, tmp_path / "b")
    assert counter.calls == 25
    pd.testing.assert_frame_equal(again.findings, fresh.findings)
    assert again.ds.fingerprint == fresh.ds.fingerprint
    assert len(list((tmp_path / "a" / "store" / "cache").glob("seg-*"))) == 1  # merged: the stale results dropped


def test_a_few_stale_results_stay_in_the_cache_unmerged_and_unused(tmp_path: Path) -> None:
    root = _small_folder(tmp_path / "imgs")
    _stream(root, tmp_path / "a", checks=PER_IMAGE)
    (root / "05.png").unlink()  # 1 stale result of 24: under STALE_SHARE, the segment is not rewritten
    seg = sorted((tmp_path / "a" / "store" / "cache").glob("seg-*"))
    again = _stream(root, tmp_path / "a", checks=PER_IMAGE)  # (the cross-image checks keep a frozen space)
    assert sorted((tmp_path / "a" / "store" / "cache").glob("seg-*")) == seg
    fresh = _stream(root, tmp_path / "b", checks=PER_IMAGE)
    pd.testing.assert_frame_equal(again.findings, fresh.findings)
    assert again.ds.ids == fresh.ds.ids and "05.png" not in again.ds.ids


def test_a_killed_audit_resumes_from_its_last_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datacheck import stream_cache

    root = _small_folder(tmp_path / "imgs")
    monkeypatch.setattr(stream_cache, "SEGMENT_FILES", 5)
    monkeypatch.setattr(dec, "decode_file", _Counter(kill_at=13))
    with pytest.raises(_Killed):
        _stream(root, tmp_path / "a")
    assert len(list((tmp_path / "a" / "store" / "cache").glob("seg-*"))) == 2  # 10 files kept
    counter = _Counter()
    monkeypatch.setattr(dec, "decode_file", counter)
    resumed = _stream(root, tmp_path / "a")
    assert counter.calls == 14
    fresh = _stream(root, tmp_path / "b", stream_options=stream.StreamOptions(workers=1, cache=False))
    pd.testing.assert_frame_equal(resumed.findings, fresh.findings)
    assert not (tmp_path / "b" / "store" / "cache").exists()


def test_a_cache_with_other_settings_is_ignored_with_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog) -> None:
    root = _small_folder(tmp_path / "imgs", n=6)
    _stream(root, tmp_path / "a", checks=["dark"])
    counter = _Counter()
    monkeypatch.setattr(dec, "decode_file", counter)
    _stream(root, tmp_path / "a", checks=["dark"], stream_options=stream.StreamOptions(workers=1, chunk_bytes=1 << 28))
    assert counter.calls == 6
    assert "other settings (chunk_bytes)" in caplog.text
    settings = tmp_path / "a" / "store" / "cache" / "settings.json"
    settings.write_text(settings.read_text().replace(f'"version": {stream.STORE_VERSION}', '"version": 0'))
    caplog.clear()
    counter.calls = 0
    _stream(root, tmp_path / "a", checks=["dark"], stream_options=stream.StreamOptions(workers=1, chunk_bytes=1 << 28))
    assert counter.calls == 6 and f"by another version of datacheck (store version 0, not {stream.STORE_VERSION})" in caplog.text
    counter.calls = 0
    _stream(root, tmp_path / "a", checks=["dark"], stream_options=stream.StreamOptions(workers=1, chunk_bytes=1 << 28))
    assert counter.calls == 0  # same settings: everything from the cache


def test_a_memory_error_anywhere_is_one_line_and_exit_2(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise MemoryError("Unable to allocate 23.9 GiB for an array with shape (1020, 3, 1024, 1024)")

    import datacheck.profile as prof

    monkeypatch.setattr(prof, "profile", boom)
    assert main(["profile", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("datacheck: error: out of memory") and "--size" in err
