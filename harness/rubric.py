"""Rubrics: what "good" means for a task, criterion by criterion.

A rubric file (YAML) lists criteria, each with a `type`, its parameters, a `weight` and optionally
`required: true`, and sets a `pass_threshold` on the weighted score. A sample passes when its
weighted score reaches the threshold and no required criterion failed.

Each criterion type is one small pure function `(output, example, params) -> (score, reason)` with
a score in [0, 1]. Adding a type means writing one function and one params model.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from harness.config import read_yaml_mapping, validate
from harness.data import Example
from harness.errors import UserError

# ---------------------------------------------------------------------------------------------
# Criterion parameters (one model per type)


class _Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    weight: float = Field(1.0, ge=0)
    required: bool = False


class Exact(_Criterion):
    type: Literal["exact"]
    normalise: bool = False  # case, whitespace, punctuation and unicode form


class ValidJson(_Criterion):
    type: Literal["valid_json"]
    fenced: bool = False  # also accept JSON inside a ```json fenced block


class JsonKeys(_Criterion):
    type: Literal["json_keys"]
    keys: list[str] = Field(min_length=1)
    fenced: bool = False


class JsonField(_Criterion):
    type: Literal["json_field"]
    path: str  # dotted path into the object, e.g. "customer.tier"
    fenced: bool = False
    normalise: bool = False


class ContainsAny(_Criterion):
    type: Literal["contains_any"]
    # The accepted answers: a list here, or the name of a sample field holding a string or a list.
    values: list[str] | None = None
    field: str | None = None
    whole_word: bool = True  # "0" must not match inside "100"


Criterion = Annotated[Union[Exact, ValidJson, JsonKeys, JsonField, ContainsAny], Field(discriminator="type")]


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str = ""
    # No silent default: a rubric states what passing means.
    pass_threshold: float = Field(ge=0, le=1)
    criteria: list[Criterion] = Field(min_length=1)


# ---------------------------------------------------------------------------------------------
# Helpers


def normalise(text: str) -> str:
    """Unicode NFKC, case-folded, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def parse_json(text: str, fenced: bool) -> tuple[Any, str | None]:
    """(value, None) on success, (None, why) otherwise."""
    candidates = [text.strip()]
    if fenced:
        candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    err = "empty output"
    for c in candidates:
        if not c:
            continue
        try:
            return json.loads(c), None
        except json.JSONDecodeError as e:
            err = f"not JSON ({e.msg} at char {e.pos})"
    return None, err


def _dig(value: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


# ---------------------------------------------------------------------------------------------
# Checks: (output, example, params) -> (score, reason)


def check_exact(output: str, ex: Example, c: Exact) -> tuple[float, str]:
    ref = ex.reference or ""
    a, b = (normalise(output), normalise(ref)) if c.normalise else (output.strip(), ref.strip())
    return (1.0, "matches the reference") if a == b else (0.0, "differs from the reference")


def check_valid_json(output: str, ex: Example, c: ValidJson) -> tuple[float, str]:
    _, err = parse_json(output, c.fenced)
    return (1.0, "valid JSON") if err is None else (0.0, err)


def check_json_keys(output: str, ex: Example, c: JsonKeys) -> tuple[float, str]:
    value, err = parse_json(output, c.fenced)
    if err is not None:
        return 0.0, err
    if not isinstance(value, dict):
        return 0.0, f"JSON {type(value).__name__}, not an object"
    missing = [k for k in c.keys if k not in value]
    score = 1 - len(missing) / len(c.keys)
    return score, ("all keys present" if not missing else "missing " + ", ".join(missing))


def check_json_field(output: str, ex: Example, c: JsonField) -> tuple[float, str]:
    expected_doc, err = parse_json(ex.reference or "", False)
    if err is not None:
        raise ValueError(f"criterion '{c.name}': the reference answer of sample {ex.id} is not JSON")
    found, expected = _dig(expected_doc, c.path)
    if not found:
        raise ValueError(f"criterion '{c.name}': the reference answer of sample {ex.id} has no field '{c.path}'")
    value, err = parse_json(output, c.fenced)
    if err is not None:
        return 0.0, err
    found, got = _dig(value, c.path)
    if not found:
        return 0.0, f"no field '{c.path}'"
    same = normalise(str(got)) == normalise(str(expected)) if c.normalise else got == expected
    return (1.0, f"{c.path} = {json.dumps(got)}") if same else (0.0, f"{c.path} = {json.dumps(got)}, expected {json.dumps(expected)}")


def check_contains_any(output: str, ex: Example, c: ContainsAny) -> tuple[float, str]:
    if c.values is not None:
        accepted = c.values
    elif c.field is not None:
        v = ex.fields.get(c.field)
        accepted = [v] if isinstance(v, str) else list(v or [])
    else:
        accepted = [ex.reference] if ex.reference else []
    if not accepted:
        raise ValueError(f"criterion '{c.name}': sample {ex.id} has no accepted answers")
    text = normalise(output)
    for a in accepted:
        na = normalise(str(a))
        hit = re.search(rf"(?<!\w){re.escape(na)}(?!\w)", text) if c.whole_word else na in text
        if na and hit:
            return 1.0, f"contains {a!r}"
    return 0.0, "contains none of " + ", ".join(repr(a) for a in accepted[:5])


CHECKS: dict[type, Callable[[str, Example, Any], tuple[float, str]]] = {
    Exact: check_exact,
    ValidJson: check_valid_json,
    JsonKeys: check_json_keys,
    JsonField: check_json_field,
    ContainsAny: check_contains_any,
}


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class CriterionResult:
    criterion: str
    score: float
    weight: float
    required: bool
    reason: str


@dataclass(frozen=True)
class SampleScore:
    sample_id: str
    score: float  # weighted mean of the criteria's scores
    passed: bool
    criteria: list[CriterionResult]


def score_sample(rubric: Rubric, output: str, ex: Example) -> SampleScore:
    results = []
    for c in rubric.criteria:
        score, reason = CHECKS[type(c)](output, ex, c)
        results.append(CriterionResult(c.name, float(score), c.weight, c.required, reason))
    total_weight = sum(r.weight for r in results)
    score = sum(r.score * r.weight for r in results) / total_weight if total_weight else 0.0
    required_ok = all(r.score >= 1.0 for r in results if r.required)
    # A small tolerance: a weighted mean of exact 1.0s can come out as 0.9999999.
    return SampleScore(ex.id, score, required_ok and score >= rubric.pass_threshold - 1e-9, results)


def load_rubric(path: Path) -> Rubric:
    raw = read_yaml_mapping(path, "rubric file", "rubric fields (name, pass_threshold, criteria)")
    rubric = validate(Rubric, raw, path)
    names = [c.name for c in rubric.criteria]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: field 'criteria': criterion names must be unique")
    return rubric


def check_rubric_fits(rubric: Rubric, rubric_path: Path, examples: list[Example], data_path: Path) -> None:
    """Fail before any training when a rubric needs something the eval data lacks."""
    for ex in examples:
        for c in rubric.criteria:
            if isinstance(c, (JsonField, Exact)) and ex.reference is None:
                raise UserError(f"{data_path}: sample {ex.id} has no reference answer ('completion'), "
                                f"which criterion '{c.name}' of {rubric_path} compares against")
            if isinstance(c, JsonField):
                try:
                    check_json_field(ex.reference or "", ex, c)
                except ValueError as e:
                    raise UserError(f"{data_path}: {e} (rubric {rubric_path})") from None
            if isinstance(c, ContainsAny) and c.field and c.field not in ex.fields:
                raise UserError(f"{data_path}: sample {ex.id} has no field '{c.field}', which criterion "
                                f"'{c.name}' of {rubric_path} reads")
