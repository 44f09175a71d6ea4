"""Settings: defaults, then GLMIMAGE_* environment variables, then command-line flags; bad values are refused."""

from __future__ import annotations

import pytest

from glmimage.config import Settings, load_settings


def settings(argv=(), **env):
    return load_settings(list(argv), environ=env)


def test_defaults_without_env_or_flags():
    s = settings()
    assert s == Settings()
    assert (s.model, s.dtype, s.concurrency, s.rate_limit, s.host, s.port) == (
        None,
        "auto",
        1,
        "10/minute",
        "127.0.0.1",
        7860,
    )
    assert s.warmup is True and s.log_prompts is False


def test_environment_variables_set_each_type_of_setting():
    s = settings(
        GLMIMAGE_MODEL="tiny",
        GLMIMAGE_CONCURRENCY="3",
        GLMIMAGE_SESSION_TTL="60",
        GLMIMAGE_FILE_TTL="120",
        GLMIMAGE_WARMUP="no",
        GLMIMAGE_LOG_PROMPTS="on",
        GLMIMAGE_RATE_LIMIT="6/minute",
        GLMIMAGE_CACHE_DIR="/tmp/x",
        GLMIMAGE_DTYPE="float32",
    )
    assert (s.model, s.concurrency, s.session_ttl, s.file_ttl) == ("tiny", 3, 60.0, 120.0)
    assert (s.warmup, s.log_prompts, s.rate_limit, s.cache_dir, s.dtype) == (
        False,
        True,
        "6/minute",
        "/tmp/x",
        "float32",
    )


def test_flags_override_environment_variables():
    s = settings(
        ["--model", "/models/cogview4", "--concurrency", "2", "--warmup", "--rate-limit", "0"],
        GLMIMAGE_MODEL="tiny",
        GLMIMAGE_CONCURRENCY="4",
        GLMIMAGE_WARMUP="false",
        GLMIMAGE_RATE_LIMIT="6/minute",
    )
    assert (s.model, s.concurrency, s.warmup, s.rate_limit) == ("/models/cogview4", 2, True, "0")


def test_a_negated_flag_overrides_an_environment_yes():
    assert settings(["--no-log-prompts"], GLMIMAGE_LOG_PROMPTS="1").log_prompts is False


def test_host_and_port_come_from_gradios_own_variables_and_flags_win():
    s = settings(GRADIO_SERVER_NAME="0.0.0.0", GRADIO_SERVER_PORT="8080")
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    assert settings(["--port", "9000"], GRADIO_SERVER_PORT="8080").port == 9000


def test_glmimage_host_is_not_a_setting():
    assert settings(GLMIMAGE_HOST="0.0.0.0").host == "127.0.0.1"


def test_float16_is_refused_with_a_message_about_black_images():
    with pytest.raises(ValueError, match="black images"):
        settings(["--dtype", "float16"])
    with pytest.raises(ValueError, match="black images"):
        settings(GLMIMAGE_DTYPE="float16")


def test_an_unknown_dtype_from_the_environment_is_refused_listing_the_choices():
    with pytest.raises(ValueError, match="auto, bfloat16, float32"):
        settings(GLMIMAGE_DTYPE="int4")


def test_session_ttl_longer_than_file_ttl_is_refused():
    with pytest.raises(ValueError, match="--session-ttl .* at most --file-ttl"):
        settings(["--session-ttl", "7200", "--file-ttl", "3600"])
    with pytest.raises(ValueError, match="--session-ttl"):
        settings(GLMIMAGE_SESSION_TTL="0")


@pytest.mark.parametrize("rate", ["fast", "10/fortnight", "0/minute", "10", "6/0s"])
def test_a_bad_rate_limit_is_refused_from_a_flag_or_the_environment(rate):
    with pytest.raises(ValueError, match="ate limit"):
        settings([f"--rate-limit={rate}"])
    with pytest.raises(ValueError, match="ate limit"):
        settings(GLMIMAGE_RATE_LIMIT=rate)


@pytest.mark.parametrize(
    "rate, requests, period_s", [("0", 0, 0.0), ("6/minute", 6, 60.0), ("100/hour", 100, 3600.0), ("6/30s", 6, 30.0)]
)
def test_rate_limit_forms_are_accepted_with_their_meaning(rate, requests, period_s):
    from_flag = settings(["--rate-limit", rate]).parsed_rate_limit
    assert (from_flag.requests, from_flag.period_s) == (requests, period_s)
    assert settings(GLMIMAGE_RATE_LIMIT=rate).parsed_rate_limit == from_flag


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--max-queue", "0"], "--max-queue must be at least 1"),
        (["--max-jobs-per-client", "-1"], "--max-jobs-per-client must be at least 0"),
        (["--max-sessions", "0"], "--max-sessions must be at least 1"),
        (["--port", "70000"], "--port must be from 1 to 65535"),
        (["--cache-threshold", "-1", "--cache"], "cache_threshold"),
    ],
)
def test_out_of_range_flags_are_refused_naming_the_flag(argv, words):
    with pytest.raises(ValueError, match=words):
        settings(argv)


def test_a_bad_yes_no_environment_value_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match="GLMIMAGE_WARMUP: not a yes/no value"):
        settings(GLMIMAGE_WARMUP="maybe")


def test_a_bad_number_in_the_environment_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match="GLMIMAGE_CONCURRENCY"):
        settings(GLMIMAGE_CONCURRENCY="two")


def test_an_unknown_flag_exits_like_argparse():
    with pytest.raises(SystemExit):
        settings(["--no-such-flag"])


def test_trusted_proxies_are_parsed_into_a_list():
    s = settings(["--trusted-proxies", "10.0.0.1, 192.168.0.0/16"])
    assert len(s.trusted_proxy_list) == 2


def test_main_refuses_float16_with_exit_code_2_and_the_message(capsys):
    from glmimage.web.server import main

    assert main(["--dtype", "float16"]) == 2
    assert "black images" in capsys.readouterr().err


# ---- devices and flag combinations ---------------------------------------------------------------------------


def test_devices_default_to_one_entry_and_concurrency_multiplies_the_entries():
    assert settings().device_list == [] and settings().workers == 1
    assert settings(["--concurrency", "2"]).workers == 2
    s = settings(["--devices", "cuda:0, cuda:1", "--concurrency", "2"])
    assert s.device_list == ["cuda:0", "cuda:1"] and s.workers == 4
    assert settings(GLMIMAGE_DEVICES="cpu,cpu").workers == 2
    assert settings(["--devices", "cuda"]).device_list == ["cuda:0"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--devices", "gpu0"], "'gpu0' is not a device"),
        (["--devices", "cuda:0,,cuda:1"], "'' is not a device"),
        (["--devices", "cuda:0,cpu"], "not both"),
        (["--devices", "cpu", "--offload", "model"], "--offload model needs CUDA devices"),
        (["--offload", "sequential", "--compile"], "Use --offload model with --compile"),
        (["--offload", "sequential", "--quantize", "int8"], "Use --offload model with --quantize int8"),
    ],
)
def test_a_combination_that_cannot_run_is_refused_at_start_with_the_reason(argv, words):
    with pytest.raises(ValueError, match=words):
        settings(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--cache", "--compile", "--quantize", "int8", "--devices", "cuda:0,cuda:1", "--concurrency", "2"],
        ["--offload", "model", "--compile", "--cache", "--quantize", "int8"],
        ["--offload", "sequential", "--cache", "--devices", "cuda:0,cuda:0"],
        ["--cache", "--compile", "--quantize", "int8", "--devices", "cpu,cpu"],
    ],
)
def test_supported_combinations_are_accepted(argv):
    assert settings(argv).workers >= 1
