"""vLLM's Prometheus metrics that dashboards and the gateway read (listed in docs/vllm.md).

Names, types, labels and histogram buckets follow vLLM's V1 engine: every series carries
``model_name`` (the first served name) and ``engine="0"``, except ``vllm:lora_requests_info``,
which carries only ``max_lora``, ``running_lora_adapters`` and ``waiting_lora_adapters`` and
exists only when LoRA is in use. As in vLLM, no series is labelled by adapter. The collectors live
in an injected `CollectorRegistry`, never the global one.

What the emulator has no real counterpart for is modelled simply: the KV cache holds the tokens
of the requests in flight out of ``max_model_len * KV_SEQUENCES`` (16) slots; the prefix cache
hits a prompt seen before (the last 4,096 prompts are remembered), for all its tokens; nothing is
ever preempted (the counter stays 0); the phases are the profile's ``latency_ms`` (queue),
``ttft_ms`` (prefill) and the decode time that follows.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import OrderedDict
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["EmulatorMetrics", "RequestTimes"]

_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_FINISHED_REASONS = ("stop", "length", "abort")
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
_ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
_PHASE_BUCKETS = _E2E_BUCKETS
_N_BUCKETS = (1, 2, 5, 10, 20)
_PREFIX_MEMORY = 4096


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """One finished request's phases, in seconds (``decode`` from the first to the last
    token)."""

    queue: float
    prefill: float
    decode: float
    e2e: float


class EmulatorMetrics:
    """vLLM's engine metrics for one emulated server."""

    def __init__(
        self,
        registry: CollectorRegistry,
        model_name: str,
        *,
        lora_enabled: bool,
        max_loras: int,
    ) -> None:
        labels = {"model_name": model_name, "engine": "0"}
        names = list(labels)
        self.running = Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            names,
            registry=registry,
        ).labels(**labels)
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            names,
            registry=registry,
        ).labels(**labels)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", names, registry=registry
        ).labels(**labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            names,
            registry=registry,
        ).labels(**labels)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=registry,
        )
        self._success = {
            reason: success.labels(**labels, finished_reason=reason) for reason in _FINISHED_REASONS
        }
        self.e2e_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            names,
            buckets=_E2E_BUCKETS,
            registry=registry,
        ).labels(**labels)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            names,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        ).labels(**labels)
        self.kv_capacity = 0  # set by the engine: max_model_len * sequences
        self._kv_in_use = 0
        self.kv_cache = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            names,
            registry=registry,
        ).labels(**labels)
        self.prefix_queries = Counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            names,
            registry=registry,
        ).labels(**labels)
        self.prefix_hits = Counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            names,
            registry=registry,
        ).labels(**labels)
        self._seen_prefixes: OrderedDict[bytes, None] = OrderedDict()
        self.preemptions = Counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", names,
            registry=registry,
        ).labels(**labels)  # fmt: skip

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=registry)

        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", _TOKEN_BUCKETS
        ).labels(**labels)
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.",
            _TOKEN_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.params_n = histogram(
            "vllm:request_params_n", "Histogram of the n request parameter.", _N_BUCKETS
        ).labels(**labels)
        self.params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
            _TOKEN_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", _TOKEN_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            _TOKEN_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            _ITL_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.", _ITL_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.", _PHASE_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.", _PHASE_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.", _PHASE_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.", _PHASE_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self._max_loras = str(max_loras)
        self._running_adapters: Tally[str] = Tally()
        self._cache_info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            ["block_size", "cache_dtype", "enable_prefix_caching", "num_gpu_blocks",
             "gpu_memory_utilization"],
            registry=registry,
        )  # fmt: skip
        self._lora_info: Gauge | None = None
        if lora_enabled:
            self._lora_info = Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                registry=registry,
            )
            self._update_lora_info()

    def request_started(self, adapter: str | None, sequences: int) -> None:
        """``sequences`` sequences (``n`` per prompt) of one request entered the batch."""
        self.running.inc(sequences)
        if adapter is not None:
            self._running_adapters[adapter] += 1
            self._update_lora_info()

    def request_finished(self, adapter: str | None, sequences: int) -> None:
        """The sequences counted by `request_started` left the batch (done or failed)."""
        self.running.dec(sequences)
        if adapter is not None:
            self._running_adapters[adapter] -= 1
            if self._running_adapters[adapter] <= 0:
                del self._running_adapters[adapter]
            self._update_lora_info()

    def cache_config(self, block_size: int, num_gpu_blocks: int) -> None:
        """``vllm:cache_config_info``: the cache configuration as labels, value 1."""
        self._cache_info.labels(
            block_size=str(block_size), cache_dtype="auto", enable_prefix_caching="True",
            num_gpu_blocks=str(num_gpu_blocks), gpu_memory_utilization="0.9",
        ).set(1)  # fmt: skip

    def kv_reserve(self, tokens: int) -> None:
        """``tokens`` entered (positive) or left (negative) the KV cache."""
        self._kv_in_use = max(0, self._kv_in_use + tokens)
        if self.kv_capacity:
            self.kv_cache.set(min(1.0, self._kv_in_use / self.kv_capacity))

    def prefix_lookup(self, key: bytes, tokens: int) -> None:
        """A prompt's prefix-cache lookup: a hit for all its tokens when seen recently."""
        self.prefix_queries.inc(tokens)
        if key in self._seen_prefixes:
            self.prefix_hits.inc(tokens)
            self._seen_prefixes.move_to_end(key)
            return
        self._seen_prefixes[key] = None
        if len(self._seen_prefixes) > _PREFIX_MEMORY:
            self._seen_prefixes.popitem(last=False)

    def request_done(
        self, prompt_tokens: int, generated: int, n: int, max_tokens: int, times: RequestTimes
    ) -> None:
        """The per-request histograms of one finished (or aborted) request."""
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generated)
        self.params_n.observe(n)
        self.params_max_tokens.observe(max_tokens)
        self.max_generation_tokens.observe(max_tokens)
        self.iteration_tokens.observe(prompt_tokens + n)
        self.queue_time.observe(times.queue)
        self.prefill_time.observe(times.prefill)
        self.decode_time.observe(times.decode)
        self.inference_time.observe(times.prefill + times.decode)
        self.e2e_latency.observe(times.e2e)
        if generated > 1:
            per_token = times.decode / (generated - 1)
            self.tpot.observe(per_token)
            self.itl.observe(per_token)

    def finished(self, reason: str) -> None:
        """One sequence finished with ``reason`` (``stop``, ``length`` or ``abort``)."""
        self._success[reason].inc()

    def _update_lora_info(self) -> None:
        if self._lora_info is None:
            return
        # vLLM keeps one series per label combination; the newest timestamp is the current one.
        self._lora_info.labels(
            max_lora=self._max_loras,
            waiting_lora_adapters="",
            running_lora_adapters=",".join(sorted(self._running_adapters)),
        ).set_to_current_time()
