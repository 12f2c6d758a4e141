"""The emulated engine: plans a generation, paces it, and renders vLLM's response bodies.

`Engine.plan` turns a validated request into a `Job` (texts, token counts, whether an injected
failure hits it); `Engine.complete` renders the non-streaming body and `Engine.stream` the SSE
events. Timing, per model profile:

- non-streaming: ``latency_ms + ttft_ms`` before the first token, then one decode step per
  ``1/tokens_per_second`` (all ``n`` choices advance together, as in a batch);
- streaming: the same schedule, one ``data:`` chunk per word and choice.

Injected failures (``error_rate``) draw from one `random.Random(seed)` per engine, so a run with
the same seed and request order fails the same requests. A non-streaming failure is a 500; a
streaming one is a 500 before the stream or, half of the time, an error event after the first
content chunk followed by ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from serving.emulator import errors
from serving.emulator.answers import prompt_key
from serving.emulator.config import EmulatorConfig, ModelProfile
from serving.emulator.generate import Generation, count_tokens, generate, scripted
from serving.emulator.metrics import EmulatorMetrics, RequestTimes
from serving.emulator.protocol import ChatCompletionRequest, CompletionRequest

__all__ = ["Engine", "Job"]

Kind = Literal["chat", "completion"]
Failure = Literal["before", "mid"] | None

_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Job:
    """One planned generation request."""

    kind: Kind
    request_id: str
    created: int
    model: str
    adapter: str | None
    profile: ModelProfile
    prompt_tokens: int
    choices: tuple[Generation, ...]
    include_usage: bool
    continuous_usage: bool
    failure: Failure
    prefix_key: bytes = b""  # identifies the prompt for the prefix-cache metrics
    n: int = 1
    max_tokens: int = 0

    @property
    def object_name(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.tokens) for choice in self.choices)

    @property
    def steps(self) -> int:
        return max((len(choice.tokens) for choice in self.choices), default=0)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


class Engine:
    """Plans, paces and renders generations for one emulated server."""

    def __init__(self, config: EmulatorConfig, metrics: EmulatorMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._rng = random.Random(config.seed)
        self.in_flight = 0

    def plan(
        self,
        request: ChatCompletionRequest | CompletionRequest,
        *,
        model: str,
        adapter: str | None,
        profile: ModelProfile,
        request_id: str,
    ) -> Job:
        """Generate the texts and decide the request's fate; raises `EmulatorError` (400)."""
        kind: Kind = "chat" if isinstance(request, ChatCompletionRequest) else "completion"
        prompts = request.prompts()
        lengths = [count_tokens(prompt) for prompt in prompts]
        limit = request.token_limit
        max_len = self._config.max_model_len
        # vLLM 0.32: max_tokens above the context length and prompts that leave no room are
        # refused; otherwise max_tokens is cut to the room the prompt leaves.
        if limit is not None and limit > max_len:
            raise errors.bad_request(
                f"max_tokens={limit} cannot be greater than max_model_len={max_len}. Please "
                f"request fewer output tokens. (parameter=max_tokens, value={limit})",
                "max_tokens",
            )
        for length in lengths:
            if length > max_len:
                raise errors.bad_request(
                    f"This model's maximum context length is {max_len} tokens. However, your "
                    f"prompt contains {length} input tokens, which exceeds this limit even "
                    "without any output tokens. Please reduce the length of the input prompt. "
                    f"(parameter=input_tokens, value={length})",
                    "input_tokens",
                )
            if length == max_len:
                raise errors.bad_request(
                    "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
                    "max_tokens",
                )
        choices = tuple(
            self._answer(model, profile, prompt, min(limit or max_len, max_len - length), sample)
            for prompt, length in zip(prompts, lengths, strict=True)
            for sample in range(request.n)
        )
        failure: Failure = None
        if profile.error_rate > 0 and self._rng.random() < profile.error_rate:
            failure = "mid" if request.stream and self._rng.random() < 0.5 else "before"
        return Job(
            kind=kind,
            request_id=f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{request_id}",
            created=int(time.time()),
            model=model,
            adapter=adapter,
            profile=profile,
            prompt_tokens=sum(lengths),
            choices=choices,
            include_usage=request.wants_usage,
            continuous_usage=request.wants_continuous_usage,
            failure=failure,
            prefix_key=hashlib.sha256("\x00".join(prompts).encode()).digest(),
            n=request.n,
            max_tokens=limit or max(1, max_len - max(lengths, default=0)),
        )

    def _answer(
        self, model: str, profile: ModelProfile, prompt: str, max_tokens: int, index: int
    ) -> Generation:
        seed = self._config.seed
        known = self._config.answers.get(prompt_key(prompt)) if self._config.answers else None
        if known is not None:
            quality = profile.topic_quality.get(known.topic, profile.quality)
            return scripted(
                model, prompt, known, seed=seed, quality=quality, max_tokens=max_tokens, index=index
            )
        return generate(
            model, prompt, seed=seed, quality=profile.quality, max_tokens=max_tokens, index=index
        )

    def _begin(self, job: Job) -> None:
        self.in_flight += 1
        self._metrics.request_started(job.adapter, len(job.choices))
        self._metrics.kv_reserve(job.prompt_tokens + job.completion_tokens)
        self._metrics.prefix_lookup(job.prefix_key, job.prompt_tokens)

    def _end(
        self, job: Job, start: float, finished: bool, emitted: int, first: float | None
    ) -> None:
        self.in_flight -= 1
        metrics = self._metrics
        metrics.request_finished(job.adapter, len(job.choices))
        metrics.kv_reserve(-(job.prompt_tokens + job.completion_tokens))
        metrics.prompt_tokens.inc(job.prompt_tokens)
        metrics.generation_tokens.inc(emitted)
        for choice in job.choices:
            metrics.finished(choice.finish_reason if finished else "abort")
        end = time.monotonic()
        queue = min(job.profile.latency_ms / 1000, end - start)
        first_at = first if first is not None else end
        metrics.request_done(
            job.prompt_tokens, emitted, job.n, job.max_tokens,
            RequestTimes(queue=queue, prefill=max(0.0, first_at - start - queue),
                         decode=end - first_at, e2e=end - start),
        )  # fmt: skip

    async def complete(self, job: Job) -> dict[str, Any]:
        """The non-streaming response body, after the profile's delay."""
        if job.failure is not None:
            raise errors.injected_failure()
        profile = job.profile
        per_token = 1 / profile.tokens_per_second if profile.tokens_per_second else 0.0
        start = time.monotonic()
        self._begin(job)
        finished = False
        first: float | None = None
        try:
            await _sleep((profile.latency_ms + profile.ttft_ms) / 1000 + per_token)
            first = time.monotonic()
            self._metrics.ttft.observe(first - start)
            await _sleep(per_token * (job.steps - 1))
            finished = True
        finally:
            self._end(job, start, finished, job.completion_tokens if finished else 0, first)
        return self._body(job)

    def _body(self, job: Job) -> dict[str, Any]:
        choices: list[dict[str, Any]] = []
        for index, choice in enumerate(job.choices):
            if job.kind == "chat":
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": choice.text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [],
                    "reasoning_content": None,
                }
                choices.append(
                    {
                        "index": index,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": choice.finish_reason,
                        "stop_reason": None,
                    }
                )
            else:
                choices.append(
                    {
                        "index": index,
                        "text": choice.text,
                        "logprobs": None,
                        "finish_reason": choice.finish_reason,
                        "stop_reason": None,
                        "prompt_logprobs": None,
                    }
                )
        usage: dict[str, Any] = _usage(job.prompt_tokens, job.completion_tokens)
        usage["prompt_tokens_details"] = None
        body: dict[str, Any] = {
            "id": job.request_id,
            "object": job.object_name,
            "created": job.created,
            "model": job.model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage,
        }
        if job.kind == "chat":
            body["prompt_logprobs"] = None
        body["kv_transfer_params"] = None
        return body

    def _chunk(self, job: Job, choices: list[dict[str, Any]], emitted: int | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": job.request_id,
            "object": f"{job.object_name}.chunk" if job.kind == "chat" else job.object_name,
            "created": job.created,
            "model": job.model,
            "choices": choices,
        }
        if emitted is not None:
            payload["usage"] = _usage(job.prompt_tokens, emitted)
        return _event(payload)

    def _piece(self, job: Job, index: int, text: str, finish: str | None) -> dict[str, Any]:
        if job.kind == "chat":
            choice: dict[str, Any] = {
                "index": index,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            if finish is not None:
                choice["stop_reason"] = None
            return choice
        return {
            "index": index,
            "text": text,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }

    async def stream(self, job: Job) -> AsyncIterator[bytes]:
        """The SSE events of a streaming response (``Job.failure != "before"``)."""
        profile = job.profile
        per_token = 1 / profile.tokens_per_second if profile.tokens_per_second else 0.0
        fmt = self._config.error_format
        continuous = job.continuous_usage
        start = time.monotonic()
        self._begin(job)
        emitted = 0
        finished = False
        first: float | None = None
        try:
            await _sleep((profile.latency_ms + profile.ttft_ms) / 1000)
            if job.kind == "chat":
                for index in range(len(job.choices)):
                    role = {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    yield self._chunk(job, [role], 0 if continuous else None)
            for step in range(job.steps):
                await _sleep(per_token)
                for index, choice in enumerate(job.choices):
                    if step >= len(choice.tokens):
                        continue
                    last = step == len(choice.tokens) - 1
                    text = choice.tokens[step]
                    piece = self._piece(job, index, text, choice.finish_reason if last else None)
                    emitted += 1
                    yield self._chunk(job, [piece], emitted if continuous else None)
                    if emitted == 1:
                        first = time.monotonic()
                        self._metrics.ttft.observe(first - start)
                        if job.failure == "mid":
                            yield _event(errors.stream_error_event(errors.injected_failure(), fmt))
                            yield _DONE
                            return
            if job.include_usage:
                yield self._chunk(job, [], job.completion_tokens)
            finished = True
            yield _DONE
        finally:
            self._end(job, start, finished, emitted, first)
