"""Redaction cost of the flywheel capture (router/signals/redact.py) on ordinary and hostile text.

Capture redacts every sampled prompt and completion in the gateway's background writer, which
shares the event loop with the request path: the patterns must run in time linear in the text,
whatever a client sends. This prints milliseconds per text for texts of growing size; the
ratio between sizes shows the growth (about 10x per 10x size when linear).

    python -m bench.redact [--sizes 10000,100000,1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from router.signals.redact import Redactor

SHAPES = {
    "prose with PII": "call me at 555-123-4567 or mail ana.b@example.com about order 1234. ",
    "prose with cards": "card 4111 1111 1111 1111. or 4111.1111.1111.1111, josé@exemple.fr ",
    "hex run": "a1b2c3d4",
    "digit run": "1",
    "digits and spaces": "1 ",
    "digit groups": "1111 ",
    "double-spaced": "1111  ",
    "dotted groups": "1234.",
    "dashed groups": "1234-",
    "full-width groups": "\uff11\uff11\uff11\uff11 ",
    "decimals": "3.14159 ",
    "at signs": "a@",
    "at run": "@",
    "dotted": "a.",
    "at and dots": "a.@.",
    "unicode local": "é@",
    "unicode domain": "ü.",
    "phone-like": "(555) 123-",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    redact = Redactor.from_config(["emails", "phone_numbers", "credit_cards"])
    print(f"redaction, best of {args.repeat} (ms per text)")
    print(f"{'input':20s}" + "".join(f"{n:>12,d} B" for n in sizes) + "   growth (last/first)")
    for name, unit in SHAPES.items():
        times = []
        for size in sizes:
            text = (unit * (size // len(unit) + 1))[:size]
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                redact(text)
                best = min(best, time.perf_counter() - t0)
            times.append(best * 1000)
        growth = times[-1] / times[0] if times[0] else float("nan")
        cells = "".join(f"{t:14.2f}" for t in times)
        print(f"{name:20s}{cells}   {growth:6.0f}x for {sizes[-1] // sizes[0]}x size")
    _loop_stall(redact)


def _loop_stall(redact: Callable[[str], str]) -> None:
    """The event loop's longest wait while the largest capturable exchange (512 KiB) of the
    slowest shape is redacted: on the loop itself, and in a worker thread as the capture writer
    does (router/signals/capture.py)."""
    text = ("\uff11\uff11\uff11\uff11 " * (512 * 1024 // 15 + 1))[: 512 * 1024 // 3]

    async def run(in_thread: bool) -> tuple[float, float]:
        done = asyncio.Event()
        worst = 0.0

        async def probe() -> None:
            nonlocal worst
            while not done.is_set():
                t0 = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - t0)

        task = asyncio.create_task(probe())
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        if in_thread:
            await asyncio.to_thread(redact, text)
        else:
            redact(text)
        took = time.perf_counter() - t0
        done.set()
        await task
        return took * 1000, worst * 1000

    print("\nevent loop stall while a 512 KiB full-width digit-group exchange is redacted (ms)")
    for label, in_thread in (("on the loop", False), ("worker thread", True)):
        took, worst = min(asyncio.run(run(in_thread)) for _ in range(3))
        print(f"{label:20s}  redaction {took:8.1f}   longest loop stall {worst:8.1f}")


if __name__ == "__main__":
    main()
