"""Long work shows a tqdm bar on a terminal and stays quiet when stderr is a file or a pipe (nohup, CI logs),
where a bar would be thousands of carriage-return lines."""
from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import pytest

from carla_client.collector import _Bar
from datasets.dataset import build_cache, load_frames
from tests.synthetic_data import make_dataset


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, shown", [(_Terminal, True), (io.StringIO, False)])
def test_collect_bar_only_on_a_terminal(monkeypatch, stream, shown):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    bar = _Bar(SimpleNamespace(progress=True), {"curve": 2, "straight": 2})
    for label in ("curve", "straight", "curve"):
        bar.saved(label)
    bar.close()
    assert ("collect" in err.getvalue()) is shown
    if shown:
        assert "curve 2/2" in err.getvalue()


@pytest.mark.parametrize("stream, shown", [(_Terminal, True), (io.StringIO, False)])
def test_cache_bar_only_on_a_terminal(tmp_path, monkeypatch, stream, shown):
    data = make_dataset(tmp_path / "ds", towns=("Town01",), episodes=1, frames_per_episode=4)
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    build_cache(load_frames([data]), 32, progress=True)
    assert ("caching" in err.getvalue()) is shown


def test_no_progress_is_quiet_on_a_terminal(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "ds", towns=("Town01",), episodes=1, frames_per_episode=4)
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    build_cache(load_frames([data]), 32, progress=False)
    _Bar(SimpleNamespace(progress=False), {"curve": 1, "straight": 1}).close()
    assert err.getvalue() == ""
