"""How the server shares the cores among model workers (`--model-workers`)."""

from __future__ import annotations

import pytest

import server.serving
from server.serving import model_layout


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.serving, "available_cores", lambda: 4)


def test_auto_on_a_cpu_runs_one_single_threaded_model_per_core(four_cores: None) -> None:
    assert model_layout(0, "cpu") == (4, 1)


def test_auto_on_a_gpu_runs_one_worker_with_the_runtime_s_threads(four_cores: None) -> None:
    assert model_layout(0, "cuda") == (1, None)


def test_explicit_workers_share_the_cores(four_cores: None) -> None:
    assert model_layout(1, "cpu") == (1, None)  # one run over every core: lowest latency
    assert model_layout(2, "cpu") == (2, 2)
    assert model_layout(8, "cpu") == (8, 1)  # more workers than cores: one thread each


def test_the_flag_reaches_the_server_settings() -> None:
    from server.cli import build_parser, load_settings
    from server.commands import CommandError

    args = build_parser().parse_args(["serve", "--model-workers", "1"])
    assert load_settings(args).model_workers == 1
    with pytest.raises(CommandError, match="model-workers"):
        load_settings(build_parser().parse_args(["serve", "--model-workers", "-1"]))
