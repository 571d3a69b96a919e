"""Duplicate-aware stratified splits: groups never straddle, fractions within a point, class shares
kept, byte-identical output per seed, warnings for giant groups, and the ``datacheck split`` CLI."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import datacheck
from datacheck.cli import main
from datacheck.errors import UserError
from datacheck.splitting import split


@pytest.fixture(scope="module")
def digits() -> datacheck.Dataset:
    return datacheck.load("digits")


def planted_groups(n: int, n_groups: int, sizes: tuple[int, int], seed: int) -> np.ndarray:
    """int64 (n,) group ids: ``n_groups`` random groups of sizes in ``sizes``, -1 elsewhere."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    g = np.full(n, -1, np.int64)
    pos = 0
    for gi in range(n_groups):
        s = int(rng.integers(sizes[0], sizes[1] + 1))
        g[perm[pos:pos + s]] = gi
        pos += s
    return g


def assert_groups_whole(df: pd.DataFrame, groups: np.ndarray) -> None:
    d = pd.DataFrame({"g": groups, "split": df["split"].to_numpy()})
    per_group = d[d.g >= 0].groupby("g")["split"].nunique()
    assert (per_group == 1).all(), f"groups straddling splits: {per_group[per_group > 1].index.tolist()}"


@pytest.mark.parametrize("seed,val,test", [(0, 0.1, 0.1), (1, 0.15, 0.05), (7, 0.2, 0.2)])
def test_fractions_within_a_point_and_groups_whole(digits, seed, val, test) -> None:
    groups = planted_groups(len(digits), n_groups=120, sizes=(2, 8), seed=seed)
    df = split(digits, val=val, test=test, seed=seed, groups=groups)
    assert list(df.columns) == ["id", "path", "label", "split"]
    assert list(df["id"]) == list(digits.ids) and list(df["path"]) == list(digits.ids)
    assert set(df["split"]) == {"train", "val", "test"}
    frac = df["split"].value_counts(normalize=True)
    for name, want in (("train", 1 - val - test), ("val", val), ("test", test)):
        assert abs(frac[name] - want) <= 0.01, (name, frac[name], want)
    assert_groups_whole(df, groups)
    # class shares: each class's share inside every split stays within 2 points of its overall share
    overall = df["label"].value_counts(normalize=True)
    for name, part in df.groupby("split"):
        share = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0.0)
        assert (share - overall).abs().max() <= 0.02, (name, (share - overall).abs().max())
    assert df.attrs["warnings"] == []
    print(f"seed {seed}: achieved {df.attrs['fractions']} for val={val} test={test}")


def test_same_seed_same_bytes_other_seed_differs(digits) -> None:
    groups = planted_groups(len(digits), 80, (2, 6), seed=3)
    a = split(digits, seed=5, groups=groups).to_csv(index=False)
    b = split(digits, seed=5, groups=groups).to_csv(index=False)
    c = split(digits, seed=6, groups=groups).to_csv(index=False)
    assert a == b
    assert a != c


def test_group_ids_as_index_lists_and_strings(digits) -> None:
    sub = digits.subset(np.arange(400))
    lists = [[0, 1, 2, 3, 4, 5], [10, 11], [20, 30, 40]]
    df = split(sub, groups=lists, seed=0)
    for members in lists:
        assert df["split"].iloc[members].nunique() == 1
    names = np.array([""] * 400, dtype=object)
    names[[7, 8, 9]] = "dup-a"
    df2 = split(sub, groups=names, seed=0)
    assert df2["split"].iloc[[7, 8, 9]].nunique() == 1


def test_giant_group_warns_and_stays_whole(digits, caplog) -> None:
    groups = np.full(len(digits), -1, np.int64)
    rng = np.random.default_rng(0)
    giant = rng.choice(len(digits), size=300, replace=False)
    groups[giant] = 0
    with caplog.at_level(logging.WARNING, logger="datacheck.splitting"):
        df = split(digits, groups=groups, seed=0)
    assert df["split"].iloc[giant].nunique() == 1
    assert any("300 items" in r.getMessage() for r in caplog.records)
    assert df.attrs["warnings"]


def test_group_too_big_for_the_fractions_reports_the_miss(digits, caplog) -> None:
    # 90% of the data in one group: no assignment can give train 80%; the miss is named
    groups = np.full(len(digits), -1, np.int64)
    groups[: int(0.9 * len(digits))] = 0
    with caplog.at_level(logging.WARNING, logger="datacheck.splitting"):
        df = split(digits, groups=groups, seed=0, stratify="none")
    assert df["split"].iloc[: int(0.9 * len(digits))].nunique() == 1
    assert any("too large to place exactly" in r.getMessage() for r in caplog.records)


def test_unstratified_and_unlabeled(digits) -> None:
    unlabeled = digits.replace(labels=np.full(len(digits), -1, np.int64), class_names=())
    df = split(unlabeled, val=0.25, test=0.0, seed=0, stratify="none", groups=False)
    assert set(df["label"]) == {""}
    assert set(df["split"]) == {"train", "val"}
    assert abs((df["split"] == "val").mean() - 0.25) <= 0.01


@pytest.mark.parametrize("kw", [{"val": 0.6, "test": 0.5}, {"val": -0.1}, {"stratify": "colour"}])
def test_bad_arguments_are_user_errors(digits, kw) -> None:
    with pytest.raises(UserError):
        split(digits, groups=False, **kw)


def test_default_groups_keep_planted_duplicates_together(digits) -> None:
    # exact copies and a brightened copy of some items: the near-duplicate groups
    # (datacheck.deduplication.find_duplicate_groups) must land in one split each
    base = digits.subset(np.arange(600))
    src = np.arange(0, 60, 3)
    imgs = np.concatenate([base.images, base.images[src], np.clip(base.images[src].astype(int) + 12, 0, 255).astype(np.uint8)])
    labels = np.concatenate([base.labels, base.labels[src], base.labels[src]])
    ids = list(base.ids) + [f"copy:{i}" for i in src] + [f"bright:{i}" for i in src]
    ds = datacheck.Dataset(images=imgs, labels=labels, ids=ids, class_names=base.class_names, source="planted")
    df = split(ds, seed=0)
    for k, i in enumerate(src):
        trio = [int(i), 600 + k, 600 + len(src) + k]
        assert df["split"].iloc[trio].nunique() == 1, (i, df["split"].iloc[trio].tolist())
    assert df.attrs["n_groups"] >= len(src)


def test_cli_split_writes_csv_and_is_reproducible(tmp_path, capsys) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["split", "digits", "--out", str(a), "--val", "0.2", "--test", "0.1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and str(a) in out
    assert main(["split", "digits", "--out", str(b), "--val", "0.2", "--test", "0.1", "--seed", "3"]) == 0
    assert a.read_bytes() == b.read_bytes()
    df = pd.read_csv(a, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["id", "path", "label", "split"] and len(df) == 1797
    assert abs((df["split"] == "val").mean() - 0.2) <= 0.01
    assert abs((df["split"] == "test").mean() - 0.1) <= 0.01


@pytest.mark.parametrize("args", [["--val", "0.7", "--test", "0.5"], ["--stratify", "colour"], ["--val", "abc"]])
def test_cli_split_bad_args_one_line_exit_2(tmp_path, capsys, args) -> None:
    assert main(["split", "digits", "--out", str(tmp_path / "s.csv"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "s.csv").exists()


def test_cli_split_warns_about_a_giant_duplicate_group(tmp_path, caplog, digits) -> None:
    # 60 exact copies of one image: a duplicate group of 61 items (3.3% of the data)
    imgs = np.concatenate([digits.images, np.repeat(digits.images[:1], 60, axis=0)])
    labels = np.concatenate([digits.labels, np.repeat(digits.labels[:1], 60)])
    ds = datacheck.Dataset(images=imgs, labels=labels, ids=list(digits.ids) + [f"copy:{i}" for i in range(60)],
                           class_names=digits.class_names, source="giant")
    npz = tmp_path / "giant.npz"
    ds.save(npz)
    with caplog.at_level(logging.WARNING):
        assert main(["split", str(npz), "--out", str(tmp_path / "s.csv")]) == 0
    assert any("61 items" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    df = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    assert df.loc[df["id"].isin(["digits:0"] + [f"copy:{i}" for i in range(60)]), "split"].nunique() == 1


def test_small_duplicate_groups_do_not_warn_on_small_data() -> None:
    """Pairs of copies in 120 images are routine, not a distortion; a group of 10 is (val holds 12)."""
    rng = np.random.default_rng(3)
    n = 120
    ds = datacheck.Dataset(images=rng.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8), labels=np.arange(n) % 3,
                           ids=[f"i{i}" for i in range(n)], class_names=("a", "b", "c"))
    pairs = np.full(n, -1)
    pairs[:20] = np.arange(20) // 2  # ten pairs
    assert split(ds, groups=pairs).attrs["warnings"] == []
    pairs[20:30] = 99  # one group of 10
    warnings = split(ds, groups=pairs).attrs["warnings"]
    assert len(warnings) == 1 and "10 items" in warnings[0]


def test_split_csv_of_a_folder_is_a_manifest_per_split(tmp_path, capsys) -> None:
    """`datacheck split FOLDER --out elsewhere/split.csv` writes paths relative to the CSV, so the CSV
    loads as a manifest, one split at a time, every split numbering the classes alike."""
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for i in range(40):
        cls = ("ants", "bees", "cats")[i % 3] if i < 39 else "zebra"  # one class with a single item
        (data / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(data / cls / f"{i}.png")
    out = tmp_path / "lists" / "split.csv"
    out.parent.mkdir()
    assert main(["split", str(data), "--out", str(out), "--val", "0.2", "--test", "0.2"]) == 0
    df = pd.read_csv(out)
    assert all(p.startswith("../data/") for p in df["path"])
    whole = datacheck.load(data)
    parts = {s: datacheck.load(out, split=s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == len(whole) == 40
    for s, part in parts.items():
        assert part.class_names == whole.class_names == ("ants", "bees", "cats", "zebra")
        assert len(part) == int((df["split"] == s).sum())
        # the same file has the same label number in its split as in the whole folder
        by_id = dict(zip(whole.ids, whole.labels.tolist()))
        for pid, lab in zip(part.ids, part.labels.tolist()):
            assert by_id[pid.removeprefix("../data/")] == lab
    with pytest.raises(UserError, match="split must be one of all, train, val, test"):
        datacheck.load(out, split="holdout")
    plain = tmp_path / "lists" / "plain.csv"
    plain.write_text("path\n../data/ants/0.png\n")
    with pytest.raises(UserError, match="needs a 'split' column"):
        datacheck.load(plain, split="train")
    with pytest.raises(UserError, match="split must be one of all, train, test"):
        datacheck.load(data, kind="idx", split="val")
