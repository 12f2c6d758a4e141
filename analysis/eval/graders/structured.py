"""The ``json_schema`` grader: the output is JSON valid against a schema.

The output may be wrapped in a Markdown code fence (```` ```json ... ``` ```` or a bare
```` ``` ````): the first fenced block is used; otherwise the whole output, stripped, must be
JSON. The schema is the config's ``schema`` or the case's ``fields["schema"]`` (which wins),
checked with the validator its ``$schema`` names (Draft 2020-12 when none). With ``fields``
(a list of keys), the output object must also equal the case's ``expected`` object on
exactly those keys (other keys are not compared).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from pydantic import Field

from analysis.eval.graders.base import GraderConfig, shorten, validate_config
from analysis.eval.types import EvalCase, EvalInputError, Grade, GraderKind

__all__ = ["JsonSchemaGrader", "extract_json_text"]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_json_text(output: str) -> str:
    """The first fenced code block's content, or the whole output, stripped."""
    m = _FENCE.search(output)
    return (m.group(1) if m else output).strip()


def _validator(schema: Any, where: str) -> Validator:
    if not isinstance(schema, dict):
        raise EvalInputError(f"{where}: the schema must be a JSON object", source="json_schema")
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise EvalInputError(
            f"{where}: invalid JSON schema ({exc.message})", source="json_schema"
        ) from exc
    return cls(schema)


class JsonSchemaConfig(GraderConfig):
    type: Literal["json_schema"] = "json_schema"
    # "schema" would shadow a BaseModel attribute: the field is schema_, spelt "schema".
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    fields: list[str] | None = None


class JsonSchemaGrader:
    kind: GraderKind = "pass_fail"

    def __init__(self, raw: dict[str, Any]) -> None:
        self._config = validate_config("json_schema", JsonSchemaConfig, raw)
        self._default = (
            _validator(self._config.schema_, "json_schema grader: key 'schema'")
            if self._config.schema_ is not None
            else None
        )
        self._by_case: dict[str, Validator] = {}

    @property
    def config(self) -> dict[str, Any]:
        return self._config.model_dump(mode="json", by_alias=True)

    def _schema_validator(self, case: EvalCase) -> Validator:
        schema = case.fields.get("schema")
        if schema is None:
            if self._default is None:
                raise EvalInputError(
                    f"json_schema grader: case {case.id!r}: no 'schema' in the grader config "
                    "or the case",
                    source=case.id,
                )
            return self._default
        if case.id not in self._by_case:
            self._by_case[case.id] = _validator(schema, f"json_schema grader: case {case.id!r}")
        return self._by_case[case.id]

    def _expected_fields(self, case: EvalCase) -> dict[str, Any] | None:
        keys = self._config.fields
        if keys is None:
            return None
        expected = case.expected
        if not isinstance(expected, dict) or any(k not in expected for k in keys):
            raise EvalInputError(
                f"json_schema grader: case {case.id!r}: 'expected' must be an object with "
                f"the keys {', '.join(keys)}",
                source=case.id,
            )
        return {k: expected[k] for k in keys}

    def check_case(self, case: EvalCase) -> None:
        self._schema_validator(case)
        self._expected_fields(case)

    def grade(self, case: EvalCase, output: str) -> Grade:
        validator = self._schema_validator(case)
        wanted = self._expected_fields(case)
        try:
            value = json.loads(extract_json_text(output))
        except json.JSONDecodeError as exc:
            return Grade(passed=False, score=0.0, detail=f"output is not JSON ({exc.msg})")
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return Grade(
                passed=False, score=0.0, detail=f"schema: {where}: {shorten(error.message, 60)}"
            )
        if wanted is not None:
            if not isinstance(value, dict):
                return Grade(passed=False, score=0.0, detail="output is not a JSON object")
            for key, want in wanted.items():
                if key not in value:
                    return Grade(passed=False, score=0.0, detail=f"field {key!r} missing")
                if value[key] != want:
                    got = shorten(json.dumps(value[key]), 30)
                    return Grade(
                        passed=False,
                        score=0.0,
                        detail=f"field {key!r}: expected {shorten(json.dumps(want), 30)}, "
                        f"got {got}",
                    )
        return Grade(passed=True, score=1.0, detail="valid JSON")
