"""A stand-in for vLLM's OpenAI-compatible server, so the gateway and its tests run without a GPU.

It speaks vLLM's HTTP API (routes, statuses, error bodies and messages, streaming rules, LoRA
admin routes, ``vllm:*`` metrics) and generates deterministic text whose quality, latency and
failure rate are set per model (`ModelProfile`). Good answers end with ``Resolved.``
(`is_good_answer`); see `serving.emulator.generate`.
"""

from serving.emulator.app import EMULATED_VLLM_VERSION, create_app
from serving.emulator.cli import add_arguments, build_config, run
from serving.emulator.config import EmulatorConfig, ModelProfile, parse_profile
from serving.emulator.errors import EmulatorError
from serving.emulator.generate import (
    GOOD_ANSWER_MARKER,
    Generation,
    answer_is_good,
    count_tokens,
    generate,
    is_good_answer,
)
from serving.emulator.settings import EmulatorSettings

__all__ = [
    "EMULATED_VLLM_VERSION",
    "GOOD_ANSWER_MARKER",
    "EmulatorConfig",
    "EmulatorError",
    "EmulatorSettings",
    "Generation",
    "ModelProfile",
    "add_arguments",
    "answer_is_good",
    "build_config",
    "count_tokens",
    "create_app",
    "generate",
    "is_good_answer",
    "parse_profile",
    "run",
]
