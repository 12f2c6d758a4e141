"""`abgate flywheel export`: captured production failures become the next eval cases.

Reads an experiment's captured requests (opt-in, redacted at capture) through the admin API,
keeps those that received one of the chosen signals, drops any whose input already is in an
existing eval file (the contamination check's normalisation), and writes the rest as eval cases
in the spec's JSONL format. The file is written whole or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml
from rich.console import Console

from analysis.eval.cases import EvalInputError, case_text, normalise_text, parse_cases
from analysis.eval.types import EvalCase
from offline.files import write_atomically
from router.cli.operator import DEFAULT_URL, AdminClient, Token, Url, fail

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


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        help="The data flywheel: production failures -> eval cases", no_args_is_help=True
    )
    app.add_typer(sub, name="flywheel")
    console = Console(highlight=False, stderr=True)

    @sub.command("export")
    def export(
        name: Annotated[str, typer.Argument(help="experiment name")],
        out: Annotated[Path, typer.Option("--out", help="JSONL file to write")],
        signals: Annotated[
            str,
            typer.Option(help="comma-separated; export captures that received any of them"),
        ] = "thumbs_down,escalation,regenerated",
        against: Annotated[
            list[Path] | None,
            typer.Option(
                "--against", help="eval JSONL files or specs to deduplicate against (repeatable)"
            ),
        ] = None,
        arm: Annotated[
            str | None, typer.Option(help="only this arm (control or treatment)")
        ] = None,
        limit: Annotated[
            int, typer.Option(min=1, max=100_000, help="newest captures to read")
        ] = 10_000,
        url: Url = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        """Write NAME's captured requests that drew the given signals as eval cases."""
        wanted = [s.strip() for s in signals.split(",") if s.strip()]
        if not wanted:
            fail("--signals names no signal", code=2)
        if arm not in (None, "control", "treatment"):
            fail(f"--arm must be control or treatment, not {arm!r}", code=2)
        seen = existing_inputs(list(against or []))
        client = AdminClient(url, token)
        params: dict[str, Any] = {"signals": ",".join(wanted), "limit": limit}
        if arm:
            params["arm"] = arm
        data = client.call("GET", f"/admin/experiments/{name}/captures", params=params)
        client.close()
        lines: list[bytes] = []
        skipped = 0
        for item in data["items"]:
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
        try:
            write_atomically(out, b"".join(line + b"\n" for line in lines))
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}", code=2)
        console.print(
            f"wrote {len(lines)} cases to {out} ({skipped} duplicates or unusable skipped, "
            f"{len(data['items'])} captures matched)",
            markup=False,
        )
