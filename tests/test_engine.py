"""The core without Gradio: LocalEngine on the tiny model (512x512, 2 steps), and GenerationService around it.

One request in, one result out: the images asked for, the seed used, timings; a stop between steps; every failure
turned into a message key.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glmimage import limits
from glmimage.config import Settings
from glmimage.engine import GenerationStopped, LocalEngine, pick_seed
from glmimage.errors import EngineError, InputError, Refused
from glmimage.models.loading import PipelineLoader
from glmimage.requests import GenerationRequest
from glmimage.service import GenerationService
from glmimage.sessions import Session

ROOT = Path(__file__).resolve().parent.parent
# About 1100 tokens with the tiny byte-level tokenizer (few merges), under the 4000-character cap.
OVER_TOKEN_LIMIT = "qz" * 550


def request(**overrides) -> GenerationRequest:
    values = dict(
        prompt="a red apple on a wooden table",
        width=512,
        height=512,
        num_inference_steps=2,
        seed=1234,
        randomize_seed=False,
    )
    values.update(overrides)
    return GenerationRequest(**values)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def loader() -> PipelineLoader:
    loader = PipelineLoader("tiny", warmup=False).start()
    loader.wait(120)
    return loader


@pytest.fixture(scope="module")
def engine(loader, styles):
    engine = LocalEngine(loader, styles)
    yield engine
    engine.close()


class FailingPipe:
    """The real tiny pipeline (tokenizer and all), except that calling it fails the way the real one can."""

    def __init__(self, pipe: object, error: BaseException) -> None:
        self._pipe = pipe
        self.error = error

    def __getattr__(self, name: str) -> object:
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        raise self.error


class FailingLoader:
    """The real, loaded loader, except that wait() hands out a FailingPipe."""

    def __init__(self, loader: PipelineLoader, error: BaseException) -> None:
        self._loader = loader
        self._pipe = FailingPipe(loader.wait(0), error)

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def wait(self, timeout: float | None = None) -> object:
        return self._pipe


# ---- engine ----------------------------------------------------------------------------------------------------


def test_result_has_as_many_images_as_asked_of_the_requested_size(engine):
    result = engine.submit(request(num_images=2, width=768, height=512)).result()
    assert len(result.images) == 2
    assert all(image.size == (768, 512) for image in result.images)
    assert result.seed == 1234


def test_same_seed_gives_identical_pixels_and_another_seed_different_ones(engine):
    first = engine.generate(request(seed=7)).images[0]
    again = engine.generate(request(seed=7)).images[0]
    other = engine.generate(request(seed=8)).images[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_a_randomized_seed_is_reported_and_reusing_it_reproduces_the_pixels(engine):
    random_result = engine.generate(request(seed=0, randomize_seed=True))
    assert 0 <= random_result.seed <= limits.MAX_SEED
    replay = engine.generate(request(seed=random_result.seed, randomize_seed=False))
    assert replay.seed == random_result.seed
    assert np.array_equal(pixels(random_result.images[0]), pixels(replay.images[0]))


def test_pick_seed_keeps_a_fixed_seed_and_draws_different_random_ones():
    assert pick_seed(request(seed=99, randomize_seed=False)) == 99
    drawn = {pick_seed(request(randomize_seed=True)) for _ in range(20)}
    assert len(drawn) > 1 and all(0 <= seed <= limits.MAX_SEED for seed in drawn)


def test_timings_are_present_and_positive(engine):
    timings = engine.generate(request(num_inference_steps=3)).timings
    assert timings.steps == 3
    assert timings.model_s > 0 and timings.per_step_s > 0
    assert timings.per_step_s < timings.model_s  # one step of three, not the whole run
    assert timings.load_wait_s >= 0


def test_every_step_is_reported_in_order(engine):
    steps: list[tuple[int, int]] = []
    engine.generate(request(num_inference_steps=3), on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_a_stop_request_ends_the_job_after_the_first_step(engine):
    steps: list[int] = []
    with pytest.raises(GenerationStopped) as caught:
        engine.submit(
            request(num_inference_steps=5), on_step=lambda done, _: steps.append(done), should_stop=lambda: True
        ).result()
    assert steps == [1]
    assert caught.value.key == "status.stopped"
    assert caught.value.params == dict(step=1, total=5)


def test_a_stop_seen_only_after_the_last_step_keeps_the_finished_images(engine):
    result = engine.generate(request(num_inference_steps=1), should_stop=lambda: True)
    assert len(result.images) == 1


def test_the_engine_still_works_after_a_stop(engine):
    with pytest.raises(GenerationStopped):
        engine.generate(request(), should_stop=lambda: True)
    assert len(engine.generate(request()).images) == 1


def test_the_style_is_applied_before_generation(engine, styles):
    style_id = styles.ids[1]
    result = engine.generate(request(style=style_id, negative_prompt="blurry"))
    assert result.final == styles.apply(style_id, "a red apple on a wooden table", "blurry")
    assert result.final.prompt != "a red apple on a wooden table"


def test_a_chinese_prompt_generates(engine):
    result = engine.generate(request(prompt="一只可爱的猫坐在沙发上"))
    assert result.final.prompt == "一只可爱的猫坐在沙发上" and len(result.images) == 1


def test_token_count_includes_the_two_special_tokens(engine):
    assert engine.count_tokens("") == 2
    assert engine.count_tokens(OVER_TOKEN_LIMIT) > limits.MAX_PROMPT_TOKENS
    assert len(OVER_TOKEN_LIMIT) < limits.MAX_PROMPT_CHARS


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_over_the_token_limit_is_refused_naming_the_limit(engine, field):
    with pytest.raises(InputError) as caught:
        engine.generate(request(**{field: OVER_TOKEN_LIMIT}))
    assert caught.value.key == "error.too_many_tokens"
    assert caught.value.params["field"] == field and caught.value.params["max"] == 1024
    assert "1024" in str(caught.value)


def test_token_count_is_unknown_while_the_model_loads(styles):
    waiting = LocalEngine(PipelineLoader("tiny", warmup=False), styles)  # never started
    assert waiting.count_tokens("a cat") is None
    waiting.close()


def test_generations_run_on_one_long_lived_worker_thread(loader, styles):
    engine = LocalEngine(loader, styles)
    names: list[str] = []
    for _ in range(2):
        engine.submit(
            request(num_inference_steps=1), on_step=lambda *_: names.append(threading.current_thread().name)
        ).result()
    engine.close()
    assert len(set(names)) == 1 and names[0].startswith("glmimage-gpu")


def test_two_workers_give_the_same_pixels_as_one(loader, styles, engine):
    expected = pixels(engine.generate(request(seed=5)).images[0])
    pair = LocalEngine(loader, styles, workers=2)
    futures = [pair.submit(request(seed=5)) for _ in range(2)]
    images = [future.result().images[0] for future in futures]
    pair.close()
    assert all(np.array_equal(pixels(image), expected) for image in images)


@pytest.mark.parametrize(
    "error, key",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "error.oom"),
        (RuntimeError("CUDA error: out of memory"), "error.oom"),
        (RuntimeError("expected scalar type Float but found BFloat16"), "error.generation_failed"),
        (ValueError("something inside the pipeline"), "error.generation_failed"),
    ],
)
def test_pipeline_failures_become_engine_errors_with_a_message_key(loader, styles, error, key):
    engine = LocalEngine(FailingLoader(loader, error), styles)
    with pytest.raises(EngineError) as caught:
        engine.submit(request()).result()
    engine.close()
    assert caught.value.key == key
    assert not isinstance(caught.value, GenerationStopped)


def test_a_model_that_failed_to_load_gives_its_reason_as_the_error_key(tmp_path, styles):
    engine = LocalEngine(PipelineLoader(str(tmp_path / "missing"), warmup=False).start(), styles)
    with pytest.raises(EngineError) as caught:
        engine.submit(request()).result()
    engine.close()
    assert caught.value.key == "load.bad_path"
    assert "missing" in caught.value.params["detail"]


def test_the_core_modules_never_import_gradio():
    code = (
        "import sys\nimport glmimage.config, glmimage.engine, glmimage.i18n, glmimage.models.loading, "
        "glmimage.requests, glmimage.service, glmimage.sessions, glmimage.sizes, glmimage.styles\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gradio'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ---- service: admission, then generate, save and record -----------------------------------------------------------


def raw(**overrides) -> dict:
    values = dict(
        prompt="a red apple on a wooden table",
        negative_prompt="",
        style="none",
        width=512,
        height=512,
        num_images=1,
        seed=1234,
        randomize_seed=False,
        num_inference_steps=2,
        guidance_scale=3.5,
    )
    values.update(overrides)
    return values


def make_service(engine, styles, **settings) -> GenerationService:
    values = dict(model="tiny", rate_limit="0", max_jobs_per_client=2)
    values.update(settings)
    return GenerationService(Settings(**values), engine, styles, lambda: "tiny")


def test_service_run_saves_pngs_into_the_session_and_returns_seed_and_all_timings(engine, styles, tmp_path):
    session = Session(str(tmp_path))
    outcome = make_service(engine, styles).run(request(num_images=2), session, queue_s=0.25)
    assert len(outcome.files) == 2
    assert all(Path(f).parent == session.folder and Image.open(f).size == (512, 512) for f in outcome.files)
    assert outcome.seed == 1234 and outcome.details["seed"] == 1234
    timings = outcome.details["timings"]
    assert set(timings) == {"queue_s", "load_wait_s", "model_s", "per_step_s", "save_s", "total_s"}
    assert timings["queue_s"] == 0.25
    assert all(timings[name] > 0 for name in ("model_s", "per_step_s", "save_s", "total_s"))
    assert timings["total_s"] >= timings["queue_s"] + timings["model_s"]
    assert outcome.details["parameters"] == request(num_images=2).to_dict()
    assert len(session.history) == 1 and session.history[0].files == outcome.files
    assert session.log[-1]["event"] == "generated"


def test_service_run_that_fails_leaves_the_history_unchanged_and_logs_the_failure(loader, engine, styles, tmp_path):
    session = Session(str(tmp_path))
    make_service(engine, styles).run(request(), session, queue_s=0)
    before = list(session.history)
    failing = LocalEngine(FailingLoader(loader, torch.OutOfMemoryError("CUDA out of memory")), styles)
    with pytest.raises(EngineError, match="error.oom"):
        make_service(failing, styles).run(request(), session, queue_s=0)
    failing.close()
    assert session.history == before
    assert session.log[-1]["event"] == "failed" and session.log[-1]["reason"] == "error.oom"


def test_service_run_of_a_stopped_job_logs_a_stop_and_keeps_the_history(engine, styles, tmp_path):
    session = Session(str(tmp_path))
    with pytest.raises(GenerationStopped):
        make_service(engine, styles).run(request(num_inference_steps=3), session, queue_s=0, should_stop=lambda: True)
    assert session.history == [] and session.log[-1]["event"] == "stopped"


def test_service_run_of_a_prompt_over_the_token_limit_is_refused_and_logged(engine, styles, tmp_path):
    session = Session(str(tmp_path))
    with pytest.raises(InputError, match="1024"):
        make_service(engine, styles).run(request(prompt=OVER_TOKEN_LIMIT), session, queue_s=0)
    assert session.history == []
    assert (session.log[-1]["event"], session.log[-1]["reason"]) == ("refused", "error.too_many_tokens")


def test_service_admits_a_valid_request_and_refuses_bad_input_logging_the_refusal(engine, styles, tmp_path):
    service = make_service(engine, styles)
    session = Session(str(tmp_path))
    assert service.admit(raw(), "1.2.3.4", "s1", 0, session) == request(guidance_scale=3.5)
    with pytest.raises(InputError, match="num_images"):
        service.admit(raw(num_images=9), "1.2.3.4", "s1", 0, session)
    assert session.log[-1]["event"] == "refused" and session.log[-1]["reason"] == "error.out_of_range"


def test_service_refuses_a_client_with_too_many_jobs(engine, styles):
    with pytest.raises(Refused) as caught:
        make_service(engine, styles, max_jobs_per_client=2).admit(raw(), "1.2.3.4", "s1", jobs_for_client=2)
    assert caught.value.key == "error.too_many_jobs" and caught.value.params == {"max": 2}


def test_service_rate_limit_refuses_the_request_over_the_limit_with_a_wait(engine, styles):
    service = make_service(engine, styles, rate_limit="2/minute")
    service.admit(raw(), "1.2.3.4", "s1", 0)
    service.admit(raw(), "1.2.3.4", "s1", 0)
    with pytest.raises(Refused) as caught:
        service.admit(raw(), "1.2.3.4", "s1", 0)
    assert caught.value.key == "error.rate_limited" and caught.value.params["seconds"] >= 1
    service.admit(raw(), "5.6.7.8", "s2", 0)  # another visitor is not affected
