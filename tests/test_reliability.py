"""Reliability: a failing arm is a result (status failed, listed in the report, not retried unless
asked); every JSON file the tools write is strict JSON (no bare NaN)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datacheck.io import dumps, json_safe, write_json
from reports.cli import main

ARGS = ["--factors", "size", "--levels", "size=0.5", "--models", "vae", "--seeds", "1", "--steps", "3",
        "--n-samples", "40", "--workers", "1"]


def _strict(path: Path) -> object:
    """json.loads that refuses NaN/Infinity, as jq and a browser's JSON.parse do."""
    def refuse(token: str) -> None:
        raise ValueError(f"{path}: bare {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_json_writers_are_strict() -> None:
    doc = {"level": float("nan"), "x": np.float32("inf"), "n": np.int64(3), "a": np.array([1.0, np.nan]),
           "p": Path("/tmp"), "t": (1, 2)}
    assert json_safe(doc) == {"level": None, "x": None, "n": 3, "a": [1.0, None], "p": "/tmp", "t": [1, 2]}
    assert "NaN" not in dumps(doc) and "Infinity" not in dumps(doc)
    with pytest.raises(TypeError):
        dumps({"s": {1, 2}})


def test_a_failing_arm_is_a_result_and_is_not_retried_unless_asked(tmp_path: Path, monkeypatch, capsys) -> None:
    import reports.arms as study_mod

    real = study_mod._run_arm

    def flaky(task, pool, reference):
        if task.arm.factor == "size":
            raise RuntimeError("simulated divergence\nsecond line")
        return real(task, pool, reference)

    monkeypatch.setattr(study_mod, "_run_arm", flaky)
    out = tmp_path / "s"
    assert main(["ablate", "--out", str(out), "--fuse", "off", *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "size-0.5-vae-s0 failed: RuntimeError: simulated divergence" in printed
    assert "1 arm(s) failed" in printed
    res = _strict(out / "arms" / "size-0.5-vae-s0" / "result.json")
    assert res["status"] == "failed" and res["error"] == "RuntimeError: simulated divergence"
    df = pd.read_csv(out / "results.csv")
    assert list(df.arm_id) == ["baseline-vae-s0"]  # the study went on
    html = (out / "report.html").read_text()
    assert "Failed arms" in html and "simulated divergence" in html
    # every JSON the study wrote is strict (the baseline's level is null, not NaN)
    base = _strict(out / "arms" / "baseline-vae-s0" / "result.json")
    assert base["row"]["level"] is None and base["arm"]["level"] is None
    for p in out.rglob("*.json"):
        _strict(p)
    # a resume leaves the failed arm alone ...
    assert main(["ablate", "--out", str(out), "--fuse", "off", *ARGS]) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    # ... unless asked; now it succeeds and replaces the failure
    monkeypatch.setattr(study_mod, "_run_arm", real)
    assert main(["ablate", "--out", str(out), "--fuse", "off", "--retry-failed", *ARGS]) == 0
    assert "1 already finished, 1 to run" in capsys.readouterr().out
    assert sorted(pd.read_csv(out / "results.csv").arm_id) == ["baseline-vae-s0", "size-0.5-vae-s0"]
    assert "status" not in _strict(out / "arms" / "size-0.5-vae-s0" / "result.json")
    assert "Failed arms" not in (out / "report.html").read_text()


def test_a_crashed_check_is_never_clean(tmp_path: Path, monkeypatch, capsys) -> None:
    import datacheck
    import datacheck.checks as checks_mod
    from datacheck.cli import main as datacheck_main
    from datacheck.errors import UserError
    from reports.factors import audit_and_remove

    real = checks_mod.run_checks

    def crashing(ds, names, params=None, ctx=None):
        if names == ["dark"]:
            raise MemoryError("simulated crash")
        return real(ds, names, params, ctx=ctx)

    monkeypatch.setattr(checks_mod, "run_checks", crashing)  # audit imports it at call time
    code = datacheck_main(["audit", "digits", "--out", str(tmp_path / "a"), "--checks", "dark,light",
                           "--fail-on", "dark"])
    err = capsys.readouterr().err
    assert code == 1 and "dark (MemoryError: simulated crash)" in err and "crashed" in err
    summary = _strict(tmp_path / "a" / "summary.json")
    assert summary["errors"] == {"dark": "MemoryError: simulated crash"}
    # the cleaned factor stops instead of cleaning with fewer checks
    ds = datacheck.load("digits").subset(np.arange(300))
    with pytest.raises(UserError, match="cleaned factor stopped.*dark: MemoryError"):
        audit_and_remove(ds, ("dark", "light"))
    with pytest.raises(UserError, match="does not have: sharpness"):
        audit_and_remove(ds, ("sharpness",))


def test_one_driver_per_study_folder_and_stale_locks_are_taken_over(tmp_path: Path, capsys) -> None:
    import socket
    import subprocess
    import sys

    from reports.runner import LOCK_NAME

    out = tmp_path / "s"
    out.mkdir()
    # a live holder (this test's own parent process stands in for another driver)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                                 "since": "2026-12-02 10:00:00"}))
        assert main(["ablate", "--out", str(out), *ARGS]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "in use by another reports driver" in err and "Traceback" not in err
        assert not (out / "results.csv").exists()  # nothing trained twice
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up (kill -9): its lock is stale and taken over
    assert main(["ablate", "--out", str(out), *ARGS]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 2 and not (out / LOCK_NAME).exists()
    capsys.readouterr()


def test_tampered_study_folders_are_refused_and_edited_results_rebuilt(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    assert main(["ablate", "--out", str(out), *ARGS]) == 0
    good = (out / "results.csv").read_text()
    # an edited results.csv is rebuilt from the arms' result.json on the next run
    (out / "results.csv").write_text(good.replace("baseline-vae-s0", "edited-by-hand"))
    assert main(["ablate", "--out", str(out), *ARGS]) == 0
    assert (out / "results.csv").read_text() == good
    # a study.json that does not parse: a one-line error naming it, nothing adopted or rewritten
    (out / "study.json").write_text('{"config": {"steps": 3}, "protocol": ')
    capsys.readouterr()
    assert main(["ablate", "--out", str(out), *ARGS[:-2], "--steps", "4", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "study.json does not parse" in err and "Traceback" not in err
    assert (out / "study.json").read_text().endswith('"protocol": ')
    # missing while finished arms exist: refused too
    (out / "study.json").unlink()
    assert main(["ablate", "--out", str(out), *ARGS]) == 2
    assert "study.json is missing" in capsys.readouterr().err


def test_local_pool_replaces_a_killed_worker_and_reruns_its_task(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from _fault_tasks import KillOnce

    from reports.executors import LocalExecutor

    tasks = [KillOnce("a", None), KillOnce("b", str(tmp_path / "b.killed")), KillOnce("c", None),
             KillOnce("d", None)]
    got: list[dict] = []
    LocalExecutor(workers=2).run(tasks, None, None, got.append)
    assert sorted(r["name"] for r in got) == ["a", "b", "c", "d"]  # every task once, none lost
    assert (tmp_path / "b.killed").exists()  # b's first worker really died


@pytest.fixture
def fault_tasks_on_ray(monkeypatch):
    """Ray (required in CI, else skipped) with tests/_fault_tasks importable by its workers."""
    import os

    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is required in CI")
        pytest.skip("ray not installed")
    here = str(Path(__file__).parent)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.syspath_prepend(here)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    from _fault_tasks import KillOnce

    return KillOnce


def test_ray_retries_a_task_whose_worker_was_killed(tmp_path: Path, fault_tasks_on_ray) -> None:
    KillOnce = fault_tasks_on_ray

    from reports.executors import RayExecutor

    got: list[dict] = []
    RayExecutor(num_cpus=2).run([KillOnce("x", str(tmp_path / "x.killed")), KillOnce("y", None)], None, None,
                                got.append)
    assert sorted(r["name"] for r in got) == ["x", "y"] and (tmp_path / "x.killed").exists()


def test_small_samples_are_said_out_loud(capsys, tmp_path: Path) -> None:
    import datacheck
    from reports.evaluation import evaluate, sample_warnings
    from reports.cli import main as reports_main

    d = datacheck.load("digits")
    small = evaluate(real=d.subset(np.arange(50)), fake=d.subset(np.arange(50, 100)), features="random")
    assert any("FID" in w and "KID" in w for w in small["warnings"])
    big = evaluate(real=d.subset(np.arange(600)), fake=d.subset(np.arange(600, 1200)), features="random")
    assert big["warnings"] == []
    assert any("not reliable" in w for w in sample_warnings(1000, 1000, 64, 0.2))
    assert sample_warnings(1000, 1000, 64, 0.01) == []
    np.savez(tmp_path / "ref.npz", images=d.images[:50, 0])
    np.savez(tmp_path / "fake.npz", images=d.images[50:100, 0])
    assert reports_main(["evaluate", "--real", str(tmp_path / "ref.npz"), "--fake", str(tmp_path / "fake.npz"),
                         "--out", str(tmp_path / "e.json"), "--features", "random"]) == 0
    assert "warning: FID" in capsys.readouterr().err
    assert _strict(tmp_path / "e.json")["warnings"]


def test_each_arm_records_its_provenance_and_resume_checks_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    assert main(["ablate", "--out", str(out), *ARGS]) == 0
    res = _strict(out / "arms" / "baseline-vae-s0" / "result.json")
    prov = res["provenance"]
    assert len(prov["protocol_hash"]) == 16 and prov["versions"]["torch"] and prov["extractor"]["name"]
    assert "Arms were made with" not in (out / "report.html").read_text()
    # an arm whose libraries differ: the report warns
    other = _strict(out / "arms" / "size-0.5-vae-s0" / "result.json")
    other["provenance"]["versions"]["torch"] = "0.0.1"
    write_json(out / "arms" / "size-0.5-vae-s0" / "result.json", other)
    assert main(["render", str(out)]) == 0
    assert "Arms were made with 2 different library versions" in (out / "report.html").read_text()
    # an arm made under another protocol (study.json swapped under it) is not adopted
    other["provenance"]["protocol_hash"] = "0" * 16
    write_json(out / "arms" / "size-0.5-vae-s0" / "result.json", other)
    capsys.readouterr()
    assert main(["ablate", "--out", str(out), *ARGS]) == 2
    assert "made under another protocol" in capsys.readouterr().err


def test_blas_thread_limits_are_restored_when_a_metrics_worker_fails() -> None:
    from threadpoolctl import threadpool_info

    from reports.metrics import _parallel

    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]

    before = blas()

    def work(w: int, t: int) -> None:
        if t == 3:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _parallel(list(range(8)), work, 2)
    assert blas() == before


def test_ray_cancels_the_remaining_tasks_when_the_driver_fails(tmp_path: Path, fault_tasks_on_ray) -> None:
    import time

    import ray

    KillOnce = fault_tasks_on_ray

    from reports.executors import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        def on_result(res: dict) -> None:
            raise KeyboardInterrupt  # the driver is interrupted after its first result

        tasks = [KillOnce("fast", None, 0.1)] + [KillOnce(f"slow{i}", None, 30) for i in range(3)]
        t = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            RayExecutor().run(tasks, None, None, on_result)
        deadline = time.time() + 20
        while time.time() < deadline and ray.available_resources().get("CPU", 0) < 2:
            time.sleep(0.5)
        assert ray.available_resources().get("CPU", 0) == 2  # the slow tasks no longer hold the CPUs
        assert time.perf_counter() - t < 30
    finally:
        ray.shutdown()
