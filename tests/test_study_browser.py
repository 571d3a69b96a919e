"""The study report renders in headless Chromium with no console errors and escapes hostile strings.

The study folder here is made by the test: its metrics are computed (pixel features, the real
metric functions) on stand-in "generated" sets made by the real data factors, so the report sees
real numbers without training anything.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import datacheck
from reports import metrics as M
from _browser import open_report
from reports.cli import main
from reports.factors import apply_factor
from reports.arms import grid_png
from reports.store import write_results
from reports.verdict import verdict

HOSTILE = "<img src=x onerror=alert(1)>"


def _pix(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


SEEDS = (0, 1, 2, 3)  # 8 blocks: enough for a primary test to reach Holm's 0.05 / 4


def make_study(root: Path, model_names=("cgan", HOSTILE)) -> Path:
    """A four-seed study folder whose 'samples' are the factor-transformed training sets themselves."""
    ds = datacheck.load("digits")
    ref, pool = ds.subset(np.arange(0, len(ds), 3)), ds.subset(np.setdiff1d(np.arange(len(ds)), np.arange(0, len(ds), 3)))
    study = root / "study"
    results = {}
    arms = [("baseline", None), ("size", 0.1), ("corruption", 0.4), ("dirty", 0.4), ("cleaned", 0.4)]
    for seed in SEEDS:
        for mi, model in enumerate(model_names):
            for factor, level in arms:
                fac = "dirty" if factor == "cleaned" else factor  # no audit here: a stand-in only
                train = pool if level is None else apply_factor(fac, pool, level, seed=seed)[0]
                if factor == "cleaned":
                    train = pool
                rng = np.random.default_rng(seed * 10 + mi)
                fake = train.images[rng.choice(len(train), 300)]
                r, f = _pix(ref.images), _pix(fake)
                row = {"arm_id": f"{factor}{'' if level is None else f'-{level:g}'}-{model}-s{seed}",
                       "factor": factor, "level": np.nan if level is None else level, "model": model,
                       "seed": seed, "fid": M.frechet_distance(real=r, fake=f) + mi,
                       "memorization": float(np.mean(M.nearest_distances(f, _pix(train.images)) < 1e-6)),
                       **M.prdc(real=r, fake=f), "n_real": len(r), "n_fake": len(f), "n_train": len(train),
                       # a stand-in C_T: its panel has the longest title of the report (it was once cut off)
                       "ct_score": float(rng.normal())}
                d = study / "arms" / row["arm_id"]
                d.mkdir(parents=True)
                (d / "samples.png").write_bytes(grid_png(fake[:36]))
                (d / "manifest.json").write_text(json.dumps({"factor": factor, "level": level}))
                results[row["arm_id"]] = {"row": row}
    write_results(study, results)
    (study / "study.json").write_text(json.dumps({
        "config": {"data": f"data/{HOSTILE}.npz", "models": list(model_names), "seeds": list(SEEDS),
                   "factors": ["size", "corruption", "dirty", "cleaned"]},
        "protocol": {"data_fingerprint": ds.fingerprint, "n_samples": 300, "steps": 5, "batch_size": 64},
        "commands": [f"reports ablate --data 'data/{HOSTILE}.npz' --out study"],
        "versions": {"python": "3"}, "reference": {"n": len(ref)}, "pool": {"n": len(pool)},
    }))
    return study


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("browser"))


def test_report_renders_offline_with_no_console_errors_and_escapes(study) -> None:
    assert main(["render", str(study)]) == 0
    page = (study / "report.html").read_text()
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<script" not in page
    assert page.count("<svg") >= 4 * 5 and page.count("data:image/png;base64,") == 5 * 2 * len(SEEDS)
    assert page.index('id="answer"') < page.index('id="verdict"')  # the answer comes first
    with open_report(study / "report.html") as seen:
        pg = seen.page
        answer = pg.inner_text("#answer")
        pg.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        # no label is clipped: every text of every SVG lies inside its SVG (1 px of slack for rounding)
        clipped = pg.evaluate("""() => {
            const out = [];
            for (const svg of document.querySelectorAll('svg')) {
                const b = svg.getBoundingClientRect();
                for (const t of svg.querySelectorAll('text')) {
                    const r = t.getBoundingClientRect();
                    if (r.width === 0) continue;
                    if (r.left < b.left - 1 || r.right > b.right + 1 || r.top < b.top - 1 || r.bottom > b.bottom + 1)
                        out.push(t.textContent);
                }
            }
            return out; }""")
        text = pg.inner_text("body")
        n_svg = pg.locator("svg").count()
        imgs_ok = pg.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    errors, dialogs, requests = seen.errors, seen.dialogs, seen.requests
    assert errors == [] and dialogs == [] and clipped == []
    # this study has data factors only: the card must not invent a contest
    assert answer.startswith("This study has no model tweak, so it cannot say whether the data mattered more "
                             "than the model.")
    assert "Methods, declared before the data" in text and "Holm within the primary family" in text
    # a folder made before plans were declared (no 'analysis' in study.json) is re-analysed and says so
    assert "re-analysed here under plan v3 only" in answer
    assert_one_story(study)
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert HOSTILE in text  # shown as text, not run
    assert "Verdict" in text and "Keeping 10% of the training data" in text
    assert n_svg >= 20 and imgs_ok


def assert_one_story(study: Path) -> None:
    """The headline, the answer card, the forest plot and effects.csv say the same thing: the factors the
    headline calls significantly worse/better are effects.csv's significant primary rows, and exactly those
    labels are bold in the forest plot."""
    import re

    import pandas as pd

    eff = pd.read_csv(study / "effects.csv")
    prim = eff[eff.primary]
    assert not eff[~eff.primary].significant.any()
    page = (study / "report.html").read_text()
    head = re.search(r"In short: of (\d+) factors tested on (\w+).*?, (\d+) made it significantly worse( \(([^)]*)\))?, "
                     r"(\d+) significantly better( \(([^)]*)\))?", page)
    assert head and int(head.group(1)) == len(prim) and head.group(2) == "fid"
    worse = set(filter(None, (head.group(5) or "").split(", ")))
    assert worse == set(prim[prim.significant & (prim.direction == "worse")].factor)
    assert int(head.group(3)) == len(worse)
    bold = set(re.findall(r'font-weight="bold">([\w]+) \(farthest level', page))
    assert bold == set(prim[prim.significant].factor)


def test_verdict_reports_what_the_numbers_say(study) -> None:
    import pandas as pd

    df = pd.read_csv(study / "results.csv")
    text = " ".join(verdict(df))
    # real pixel-space numbers: a 10% subset and 40% corruption both move FID up from the baseline
    base = df[df.factor == "baseline"].groupby("model").fid.mean()
    size = df[df.factor == "size"].groupby("model").fid.mean()
    assert (size > base).all()
    assert "Keeping 10% of the training data" in text and "(worse)" in text.split("Keeping 10%")[1].split(";")[0]
    assert "made it significantly worse" in text and "size" in text.split("significantly worse")[1].split(")")[0]
    assert "primary test on fid (pooled over models, 8 blocks)" in text
    for m, b in base.items():  # the sentence carries the real numbers
        assert f"{b:.3g}" in text
    assert "Cleaning a set with 40% planted problems" in text and "recovered" in text
    # an effect that is not there is not claimed: make every arm equal and the verdict says so
    flat = df.assign(fid=1.0 + 0.1 * df.seed)
    flat_text = " ".join(verdict(flat))
    assert "0 made it significantly worse" in flat_text and "4 had no significant effect" in flat_text
