"""The service under an operator's switches, without a server: a shutdown refuses new work and stops running jobs
once the drain time is spent; the maintenance file refuses in the visitor's language; every ending is counted in
the metrics by outcome and reason. Plus the new settings, from flags and GLMIMAGE_* variables."""

from __future__ import annotations

import pytest

from glmimage.config import load_settings
from glmimage.engine import LocalEngine
from glmimage.errors import EngineError, Refused
from glmimage.maintenance import Drain, MaintenanceFile
from glmimage.metrics import LiveValues, Metrics
from glmimage.models.loading import PipelineLoader
from glmimage.requests import GenerationRequest
from glmimage.service import GenerationService
from glmimage.sessions import Session


@pytest.fixture(scope="module")
def engine(styles):
    loader = PipelineLoader("tiny", warmup=False).start()
    loader.wait(120)
    engine = LocalEngine(loader, styles)
    yield engine
    engine.close()


@pytest.fixture
def metrics():
    return Metrics(
        LiveValues(
            queue_length=lambda: 0,
            model_state=lambda: "ready",
            model_states=["loading", "ready", "failed"],
            maintenance=lambda: False,
            draining=lambda: False,
        )
    )


def counted(metrics: Metrics, outcome: str, reason: str = "") -> float:
    return metrics.registry.get_sample_value("glmimage_generations_total", {"outcome": outcome, "reason": reason}) or 0


def service(engine, styles, metrics, **kwargs) -> GenerationService:
    settings = load_settings(["--model", "tiny", "--rate-limit", "0"], environ={})
    return GenerationService(settings, engine, styles, lambda: "tiny", observer=metrics, **kwargs)


RAW = dict(
    prompt="a red apple",
    negative_prompt="",
    style="none",
    width=512,
    height=512,
    num_images=1,
    seed=1,
    randomize_seed=False,
    num_inference_steps=4,
    guidance_scale=3.5,
)


def test_a_shutdown_refuses_new_requests_and_stops_a_running_job_at_its_next_step(engine, styles, metrics, tmp_path):
    drain = Drain()
    svc = service(engine, styles, metrics, drain=drain)
    session = Session(str(tmp_path))
    steps: list[int] = []

    def on_step(done: int, _total: int) -> None:
        steps.append(done)
        if done == 1:
            drain.stop_jobs()  # the drain time runs out while this job runs

    with pytest.raises(EngineError) as stopped:
        svc.run(GenerationRequest(**RAW), session, queue_s=0.1, on_step=on_step)
    assert stopped.value.key == "error.restarting" and steps == [1]
    assert session.log[-1]["event"] == "stopped" and session.history == []
    with pytest.raises(Refused, match="error.restarting"):
        svc.admit(RAW, "203.0.113.1", "session", 0)
    with pytest.raises(EngineError, match="error.restarting"):  # a queued job that starts now
        svc.run(GenerationRequest(**RAW), session, queue_s=5.0)
    assert counted(metrics, "stopped", "shutdown") == 1
    assert counted(metrics, "refused", "restarting") == 2
    assert metrics.registry.get_sample_value("glmimage_busy_workers") == 0
    assert metrics.registry.get_sample_value("glmimage_queue_wait_seconds_count") == 1  # only the job that ran


def test_a_visitors_stop_and_a_finished_job_are_counted_apart(engine, styles, metrics, tmp_path):
    svc = service(engine, styles, metrics)
    session = Session(str(tmp_path))
    svc.run(GenerationRequest(**RAW), session, queue_s=0.0)
    with pytest.raises(EngineError, match="status.stopped"):
        svc.run(GenerationRequest(**RAW), session, queue_s=0.0, should_stop=lambda: True)
    assert counted(metrics, "done") == 1 and counted(metrics, "stopped", "visitor") == 1
    assert metrics.registry.get_sample_value("glmimage_step_seconds_count") == 1


def test_the_maintenance_file_refuses_in_the_visitors_language(engine, styles, metrics, tmp_path):
    path = tmp_path / "maintenance"
    svc = service(engine, styles, metrics, maintenance=MaintenanceFile(path))
    assert svc.admit(RAW, "203.0.113.1", "a", 0).prompt == "a red apple"
    path.write_text("[en]\nBack at ten.\n[zh]\n十点恢复。\n", encoding="utf-8")
    svc.maintenance = MaintenanceFile(path)  # a fresh look, not the answer cached a moment ago
    with pytest.raises(Refused) as english:
        svc.admit(RAW, "203.0.113.1", "a", 0)
    with pytest.raises(Refused) as chinese:
        svc.admit(RAW, "203.0.113.1", "a", 0, lang="zh")
    assert (english.value.key, english.value.params) == ("error.maintenance", {"notice": "Back at ten."})
    assert chinese.value.params == {"notice": "十点恢复。"}
    path.write_text("")
    svc.maintenance = MaintenanceFile(path)
    with pytest.raises(Refused, match="maintenance.default"):
        svc.admit(RAW, "203.0.113.1", "a", 0)
    assert counted(metrics, "refused", "maintenance") == 3


def test_every_operator_option_has_a_flag_and_a_glmimage_variable(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:$2y$05$vZZWz/LxLGPW1rco5HNO0OsRK7cDt0dHbDWDW7R1NgmwwgCyes.kS\n")
    env = {
        "GLMIMAGE_AUTH_FILE": str(users),
        "GLMIMAGE_MAINTENANCE_FILE": str(tmp_path / "maintenance"),
        "GLMIMAGE_DRAIN_TIMEOUT": "5",
        "GLMIMAGE_METRICS": "off",
        "GLMIMAGE_CONTACT": "[help](mailto:help@example.org)",
    }
    s = load_settings([], environ=env)
    assert (s.auth_file, s.drain_timeout, s.metrics, s.contact) == (str(users), 5.0, False, env["GLMIMAGE_CONTACT"])
    assert s.maintenance_file == env["GLMIMAGE_MAINTENANCE_FILE"]
    flags = load_settings(["--drain-timeout", "0", "--metrics", "--contact", "ops@example.org"], environ=env)
    assert (flags.drain_timeout, flags.metrics, flags.contact) == (0.0, True, "ops@example.org")
    defaults = load_settings([], environ={})
    assert (defaults.auth_file, defaults.maintenance_file, defaults.ssl_certfile) == (None, None, None)
    assert (defaults.drain_timeout, defaults.metrics, defaults.contact) == (30.0, True, "")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--drain-timeout", "-1"], "--drain-timeout must be from 0 to 3600"),
        (["--contact", "x" * 501], "--contact is too long"),
        (["--ssl-keyfile-password", "pw"], "--ssl-keyfile-password needs --ssl-keyfile"),
    ],
)
def test_bad_operator_settings_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        load_settings(flags, environ={})
