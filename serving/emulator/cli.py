"""``abgate emulate``: run the vLLM emulator as a server process.

`add_arguments` declares the flags on a parser (the ``abgate`` CLI or ``python -m
serving.emulator``) and `run` starts uvicorn. Flags that mirror ``vllm serve``: ``--host``,
``--port``, ``--served-model-name``, ``--api-key``, ``--max-model-len``, ``--max-loras``;
``--base-model`` is vLLM's ``--model`` and ``--lora NAME=PATH`` its ``--lora-modules``.
``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` is read from the environment (`settings.EmulatorSettings`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import logging
import math
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import uvicorn

from serving.emulator.answers import AnswerKey, load_answer_key
from serving.emulator.app import create_app
from serving.emulator.config import EmulatorConfig, ModelProfile, parse_profile
from serving.emulator.lora import adapter_exists
from serving.emulator.settings import EmulatorSettings

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def _number(low: float, high: float | None, kind: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{raw!r} is not {kind}")
        return value

    return parse


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number (0-65535)")
    return port


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive integer")
    return value


def _lora(raw: str) -> tuple[str, str]:
    name, sep, path = raw.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{raw!r} is not NAME=PATH")
    if not adapter_exists(path):
        raise argparse.ArgumentTypeError(
            f"Loading lora {name} failed: No adapter found for {path} "
            "(a directory with adapter_config.json)"
        )
    return name, path


def _profile(raw: str) -> tuple[str, ModelProfile]:
    try:
        return parse_profile(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _answer_key(raw: str) -> AnswerKey:
    topic, sep, path = raw.partition("=")
    if not sep or not topic.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected TOPIC=FILE, got {raw!r}")
    try:
        return load_answer_key(topic.strip(), Path(path.strip()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the emulator's flags on ``parser``."""
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    server.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    server.add_argument("--api-key", default=None, help="require this bearer key on /v1 paths")
    server.add_argument(
        "--error-format",
        choices=("flat", "nested"),
        default="nested",
        help="error bodies of vLLM < 0.10.1 (flat) or >= 0.10.1 (nested, default)",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--base-model", required=True, help="the base model (vLLM's --model)")
    models.add_argument(
        "--served-model-name",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="names of the base model (default: --base-model); the first names responses",
    )
    models.add_argument(
        "--lora",
        nargs="+",
        action="extend",
        type=_lora,
        default=[],
        metavar="NAME=PATH",
        help="static LoRA adapters; PATH must be a directory holding adapter_config.json",
    )
    models.add_argument("--max-model-len", type=_positive_int, default=8192)
    models.add_argument("--max-loras", type=_positive_int, default=1)
    models.add_argument(
        "--max-lora-rank",
        type=_positive_int,
        default=16,
        help="adapters of a higher rank fail to load (500, as in vLLM 0.32)",
    )
    models.add_argument(
        "--lora-load-latency-ms",
        type=_number(0, None, "a non-negative number"),
        default=0.0,
        help="time a runtime adapter load takes",
    )
    models.add_argument(
        "--answer-key",
        action="append",
        type=_answer_key,
        default=[],
        metavar="TOPIC=FILE",
        help="JSONL of prompts and right answers (or eval cases with a reference); a profile's "
        "quality.TOPIC sets how often a model answers them right",
    )
    behaviour = parser.add_argument_group("behaviour (default profile of every model)")
    non_negative = _number(0, None, "a non-negative number")
    probability = _number(0, 1, "a probability in [0, 1]")
    behaviour.add_argument("--latency-ms", type=non_negative, default=0.0)
    behaviour.add_argument("--ttft-ms", type=non_negative, default=0.0)
    behaviour.add_argument(
        "--tokens-per-second", type=non_negative, default=0.0, help="0 means instant"
    )
    behaviour.add_argument("--error-rate", type=probability, default=0.0)
    behaviour.add_argument("--quality", type=probability, default=0.8)
    behaviour.add_argument(
        "--profile",
        action="append",
        type=_profile,
        default=[],
        metavar="NAME:key=value,...",
        help="per-model profile, e.g. support-lora-v2:latency_ms=20,error_rate=0.01,quality=0.9",
    )
    behaviour.add_argument(
        "--seed", type=int, default=0, help="seeds texts, quality, failures (default 0)"
    )


def build_config(args: argparse.Namespace, settings: EmulatorSettings) -> EmulatorConfig:
    """The `EmulatorConfig` described by parsed flags and the environment.

    Raises:
        ValueError: inconsistent flags (a name given twice).
    """
    loras: list[tuple[str, str]] = args.lora
    profiles: list[tuple[str, ModelProfile]] = args.profile
    for flag, names in (("--lora", [n for n, _ in loras]), ("--profile", [n for n, _ in profiles])):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"{flag}: {', '.join(duplicates)} given more than once")
    error_format: Literal["flat", "nested"] = args.error_format
    return EmulatorConfig(
        base_model=args.base_model,
        served_model_names=list(args.served_model_name),
        static_loras=dict(loras),
        allow_runtime_lora_updating=settings.allow_runtime_lora_updating,
        error_format=error_format,
        api_key=args.api_key,
        default_profile=ModelProfile(
            latency_ms=args.latency_ms,
            ttft_ms=args.ttft_ms,
            tokens_per_second=args.tokens_per_second,
            error_rate=args.error_rate,
            quality=args.quality,
        ),
        profiles=dict(profiles),
        max_model_len=args.max_model_len,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        lora_load_latency_ms=args.lora_load_latency_ms,
        seed=args.seed,
        answers=functools.reduce(AnswerKey.merged, args.answer_key, AnswerKey({})).entries,
    )


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server that prints one line once it listens: where to send requests (with the
    real port when ``--port 0`` let the system choose), so a person or a script starting the
    emulator knows when and where it is ready."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started or not self.servers or not self.servers[0].sockets:
            return
        port = self.servers[0].sockets[0].getsockname()[1]
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        print(f"emulator listening on http://{shown}:{port}/v1", flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve the emulator until interrupted; returns the process exit code."""
    try:
        config = build_config(args, EmulatorSettings())
        app = create_app(config)
    except ValueError as exc:
        logger.error("cannot start the emulator: %s", exc)
        return 2
    loop: Literal["uvloop", "auto"] = "uvloop" if importlib.util.find_spec("uvloop") else "auto"
    http: Literal["httptools", "auto"] = "auto"
    if importlib.util.find_spec("httptools"):
        http = "httptools"
    server = _AnnouncingServer(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            loop=loop,
            http=http,
            log_level="warning",
            access_log=False,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 1
