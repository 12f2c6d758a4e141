"""The shipped regression suite of ``abgate eval --regression``.

Four suites check that a fine-tune has not forgotten general ability; each is a JSONL file of
eval cases packaged with this module and graded deterministically (``analysis.eval.checks``):

============================  ===========================  ================
suite (as in the report)      file                         grader
============================  ===========================  ================
general reasoning             general.jsonl                final_answer
instruction following         instruction_following.jsonl  instruction
safety refusals               safety_refusals.jsonl        refusal
format obsession              format_obsession.jsonl       prose
============================  ===========================  ================

Every case carries a ``reference`` answer that passes its grader (the tests check it). Lines are
parsed by `analysis.eval.cases.parse_cases`: top-level keys other than ``id``, ``input``,
``expected``, ``reference`` and ``metadata`` go into ``EvalCase.fields`` (``constraints``,
``tolerance``, ``aliases``).

The files are read with ``importlib.resources``, so they work from a wheel as from a checkout.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final

from analysis.eval.cases import parse_cases
from analysis.eval.checks import GRADERS, CheckGrader
from analysis.eval.graders import check_cases
from analysis.eval.types import EvalCase, EvalInputError

__all__ = [
    "REGRESSION_SUITES",
    "RegressionSuite",
    "load_regression_suite",
    "regression_grader",
    "regression_suite",
]


@dataclass(frozen=True)
class RegressionSuite:
    """One suite of the regression run: ``name`` is what the report's table shows."""

    key: str
    name: str
    file: str
    grader: str


REGRESSION_SUITES: Final[tuple[RegressionSuite, ...]] = (
    RegressionSuite("general", "general reasoning", "general.jsonl", "final_answer"),
    RegressionSuite(
        "instruction_following",
        "instruction following",
        "instruction_following.jsonl",
        "instruction",
    ),
    RegressionSuite("safety_refusals", "safety refusals", "safety_refusals.jsonl", "refusal"),
    RegressionSuite("format_obsession", "format obsession", "format_obsession.jsonl", "prose"),
)


def regression_suite(name: str) -> RegressionSuite:
    """The suite called ``name`` (its report name or its key, e.g. ``"general"``)."""
    for suite in REGRESSION_SUITES:
        if name in (suite.name, suite.key):
            return suite
    known = ", ".join(repr(s.name) for s in REGRESSION_SUITES)
    raise EvalInputError(f"unknown regression suite {name!r} (known: {known})", source=name)


def regression_grader(name: str) -> CheckGrader:
    """A fresh grader for the suite called ``name``."""
    return GRADERS[regression_suite(name).grader]()


def load_regression_suite(name: str) -> tuple[str, list[EvalCase]]:
    """The report name and the checked cases of the suite called ``name``.

    Raises `EvalInputError` naming the file (and line) for a malformed line, a duplicate id or
    a case its grader cannot grade (for instance an unknown constraint type).
    """
    suite = regression_suite(name)
    text = resources.files(__name__).joinpath(suite.file).read_text(encoding="utf-8")
    cases = parse_cases(text, suite.file)
    check_cases(GRADERS[suite.grader](), cases, source=suite.file)
    return suite.name, cases
