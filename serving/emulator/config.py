"""Configuration of the vLLM emulator: immutable, validated value objects.

`ModelProfile` describes how one model (the base model or an adapter) behaves: its latency, how
often it fails, and how often its answers are good. `EmulatorConfig` describes one emulated
`vllm serve` process. `parse_profile` reads the CLI form of a profile,
``NAME:key=value,key=value``.
"""

from __future__ import annotations

import math
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.emulator.answers import ScriptedAnswer

__all__ = ["PROFILE_KEYS", "EmulatorConfig", "ModelProfile", "parse_profile"]


class ModelProfile(BaseModel):
    """How one model behaves in the emulator.

    Attributes:
        latency_ms: fixed extra delay per request (queueing, network), before the first token.
        ttft_ms: time to first token (prefill), before the first token.
        tokens_per_second: decode speed; ``0`` means instant.
        error_rate: probability in [0, 1] that a request fails with an injected server error.
        quality: probability in [0, 1] that an answer is good (see `generate.answer_is_good`).
        topic_quality: per answer-key topic, the probability of the right answer (prompts of
            the answer key, `answers.AnswerKey`); topics left out use ``quality``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    ttft_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    tokens_per_second: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    quality: float = Field(default=0.8, ge=0, le=1)
    topic_quality: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _topic_probabilities(self) -> Self:
        for topic, value in self.topic_quality.items():
            if not 0 <= value <= 1:
                raise ValueError(f"quality.{topic} must be in [0, 1], got {value}")
        return self


#: The keys `parse_profile` accepts, in the order of `ModelProfile`'s fields (and
#: ``quality.<topic>`` for `ModelProfile.topic_quality`).
PROFILE_KEYS: tuple[str, ...] = tuple(k for k in ModelProfile.model_fields if k != "topic_quality")


class EmulatorConfig(BaseModel):
    """One emulated `vllm serve` process.

    Attributes:
        base_model: the ``--model`` value (reported as ``root`` of the base model cards).
        served_model_names: the ``--served-model-name`` values; empty means ``[base_model]``.
            The first one is the name in responses and metrics for base-model requests.
        static_loras: ``--lora-modules name=path`` adapters, registered at start-up.
        allow_runtime_lora_updating: ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``; registers the
            ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` routes.
        error_format: ``"nested"`` (vLLM >= 0.10.1) or ``"flat"`` (older) error bodies.
        api_key: ``--api-key``; when set, every ``/v1`` path needs ``Authorization: Bearer``.
        default_profile: behaviour of every model without an entry in ``profiles``.
        profiles: behaviour per model name (adapter name or served base name).
        max_model_len: the context length reported in ``/v1/models`` and enforced on requests.
        max_loras: ``--max-loras``, reported in ``vllm:lora_requests_info``.
        seed: seeds generated text, answer quality and error injection.
        answers: the answer key (``--answer-key``), by `answers.prompt_key`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_model: str = Field(min_length=1)
    served_model_names: list[str] = Field(default_factory=list)
    static_loras: dict[str, str] = Field(default_factory=dict)
    allow_runtime_lora_updating: bool = False
    error_format: Literal["flat", "nested"] = "nested"
    api_key: str | None = None
    max_lora_rank: int = Field(default=16, ge=1)
    lora_load_latency_ms: float = Field(default=0.0, ge=0)
    default_profile: ModelProfile = Field(default_factory=ModelProfile)
    profiles: dict[str, ModelProfile] = Field(default_factory=dict)
    max_model_len: int = Field(default=8192, ge=1)
    max_loras: int = Field(default=1, ge=1)
    seed: int = 0
    answers: dict[str, ScriptedAnswer] = Field(default_factory=dict, repr=False)

    @model_validator(mode="after")
    def _default_served_names(self) -> Self:
        if not self.served_model_names:
            # Frozen model: write through __dict__, as pydantic does for defaults.
            self.__dict__["served_model_names"] = [self.base_model]
        if any(not name for name in self.served_model_names):
            raise ValueError("served model names must be non-empty")
        if any(not name or not path for name, path in self.static_loras.items()):
            raise ValueError("static LoRA adapters need a non-empty name and path")
        return self

    @property
    def model_name(self) -> str:
        """The first served name: the ``model`` of base responses and the metrics label."""
        return self.served_model_names[0]

    @property
    def lora_enabled(self) -> bool:
        """Whether LoRA is in use (vLLM's ``--enable-lora``)."""
        return bool(self.static_loras) or self.allow_runtime_lora_updating

    def profile_for(self, name: str) -> ModelProfile:
        """The profile of model ``name``, falling back to ``default_profile``."""
        return self.profiles.get(name, self.default_profile)


def parse_profile(spec: str) -> tuple[str, ModelProfile]:
    """Parse ``NAME:key=value,...`` (keys of `ModelProfile`) into ``(NAME, profile)``.

    Example: ``support-lora-v2:latency_ms=20,ttft_ms=5,tokens_per_second=200,error_rate=0.01``.
    Keys left out keep their defaults; ``NAME:`` alone gives the default profile.

    Raises:
        ValueError: the message names the bad part, key or value.
    """
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"profile {spec!r} must look like NAME:key=value,...")
    values: dict[str, float] = {}
    topics: dict[str, float] = {}
    for item in (part.strip() for part in rest.split(",")):
        if not item:
            continue
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq:
            raise ValueError(f"profile {name!r}: {item!r} is not key=value")
        topic = key.removeprefix("quality.") if key.startswith("quality.") else None
        if topic == "":
            raise ValueError(f"profile {name!r}: {key!r} names no topic (quality.<topic>)")
        if topic is None and key not in PROFILE_KEYS:
            raise ValueError(
                f"profile {name!r}: unknown key {key!r} (expected one of {', '.join(PROFILE_KEYS)})"
            )
        if key in values:
            raise ValueError(f"profile {name!r}: key {key!r} given twice")
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(f"profile {name!r}: {key}={raw!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"profile {name!r}: {key}={raw!r} is not a finite number")
        if topic is not None:
            topics[topic] = number
        values[key] = number
    try:
        plain = {k: v for k, v in values.items() if not k.startswith("quality.")}
        profile = ModelProfile.model_validate({**plain, "topic_quality": topics})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "quality.<topic>"
        raise ValueError(
            f"profile {name!r}: {key}={values.get(key)!r} is invalid: {first['msg']}"
        ) from None
    return name, profile
