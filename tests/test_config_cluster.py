"""The cluster options (--backend, --replicas, --replica-gpus, --ray-address, --replica-timeout): read from
GLMIMAGE_* like every option, flags win, and each bad value or combination is refused with the flag named."""

from __future__ import annotations

import importlib.util

import pytest

from glmimage.config import load_settings

# Not imported here: tests/test_ray_backend.py imports Ray first, with the settings the app imports it with.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="the Ray backend needs requirements-ray.txt"
)


def settings(argv=(), **env):
    return load_settings(list(argv), environ=env)


def test_the_defaults_run_the_model_in_this_process():
    s = settings()
    assert (s.backend, s.replicas, s.replica_gpus, s.ray_address) == ("local", "1", 1.0, "")
    assert s.workers == s.concurrency == 1


def test_environment_variables_set_the_cluster_options_and_flags_win():
    env = dict(
        GLMIMAGE_BACKEND="ray",
        GLMIMAGE_REPLICAS="2:6",
        GLMIMAGE_REPLICA_GPUS="0.5",
        GLMIMAGE_RAY_ADDRESS="auto",
        GLMIMAGE_REPLICA_TIMEOUT="90",
    )
    s = settings(**env)
    assert (s.backend, s.replica_range, s.replica_gpus, s.ray_address, s.replica_timeout) == (
        "ray",
        (2, 6),
        0.5,
        "auto",
        90.0,
    )
    s = settings(["--replicas", "3", "--replica-gpus", "0", "--ray-address", "10.0.0.5:6379"], **env)
    assert (s.replica_range, s.replica_gpus, s.ray_address) == ((3, 3), 0.0, "10.0.0.5:6379")


@pytest.mark.parametrize(("replicas", "jobs_at_once"), [("4", 4), ("1:4", 4), ("2:2", 2)])
def test_the_queue_runs_as_many_jobs_at_once_as_there_can_be_replicas(replicas, jobs_at_once):
    assert settings(["--backend", "ray", "--replicas", replicas]).workers == jobs_at_once


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--backend", "gpu"], "invalid choice"),
        (["--backend", "ray", "--replicas", "0"], "--replicas must be"),
        (["--backend", "ray", "--replicas", "4:1"], "--replicas must be"),
        (["--backend", "ray", "--replicas", "1:2:3"], "--replicas must be"),
        (["--backend", "ray", "--replicas", "two"], "--replicas must be"),
        (["--backend", "ray", "--replica-gpus", "-1"], "--replica-gpus must be"),
        (["--backend", "ray", "--replica-gpus", "2"], "--replica-gpus must be"),
        (["--backend", "ray", "--replica-timeout", "0"], "--replica-timeout must be"),
        (["--backend", "ray", "--concurrency", "2"], "--concurrency is for the local backend"),
        (["--backend", "ray", "--ray-address", "ray://head:10001"], "Ray Client"),
        (["--replicas", "2"], "--replicas needs --backend ray"),
        (["--ray-address", "auto"], "--ray-address needs --backend ray"),
        (["--replica-gpus", "0"], "--replica-gpus needs --backend ray"),
        (["--replica-timeout", "60"], "--replica-timeout needs --backend ray"),
    ],
)
def test_bad_cluster_options_are_refused_with_the_flag_named(argv, words, capsys):
    with pytest.raises((ValueError, SystemExit)) as caught:
        settings(argv)
    message = str(caught.value) if caught.type is ValueError else capsys.readouterr().err
    assert words in message
