"""A serving gym process moves its startup objects out of the collector's sight and collects less often
(gym_server/gc_tuning.py); a process that merely embeds a gym (a trainer, a test) keeps CPython's defaults."""

from __future__ import annotations

import gc
import subprocess
import sys

from gym_server import gc_tuning, serve


def test_tuning_freezes_startup_objects_and_raises_the_thresholds():
    code = (
        "import gc; from gym_server.gc_tuning import tune_for_serving, YOUNG_THRESHOLD;"
        "assert gc.get_freeze_count() == 0 and gc.get_threshold()[0] < YOUNG_THRESHOLD;"
        "tune_for_serving(); print(gc.get_freeze_count(), *gc.get_threshold())"
    )
    frozen, young, *older = map(int, subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert frozen > 1000 and young == gc_tuning.YOUNG_THRESHOLD and tuple(older) == gc_tuning.OLDER_THRESHOLDS


def test_serve_tunes_before_serving_and_an_embedded_gym_does_not(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(serve, "tune_for_serving", lambda: calls.append("tuned"))
    monkeypatch.setattr(serve.uvicorn.Server, "run", lambda self, sockets=None: calls.append("served"))
    serve.serve(serve.ServeConfig(port=0, processes=1, arenas=["builtin"]))
    assert calls == ["tuned", "served"]
    threshold = gc.get_threshold()
    with serve.GymThread.private(serve.ServeConfig(port=0)):
        assert gc.get_threshold() == threshold
