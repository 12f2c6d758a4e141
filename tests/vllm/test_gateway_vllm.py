"""The gateway in front of the real vLLM: the official `openai` client, both arms (the base model
and adapter `a`), streamed and not, usage and cost recorded per arm equal to what vLLM itself
reported, vLLM's own errors passed on, and the fallback to control when the treatment's adapter
is not served (docs/vllm.md, docs/metrics.md, docs/controller.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from router.dataplane.assignment import bucket
from tests.procs import Proc, gateway, metric_sum, wait_for
from tests.vllm.server import VllmServer

MSG = [{"role": "user", "content": "def main():"}]
PARAMS: dict[str, Any] = {"temperature": 0, "max_tokens": 12}
PRICES = {"control": (100.0, 300.0), "treatment": (200.0, 700.0)}  # USD per million tokens


def _target(vllm: VllmServer, model: str, arm: str) -> dict[str, Any]:
    prompt, completion = PRICES[arm]
    return {
        "base_url": vllm.url + "/v1", "model": model,
        "prompt_price_per_million": prompt, "completion_price_per_million": completion,
    }  # fmt: skip


def _config(vllm: VllmServer, name: str, treatment: str, **extra: Any) -> dict[str, Any]:
    return {
        "experiments": [{
            "name": name, "route": name + "-route",
            "control": _target(vllm, vllm.model, "control"),
            "treatment": _target(vllm, treatment, "treatment"),
            "treatment_percent": 50, **extra,
        }],
    }  # fmt: skip


def _user(experiment: str, arm: str) -> str:
    """A unit id that the experiment's hash (salt: its name) puts in `arm` at 50 %."""
    for i in range(1000):
        uid = f"gb-user-{i}"
        if (bucket(experiment.encode(), uid.encode()) < 5000) == (arm == "treatment"):
            return uid
    raise AssertionError("no unit found")


def _client(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=60)


def _direct(vllm: VllmServer, model: str) -> dict[str, Any]:
    """vLLM's own answer and usage for the body the gateway forwards (model rewritten)."""
    body = {"model": model, "messages": MSG, **PARAMS}
    r = httpx.post(vllm.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _checked(gw: Proc) -> bool:
    """The gateway's health check has read the replica's model list (no longer pending)."""
    replicas = httpx.get(gw.url + "/readyz", timeout=5).json().get("replicas", {})
    return bool(replicas) and all(r["check"] != "pending" for r in replicas.values())


def _events(rds: redis.Redis, experiment: str, n: int) -> list[dict[str, str]]:
    key = f"abgate:{{{experiment}}}:events"
    found = wait_for(f"{n} events", lambda: rds.xlen(key) >= n and rds.xrange(key))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in found]


@pytest.fixture
def rds(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_both_arms_streamed_and_not_record_vllms_usage(
    vllm: VllmServer, redis_url: str, rds: redis.Redis, tmp_path: Path
) -> None:
    """A user of each arm at 50 %: vLLM's answers (the base model's and adapter a's differ at
    temperature 0) and vLLM's usage reach the client; each request's event, the arms' totals
    in Redis and the gateway's token and cost series hold exactly vLLM's usage, the stream
    whose client asked no usage included (the gateway asks for it and strips the chunk)."""
    name = "gbab"
    direct = {"control": _direct(vllm, vllm.model), "treatment": _direct(vllm, "a")}
    texts = {arm: d["choices"][0]["message"]["content"] for arm, d in direct.items()}
    assert texts["control"] and texts["treatment"] and texts["control"] != texts["treatment"]
    ids: dict[str, list[str]] = {"control": [], "treatment": []}
    with gateway(tmp_path, _config(vllm, name, "a"), redis_url) as gw, _client(gw) as client:
        for arm in ("control", "treatment"):
            headers = {"X-User-Id": _user(name, arm)}
            raw = client.chat.completions.with_raw_response.create(
                model=name + "-route", messages=MSG, extra_headers=headers, **PARAMS,
            )  # fmt: skip
            completion = raw.parse()
            assert raw.headers["x-abgate-arm"] == arm
            ids[arm].append(raw.headers["x-request-id"])
            # vLLM's answer, under vLLM's name for the arm's model, with vLLM's usage
            assert completion.model == direct[arm]["model"] == (vllm.model, "a")[arm != "control"]
            assert completion.choices[0].message.content == texts[arm]
            assert completion.usage is not None
            assert completion.usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == {
                k: direct[arm]["usage"][k] for k in ("prompt_tokens", "completion_tokens")
            }
            for include_usage in (True, False):
                extra = {"stream_options": {"include_usage": True}} if include_usage else {}
                with client.chat.completions.with_streaming_response.create(
                    model=name + "-route", messages=MSG, stream=True, extra_headers=headers,
                    **PARAMS, **extra,
                ) as resp:  # fmt: skip
                    assert resp.headers["x-abgate-arm"] == arm
                    ids[arm].append(resp.headers["x-request-id"])
                    chunks = list(resp.parse())
                content = [c for c in chunks if c.choices]
                assert "".join(c.choices[0].delta.content or "" for c in content) == texts[arm]
                assert all(c.model == direct[arm]["model"] for c in chunks)
                if include_usage:  # vLLM's usage chunk, passed on as it came
                    usage = chunks[-1].usage
                    assert chunks[-1].choices == [] and usage is not None
                    assert (usage.prompt_tokens, usage.completion_tokens) == (
                        direct[arm]["usage"]["prompt_tokens"],
                        direct[arm]["usage"]["completion_tokens"],
                    )
                else:  # the gateway asked for usage itself and removed vLLM's usage chunk
                    assert chunks == content and all(c.usage is None for c in chunks)
        events = _events(rds, name, 6)
        metrics = httpx.get(gw.url + "/metrics", timeout=5).text
    # three requests per arm, each recorded with vLLM's usage (also the stream without usage)
    assert sorted(e["request_id"] for e in events) == sorted(ids["control"] + ids["treatment"])
    for arm, d in direct.items():
        prompt, completion = d["usage"]["prompt_tokens"], d["usage"]["completion_tokens"]
        mine = [e for e in events if e["arm"] == arm]
        assert len(mine) == 3 and all(e["error"] == "" and e["status"] == "200" for e in mine)
        assert [(int(e["prompt_tokens"]), int(e["completion_tokens"])) for e in mine] == [
            (prompt, completion)
        ] * 3
        cost = 3 * (prompt * PRICES[arm][0] + completion * PRICES[arm][1]) / 1e6
        agg = {
            k.decode(): v.decode() for k, v in rds.hgetall(f"abgate:{{{name}}}:arm:{arm}").items()
        }
        assert (int(agg["requests"]), int(agg["status_2xx"])) == (3, 3)
        assert int(agg["prompt_tokens"]) == 3 * prompt
        assert int(agg["completion_tokens"]) == 3 * completion
        assert float(agg["cost_usd"]) == pytest.approx(cost)
        labels = {"experiment": name, "arm": arm}
        assert metric_sum(metrics, "abgate_tokens_total", kind="prompt", **labels) == 3 * prompt
        assert metric_sum(metrics, "abgate_tokens_total", kind="completion", **labels) == (
            3 * completion
        )
        assert metric_sum(metrics, "abgate_cost_usd_total", **labels) == pytest.approx(cost)
        assert metric_sum(metrics, "abgate_requests_total", status_class="2xx", **labels) == 3


def test_vllms_errors_reach_the_client_as_vllm_wrote_them(
    vllm: VllmServer, redis_url: str, tmp_path: Path
) -> None:
    """A model that is no route alias goes to the default upstream unchanged: vLLM's 404 and
    its 400 for `stream_options` without a stream reach the official client as vLLM wrote
    them; an unknown alias without a default upstream is the gateway's own 404."""
    config = {**_config(vllm, "gberr", "a"), "default_upstream": {"base_url": vllm.url + "/v1"}}
    with gateway(tmp_path, config, redis_url) as gw, _client(gw) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="gb-unknown", messages=MSG, **PARAMS)
        assert "The model `gb-unknown` does not exist." in missing.value.message
        assert isinstance(missing.value.body, dict) and missing.value.body["param"] == "model"
        with pytest.raises(openai.BadRequestError) as options:
            client.chat.completions.create(
                model="gberr-route", messages=MSG, stream_options={"include_usage": True},
                extra_headers={"X-User-Id": _user("gberr", "treatment")}, **PARAMS,
            )  # fmt: skip
        assert "Stream options can only be defined when `stream=True`." in options.value.message
        # control's model stays reachable by name; the treatment's is refused by the gateway
        # (ABGATE_DIRECT_ARM_MODELS, docs/assignment.md), vLLM would have served it
        direct = client.chat.completions.create(model=vllm.model, messages=MSG, **PARAMS)
        assert direct.model == vllm.model
        with pytest.raises(openai.NotFoundError) as arm_model:
            client.chat.completions.create(model="a", messages=MSG, **PARAMS)
        assert arm_model.value.code == "model_not_found"
    with gateway(tmp_path, _config(vllm, "gberr", "a"), redis_url) as gw, _client(gw) as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(model="gb-unknown", messages=MSG, **PARAMS)
        assert unknown.value.code == "model_not_found"


@pytest.mark.parametrize("fallback", [True, False])
def test_a_treatment_adapter_vllm_does_not_serve(
    vllm: VllmServer, redis_url: str, rds: redis.Redis, tmp_path: Path, fallback: bool
) -> None:
    """Treatment `gb-missing`, which vLLM does not serve: once the health check has read vLLM's
    model list, no replica lists it; with `fallback_to_control` control answers (streamed and
    not) and the request counts as a treatment error `fallback_no_replica_for_model`; without,
    the client gets 502 and the error `no_replica_for_model`. Control's users are untouched."""
    name = "gbfb" if fallback else "gbnofb"
    config = _config(vllm, name, "gb-missing", fallback_to_control=fallback)
    control_text = _direct(vllm, vllm.model)["choices"][0]["message"]["content"]
    with gateway(tmp_path, config, redis_url) as gw, _client(gw) as client:
        wait_for("the first health check", lambda: _checked(gw))
        user = {"X-User-Id": _user(name, "treatment")}
        create = client.chat.completions.with_raw_response.create
        if fallback:
            raw = create(model=name + "-route", messages=MSG, extra_headers=user, **PARAMS)
            assert raw.headers["x-abgate-arm"] == "treatment"
            assert raw.headers["x-abgate-fallback"] == "control"
            completion = raw.parse()
            assert completion.model == vllm.model
            assert completion.choices[0].message.content == control_text
            with client.chat.completions.with_streaming_response.create(
                model=name + "-route", messages=MSG, stream=True, extra_headers=user, **PARAMS,
            ) as resp:  # fmt: skip
                assert resp.headers["x-abgate-fallback"] == "control"
                text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
            assert text == control_text
        else:
            for stream in (False, True):
                with pytest.raises(openai.InternalServerError) as failed:
                    create(
                        model=name + "-route",
                        messages=MSG,
                        stream=stream,
                        extra_headers=user,
                        **PARAMS,
                    )
                assert failed.value.status_code == 502
                assert "no_replica_for_model" in failed.value.message
        ok = create(
            model=name + "-route",
            messages=MSG,
            extra_headers={"X-User-Id": _user(name, "control")},
            **PARAMS,
        )
        assert ok.headers["x-abgate-arm"] == "control" and "x-abgate-fallback" not in ok.headers
        events = _events(rds, name, 3)
        metrics = httpx.get(gw.url + "/metrics", timeout=5).text
    treated = [e for e in events if e["arm"] == "treatment"]
    reason = "fallback_no_replica_for_model" if fallback else "no_replica_for_model"
    assert [e["error"] for e in treated] == [reason, reason]
    assert [e["status"] for e in treated] == (["200", "200"] if fallback else ["502", "502"])
    agg = {
        k.decode(): v.decode() for k, v in rds.hgetall(f"abgate:{{{name}}}:arm:treatment").items()
    }
    assert (int(agg["requests"]), int(agg["errors"])) == (2, 2)
    assert (
        metric_sum(
            metrics, "abgate_upstream_errors_total", experiment=name, arm="treatment", reason=reason
        )
        == 2
    )
    control = [e for e in events if e["arm"] == "control"]
    assert [e["error"] for e in control] == [""]
    if fallback:  # control served: vLLM's usage for control's answer, at control's prices
        usage = _direct(vllm, vllm.model)["usage"]
        tokens = (usage["prompt_tokens"], usage["completion_tokens"])
        assert [(int(e["prompt_tokens"]), int(e["completion_tokens"])) for e in treated] == [
            tokens
        ] * 2
        cost = (tokens[0] * PRICES["control"][0] + tokens[1] * PRICES["control"][1]) / 1e6
        assert [float(e["cost_usd"]) for e in treated] == [pytest.approx(cost)] * 2


def _lora(vllm: VllmServer, action: str, name: str) -> None:
    body = {
        "lora_name": name,
        **({"lora_path": str(vllm.adapter("a"))} if action == "load" else {}),
    }
    r = httpx.post(f"{vllm.url}/v1/{action}_lora_adapter", json=body, timeout=60)
    assert r.status_code == 200, r.text


def test_an_adapter_vllm_lost_since_the_last_health_check_falls_back_to_control(
    vllm: VllmServer, redis_url: str, rds: redis.Redis, tmp_path: Path
) -> None:
    """vLLM forgets an adapter (a restart, an unload) and the gateway's model list still has
    it until the next health check: vLLM answers the treatment's request 404 "does not exist";
    with `fallback_to_control` control answers it (`fallback_status_404`), as for a 5xx."""
    name, adapter = "gbstale", "gb-stale"
    _lora(vllm, "load", adapter)
    try:
        config = _config(vllm, name, adapter)
        # one health check at start, none after it during the test
        with gateway(tmp_path, config, redis_url, health_interval_seconds="3600") as gw:
            wait_for("the first health check", lambda: _checked(gw))
            user = {"X-User-Id": _user(name, "treatment")}
            with _client(gw) as client:
                create = client.chat.completions.with_raw_response.create
                served = create(model=name + "-route", messages=MSG, extra_headers=user, **PARAMS)
                assert served.parse().model == adapter and "x-abgate-fallback" not in served.headers
                _lora(vllm, "unload", adapter)
                raw = create(model=name + "-route", messages=MSG, extra_headers=user, **PARAMS)
            assert raw.headers["x-abgate-fallback"] == "control"
            assert raw.parse().model == vllm.model
            events = _events(rds, name, 2)
        assert [(e["arm"], e["error"], e["status"]) for e in events] == [
            ("treatment", "", "200"),
            ("treatment", "fallback_status_404", "200"),
        ]
    finally:
        httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": adapter}, timeout=60)
