"""Simulated users for the demo and the end-to-end tests.

Each user has a stable id, asks a few questions on a route through the official `openai`
client (the unit id in `X-User-Id`), judges each answer as a person would (the emulator's good
answers end with "Resolved.": `serving.emulator.is_good_answer`) and reports thumbs up or down
through `POST /v1/feedback`. Nothing here knows which arm a user is on except the response
headers, exactly as an application would.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from serving.emulator import is_good_answer

if TYPE_CHECKING:
    import openai

QUESTIONS = (
    "My order {n} has not arrived, what can I do?",
    "How do I reset my password for account {n}?",
    "Can I change the delivery address of order {n}?",
    "Why was my card charged twice for invoice {n}?",
    "How do I cancel subscription {n}?",
)


@dataclass
class PopulationStats:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route, arm)
    thumbs_up: Counter[tuple[str, str]] = field(default_factory=Counter)
    fallbacks: int = 0
    errors: list[str] = field(default_factory=list)
    users: int = 0


class Population:
    def __init__(self, gateway_url: str, *, seed: int = 1, requests_per_user: int = 2) -> None:
        self.url = gateway_url.rstrip("/")
        self.rng = random.Random(seed)
        self.requests_per_user = requests_per_user
        self.stats = PopulationStats()
        self._next = 0

    async def run(self, routes: list[str], users: int, concurrency: int = 8) -> PopulationStats:
        """`users` new users, each on every route in `routes`."""
        import openai  # the dev extra: only the demo's simulated users need it

        start, self._next = self._next, self._next + users
        sem = asyncio.Semaphore(concurrency)
        async with (
            openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="sim", max_retries=0,
                               timeout=30) as client,
            httpx.AsyncClient(base_url=self.url, timeout=30) as http,
        ):  # fmt: skip

            async def one(i: int) -> None:
                async with sem:
                    for route in routes:
                        await self._user(client, http, route, f"sim-{i:06d}")
                    self.stats.users += 1

            await asyncio.gather(*(one(i) for i in range(start, start + users)))
        return self.stats

    async def _user(
        self, client: openai.AsyncOpenAI, http: httpx.AsyncClient, route: str, user: str
    ) -> None:
        from openai import APIError

        for _ in range(self.requests_per_user):
            question = self.rng.choice(QUESTIONS).format(n=self.rng.randrange(10**9))
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=route,
                    messages=[{"role": "user", "content": question}],
                    extra_headers={"X-User-Id": user},
                )
                answer = raw.parse().choices[0].message.content or ""
            except APIError as exc:
                self.stats.errors.append(f"{route}: {exc.__class__.__name__}: {exc}")
                continue
            arm = raw.headers.get("x-abgate-arm", "")
            self.stats.requests[(route, arm)] += 1
            if raw.headers.get("x-abgate-fallback"):
                self.stats.fallbacks += 1
            good = is_good_answer(answer)
            self.stats.thumbs_up[(route, arm)] += good
            try:
                resp = await http.post(
                    "/v1/feedback",
                    json={"request_id": raw.headers["x-request-id"],
                          "signal": "thumbs_up" if good else "thumbs_down"},
                )  # fmt: skip
            except httpx.HTTPError as exc:  # a person's vote lost in transit, not a crash
                self.stats.errors.append(f"feedback: {exc.__class__.__name__}: {exc}")
                continue
            if resp.status_code not in (200, 202):
                self.stats.errors.append(f"feedback {resp.status_code}: {resp.text[:200]}")
