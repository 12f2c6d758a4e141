"""What `abgate flywheel export` does with the captures: eval cases, deduplicated.

Captured requests (opt-in, redacted at capture) that received one of the chosen signals become
eval cases in the spec's JSONL format; any whose input already is in an existing eval file (the
contamination check's normalisation) is dropped. Imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from analysis.eval.cases import EvalInputError, case_text, normalise_text, parse_cases
from analysis.eval.types import EvalCase
from router.cli.common import fail

_ROLES = ("system", "user", "assistant")


def _eval_files(paths: list[Path]) -> list[Path]:
    """JSONL files as given; a YAML spec stands for the case files of its suites."""
    files: list[Path] = []
    for path in paths:
        if path.suffix in (".yaml", ".yml"):
            try:
                spec = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                fail(f"cannot read the spec {path}: {exc}", code=2)
            suites = spec.get("suites") if isinstance(spec, dict) else None
            if not isinstance(suites, list):
                fail(f"{path} has no `suites:` list", code=2)
            files.extend(
                path.parent / s["cases"]
                for s in suites
                if isinstance(s, dict) and isinstance(s.get("cases"), str)
            )
        else:
            files.append(path)
    return files


def _key(case: EvalCase) -> str:
    """What makes two cases the same question: the user turns, normalised, exactly as the
    contamination check compares held-out cases with training data."""
    return normalise_text(case_text(case, roles=("user",)))


def existing_inputs(paths: list[Path]) -> set[str]:
    """Normalised inputs of every case in ``paths``."""
    seen: set[str] = set()
    for path in _eval_files(paths):
        try:
            cases = parse_cases(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror}", code=2)
        except EvalInputError as exc:
            fail(str(exc), code=2)
        seen.update(_key(c) for c in cases)
    return seen


def to_case(item: dict[str, Any]) -> EvalCase | None:
    """An eval case from a captured item; the answer that drew the signal goes in metadata."""
    raw = item.get("input")
    if isinstance(raw, list):
        messages = [m for m in raw if m.get("role") in _ROLES]
        # the case asks what the last user turn asked: drop a trailing assistant turn
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if not messages:
            return None
        value: Any = messages
    elif isinstance(raw, str) and raw:
        value = raw
    else:
        return None
    return EvalCase.model_validate(
        {
            "id": f"flywheel-{item['request_id'].removeprefix('req_')[:16]}",
            "input": value,
            "metadata": {
                "source": "flywheel",
                "experiment": item.get("experiment"),
                "arm": item.get("arm"),
                "model": item.get("model"),
                "signals": item.get("signals", []),
                "request_id": item.get("request_id"),
                "captured_at": item.get("ts"),
                "response": item.get("output"),
            },
        }
    )


def export_cases(items: list[dict[str, Any]], seen: set[str]) -> tuple[bytes, int, int]:
    """The JSONL of the cases among ``items`` whose input is not in ``seen`` (which grows),
    how many there are, and how many items were skipped."""
    lines: list[bytes] = []
    skipped = 0
    for item in items:
        case = to_case(item)
        if case is None:
            skipped += 1
            continue
        key = _key(case)
        if key in seen:
            skipped += 1
            continue
        seen.add(key)
        lines.append(orjson.dumps(case.model_dump(mode="json", exclude_defaults=True)))
    return b"".join(line + b"\n" for line in lines), len(lines), skipped
