"""The test environment itself: the real vLLM serves the tiny model and adapter a (loaded at
start), and the model and adapters differ as the other tests need (tests/vllm/server.py)."""

from __future__ import annotations

import httpx

from tests.vllm.server import VLLM_VERSION, VllmServer, models


def _chat(server: VllmServer, model: str, stream: bool = False) -> str:
    body = {
        "model": model, "max_tokens": 12, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": "def main():"}],
    }  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=60) as client:
        if not stream:
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return str(r.json()["choices"][0]["message"]["content"])
        text = ""
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    for choice in httpx.Response(200, content=line[6:]).json()["choices"]:
                        text += choice["delta"].get("content") or ""
        return text


def test_the_server_serves_the_base_model_and_adapter_a(vllm: VllmServer) -> None:
    listed = {m["id"]: m for m in models(vllm)}
    assert listed[vllm.model]["parent"] is None
    assert listed["a"]["parent"] == vllm.model
    assert httpx.get(vllm.url + "/health", timeout=10).status_code == 200


def test_base_and_adapter_answer_differently_and_streams_match(vllm: VllmServer) -> None:
    base, lora = _chat(vllm, vllm.model), _chat(vllm, "a")
    assert base and lora and base != lora  # the adapter changes greedy output
    assert _chat(vllm, "a", stream=True) == lora  # streamed text equals the whole answer


def test_the_suite_runs_the_version_it_documents(vllm: VllmServer) -> None:
    """docs/vllm.md names the version the suite is tested against: the server it starts is it."""
    version = httpx.get(vllm.url + "/version", timeout=10).json()["version"]
    if vllm.proc is not None:  # started by the suite (not ABGATE_TEST_VLLM_URL)
        assert version == VLLM_VERSION
    assert version.split(".")[0].isdigit()
