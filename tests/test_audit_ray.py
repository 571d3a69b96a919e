"""``datacheck audit --executor ray``: the per-image stage on a local Ray instance gives, file for file and
in order, what the local run gives (so the same store and findings; issue #20 item 4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datacheck import stream


def test_ray_measuring_matches_the_local_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_ray) -> None:
    monkeypatch.setattr("datacheck.stream_ray.SHARD_FILES", 4)  # several shards, consumed in order
    rng = np.random.default_rng(0)
    paths = []
    for i in range(14):
        a = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
        if i % 7 == 0:
            a //= 8  # dark
        paths.append(str(tmp_path / f"im{i:02d}.png"))
        Image.fromarray(a).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths.append(str(tmp_path / "broken.png"))
    kw = {"max_pixels": 10**8, "listed": False, "thumb_hw": (20, 24), "resample": "bilinear", "chunk_bytes": 1 << 26}
    local = list(stream.measure_all(paths, kw, stream.StreamOptions(workers=1, progress=False), "local"))
    remote = list(stream.measure_all(paths, kw, stream.StreamOptions(executor="ray", workers=2, progress=False), "ray"))
    assert [m.status for m in remote] == [m.status for m in local] == ["ok"] * 14 + ["unreadable"]
    for a, b in zip(local[:-1], remote[:-1]):
        assert a.key == b.key and np.array_equal(a.stats, b.stats) and np.array_equal(a.thumb, b.thumb)
        assert np.array_equal(a.chan, b.chan) and a.size == b.size
    assert remote[-1].reason == local[-1].reason


def test_address_needs_the_ray_executor_and_ray_address_is_read_like_reports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from datacheck.cli import main
    from reports.executors import make_executor
    from datacheck.errors import UserError

    assert main(["audit", "digits", "--out", str(tmp_path / "a"), "--address", "auto"]) == 2
    assert "--address only applies to --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # reports ablate reads Ray's own variable the same way: a cluster brings its own CPUs
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(UserError, match="a cluster"):
        make_executor("ray", workers=2)
    assert make_executor("ray").address == "ray://head:10001"
