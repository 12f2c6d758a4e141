"""The subset of vLLM's Prometheus metrics that dashboards and the gateway read.

Names, types, labels and histogram buckets follow vLLM's V1 engine: every series carries
``model_name`` (the first served name) and ``engine="0"``, except ``vllm:lora_requests_info``,
which carries only ``max_lora``, ``running_lora_adapters`` and ``waiting_lora_adapters`` and
exists only when LoRA is in use. As in vLLM, no series is labelled by adapter. The collectors live
in an injected `CollectorRegistry`, never the global one.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["EmulatorMetrics"]

_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_FINISHED_REASONS = ("stop", "length", "abort")


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
        self._max_loras = str(max_loras)
        self._running_adapters: Tally[str] = Tally()
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
