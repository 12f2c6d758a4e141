"""Request models of the emulated vLLM routes (the fields the emulator reads).

As in vLLM, unknown fields are accepted (``extra="allow"``) and ignored; fields vLLM knows but the
emulator does not use (sampling parameters, tools, ...) are ignored silently, truly unknown ones
are logged as a warning by name. Validation failures become 400 ``BadRequestError`` responses;
`ParamError` carries the ``param`` of the error body.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "KNOWN_FIELDS",
    "ChatCompletionRequest",
    "CompletionRequest",
    "LoadLoRAAdapterRequest",
    "ParamError",
    "StreamOptions",
    "UnloadLoRAAdapterRequest",
]


class ParamError(ValueError):
    """A validation error that names the offending request field (vLLM's ``param``)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


#: Request fields vLLM accepts on chat or completion requests (OpenAI's and vLLM's own extensions,
#: across versions); anything else vLLM ignores with a warning. Why the gateway must forward them
#: untouched: docs/vllm.md.
KNOWN_FIELDS: frozenset[str] = frozenset(
    (
        "messages", "prompt", "model", "frequency_penalty", "logit_bias", "logprobs",
        "top_logprobs", "max_tokens", "max_completion_tokens", "n", "presence_penalty",
        "response_format", "seed", "stop", "stream", "stream_options", "temperature", "top_p",
        "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "user",
        "use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty",
        "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
        "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
        "truncation_side", "prompt_logprobs", "allowed_token_ids", "bad_words", "logprob_token_ids",
        "thinking_token_budget", "watermarking", "repetition_detection", "echo",
        "add_generation_prompt", "continue_final_message", "add_special_tokens", "documents",
        "chat_template", "chat_template_kwargs", "media_io_kwargs", "mm_processor_kwargs",
        "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
        "guided_decoding_backend", "guided_whitespace_pattern", "priority", "request_id",
        "session_id", "return_tokens_as_token_ids", "return_token_ids", "return_prompt_text",
        "cache_salt", "kv_transfer_params", "ec_transfer_params", "vllm_xargs", "stream_interval",
        "include_reasoning", "suffix", "best_of", "prompt_embeds", "service_tier", "store",
        "metadata", "modalities", "audio", "prediction", "web_search_options", "function_call",
        "functions",
    )
)  # fmt: skip


class StreamOptions(BaseModel):
    """``stream_options``; note that ``include_usage`` defaults to TRUE, as in vLLM."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class _GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_stream_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # vLLM 0.32's own checks of n and max_tokens (before the types are checked)
        n, max_tokens = data.get("n"), data.get("max_tokens")
        if isinstance(n, int) and not isinstance(n, bool) and n < 1:
            raise ParamError(f"n must be at least 1, got {n}.", None)
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens < 1:
            raise ParamError(
                f"max_tokens must be at least 1, got {max_tokens}. "
                f"(parameter=max_tokens, value={max_tokens})",
                "max_tokens",
            )
        # vLLM tests truthiness: `stream_options: {}` or `null` without `stream` passes.
        if data.get("stream_options") and not data.get("stream"):
            raise ParamError(
                "Stream options can only be defined when `stream=True`. (parameter=stream_options)",
                "stream_options",
            )
        return data

    def unknown_fields(self) -> list[str]:
        """Fields of the request that vLLM would log as ignored."""
        return sorted(set(self.model_extra or ()) - KNOWN_FIELDS)

    @property
    def wants_usage(self) -> bool:
        """Whether a streaming response ends with a usage-only chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def wants_continuous_usage(self) -> bool:
        """Whether every streamed chunk carries usage."""
        return self.wants_usage and bool(
            self.stream_options and self.stream_options.continuous_usage_stats
        )


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens``, else the deprecated ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    def prompts(self) -> list[str]:
        """One prompt: the text of every message content, joined by newlines."""
        return ["\n".join(_content_text(message.get("content")) for message in self.messages)]


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``; a list prompt is a batch (``n`` choices per prompt)."""

    prompt: str | list[str] | list[int] | list[list[int]] | None = None

    @model_validator(mode="after")
    def _check_prompt(self) -> CompletionRequest:
        if self.prompt is None or self.prompt in ("", []):
            raise ParamError(
                "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
                "prompt",
            )
        return self

    @property
    def token_limit(self) -> int | None:
        """``max_tokens``."""
        return self.max_tokens

    def prompts(self) -> list[str]:
        """The prompt texts; token-id prompts become their ids joined by spaces."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt is None:
            return []
        if all(isinstance(item, int) for item in prompt):
            return [" ".join(str(item) for item in prompt)]
        return [
            item if isinstance(item, str) else " ".join(str(token) for token in item)
            for item in prompt
            if not isinstance(item, int)
        ]


def _content_text(content: Any) -> str:
    """The text of a message's ``content``: a string or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


class LoadLoRAAdapterRequest(BaseModel):
    """``POST /v1/load_lora_adapter``."""

    model_config = ConfigDict(extra="allow")

    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    """``POST /v1/unload_lora_adapter``."""

    model_config = ConfigDict(extra="allow")

    lora_name: str
    lora_int_id: int | None = None
