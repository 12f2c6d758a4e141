"""Redaction cost of the flywheel capture (router/signals/redact.py) on ordinary and hostile text.

Capture redacts every sampled prompt and completion in the gateway's background writer, which
shares the event loop with the request path: the patterns must run in time linear in the text,
whatever a client sends. This prints milliseconds per text for texts of growing size; the
ratio between sizes shows the growth (about 10x per 10x size when linear).

    python -m bench.redact [--sizes 10000,100000,1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

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


if __name__ == "__main__":
    main()
