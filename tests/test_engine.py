"""The core without Gradio: LocalEngine on the tiny model (512x512, 2 steps), and GenerationService around it.

One request in, one result out: the images asked for, the seed used, timings, the worker it ran on; a stop between
steps; every failure (raised inside the real pipeline call) turned into a message key; a pool of pipelines
(``--devices cpu,cpu``) that runs two jobs at once, each on a pipeline of its own, from weights read once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import CogView4Pipeline
from inject import raising_in_every_worker
from PIL import Image

from glmimage import limits
from glmimage.config import Settings
from glmimage.engine import GenerationStopped, LocalEngine, pick_seed
from glmimage.errors import EngineError, InputError, Refused
from glmimage.models.accel import FastPaths
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


def test_two_workers_give_the_same_pixels_as_one(styles, engine):
    expected = pixels(engine.generate(request(seed=5)).images[0])
    pair = LocalEngine(PipelineLoader("tiny", warmup=False, devices=["cpu", "cpu"]).start(), styles, workers=2)
    futures = [pair.submit(request(seed=5)) for _ in range(2)]
    results = [future.result() for future in futures]
    pair.close()
    assert all(np.array_equal(pixels(result.images[0]), expected) for result in results)
    assert {result.worker for result in results} <= {"cpu:0", "cpu:1"}


@pytest.mark.parametrize(
    "error, key",
    [
        (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "error.oom"),
        (lambda: RuntimeError("CUDA error: out of memory"), "error.oom"),
        (lambda: RuntimeError("expected scalar type Float but found BFloat16"), "error.generation_failed"),
        (lambda: ValueError("something inside the pipeline"), "error.generation_failed"),
    ],
)
def test_pipeline_failures_become_engine_errors_with_a_message_key(loader, engine, error, key):
    # Raised inside the real pipeline call, at step 2 (the transformer's third call), not before it.
    with raising_in_every_worker(loader.workers, error, at_call=3), pytest.raises(EngineError) as caught:
        engine.submit(request(num_inference_steps=3)).result()
    assert caught.value.key == key
    assert not isinstance(caught.value, GenerationStopped)
    assert engine.recent[-1].outcome == ("oom" if key == "error.oom" else "failed")
    assert engine.recent[-1].steps_done == 1


def test_the_engine_refuses_a_worker_count_other_than_the_loaders(loader, styles):
    with pytest.raises(ValueError, match="expects 2 workers, but the loader builds 1"):
        LocalEngine(loader, styles, workers=2)


def test_a_model_that_failed_to_load_gives_its_reason_as_the_error_key(tmp_path, styles):
    engine = LocalEngine(PipelineLoader(str(tmp_path / "missing"), warmup=False).start(), styles)
    with pytest.raises(EngineError) as caught:
        engine.submit(request()).result()
    engine.close()
    assert caught.value.key == "load.bad_path"
    assert "missing" in caught.value.params["detail"]


# ---- the pool: --devices cpu,cpu --------------------------------------------------------------------------------

CACHE = FastPaths(cache_threshold=0.3)  # high enough that the cache really skips steps on the tiny weights
CACHE_DTYPE = "float32"


@pytest.fixture(scope="module")
def cached_pair(styles):
    loader = PipelineLoader("tiny", CACHE_DTYPE, CACHE, warmup=False, devices=["cpu", "cpu"]).start()
    engine = LocalEngine(loader, styles)
    yield engine
    engine.close()


def test_with_two_cpu_devices_two_jobs_run_at_once_on_two_pipelines_and_draw_what_a_fresh_one_draws(
    styles, cached_pair
):
    both_running = threading.Barrier(2, timeout=60)  # broken (and the test failed) unless both run at once

    def meet(done: int, _total: int) -> None:
        if done == 1:
            both_running.wait()

    requests = [request(num_inference_steps=6), request(num_inference_steps=6, width=768)]
    results = [future.result() for future in [cached_pair.submit(r, on_step=meet) for r in requests]]
    first, second = cached_pair.recent[-2], cached_pair.recent[-1]
    assert first.started < second.ended and second.started < first.ended  # their run times overlap
    assert {result.worker for result in results} == {"cpu:0", "cpu:1"}

    fresh = LocalEngine(PipelineLoader("tiny", CACHE_DTYPE, CACHE, warmup=False).start(), styles)
    for result, sent in zip(results, requests, strict=True):
        assert np.array_equal(pixels(result.images[0]), pixels(fresh.generate(sent).images[0]))
    fresh.close()


def test_a_stop_on_one_pipeline_of_the_pool_leaves_both_drawing_what_a_fresh_one_draws(styles, cached_pair):
    with pytest.raises(GenerationStopped):
        cached_pair.generate(request(num_inference_steps=6), should_stop=lambda: True)
    stopped_on = cached_pair.recent[-1].worker
    fresh = LocalEngine(PipelineLoader("tiny", CACHE_DTYPE, CACHE, warmup=False).start(), styles)
    expected = pixels(fresh.generate(request(width=768, num_inference_steps=6)).images[0])
    fresh.close()
    again = [cached_pair.submit(request(width=768, num_inference_steps=6)) for _ in range(2)]
    results = [future.result() for future in again]
    assert stopped_on in {result.worker for result in results}
    assert all(np.array_equal(pixels(result.images[0]), expected) for result in results)


def test_the_weights_are_read_from_disk_once_and_pipelines_share_only_modules_without_state(monkeypatch):
    reads: list[str] = []
    real = CogView4Pipeline.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        reads.append(str(args[0]))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(CogView4Pipeline, "from_pretrained", classmethod(counted))
    for fast, own_transformer in ((CACHE, True), (FastPaths(), False)):
        reads.clear()
        loader = PipelineLoader("tiny", CACHE_DTYPE, fast, warmup=False, devices=["cpu", "cpu"]).start()
        one, two = (worker.pipe for worker in loader.pool(120))
        assert len(reads) == 1
        # The text encoder and the VAE keep nothing between calls; the transformer with cache hooks does.
        assert one.text_encoder is two.text_encoder and one.vae is two.vae
        assert (one.transformer is not two.transformer) is own_transformer
        # Per-call state is never shared: the scheduler's step index, the tokenizer (not thread-safe).
        assert one.scheduler is not two.scheduler and one.tokenizer is not two.tokenizer


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
    assert outcome.details["worker"] == "cpu:0"
    assert len(session.history) == 1 and session.history[0].files == outcome.files
    assert session.log[-1]["event"] == "generated"


def test_service_run_that_fails_leaves_the_history_unchanged_and_logs_the_failure(loader, engine, styles, tmp_path):
    session = Session(str(tmp_path))
    make_service(engine, styles).run(request(), session, queue_s=0)
    before = list(session.history)
    out_of_memory = lambda: torch.OutOfMemoryError("CUDA out of memory")  # noqa: E731 - no GPU here to exhaust
    with raising_in_every_worker(loader.workers, out_of_memory, at_call=2), pytest.raises(EngineError, match="oom"):
        make_service(engine, styles).run(request(), session, queue_s=0)
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


def test_service_run_of_a_session_ended_in_the_last_step_keeps_no_file_history_or_log_line(engine, styles, tmp_path):
    session = Session(str(tmp_path))
    make_service(engine, styles).run(request(num_inference_steps=1), session, queue_s=0)
    folder = session.folder
    assert folder.exists()

    def end_session_at_the_last_step(done: int, total: int) -> None:
        if done == total:
            session.dispose()  # the tab closed while the last step ran: no stop is asked after the last step

    with pytest.raises(GenerationStopped):
        make_service(engine, styles).run(
            request(num_inference_steps=2), session, queue_s=0, on_step=end_session_at_the_last_step
        )
    assert not folder.exists() and session.history == [] and session.log == []
