"""ShapesGenEval verdicts for `evaluate`: does an image show what a Shapes World caption asks for?

The world package (caption grammar and oracle) is optional here: without it, or for a prompt
outside the grammar, there is simply no verdict and the caller adds a warning.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Any, Callable

from PIL import Image
from pydantic import BaseModel, Field

log = logging.getLogger("lanterna.tools.verdicts")


class Verdict(BaseModel):
    passed: bool = Field(description="every requirement of the prompt holds (GenEval's rule)")
    failures: list[str] = Field(default_factory=list, description="the requirements that do not hold")
    details: dict[str, Any] = Field(default_factory=dict, description="what the oracle found")


class VerdictUnavailable(Exception):
    """No verdict for this prompt; the message says why (for a warning)."""


def find(module_names: tuple[str, ...], attr_names: tuple[str, ...]) -> Callable | None:
    for module_name in module_names:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in attr_names:
            fn = getattr(module, attr, None)
            if callable(fn):
                return fn
    return None


def world_functions() -> tuple[Callable, Callable]:
    parse = find(("lanterna.world", "lanterna.world.captions", "lanterna.world.grammar"),
                 ("parse_caption", "parse"))
    judge = find(("lanterna.world", "lanterna.world.oracle", "lanterna.world.judge"), ("judge",))
    if parse is None or judge is None:
        raise VerdictUnavailable("ShapesGenEval verdicts are unavailable (the Shapes World oracle is not installed)")
    return parse, judge


def requirements_of(prompt: str) -> Any:
    parse, _ = world_functions()
    try:
        spec = parse(prompt)
    except Exception as e:  # the grammar's own error type is the world package's business
        raise VerdictUnavailable(f"no ShapesGenEval verdict: the prompt is not a Shapes World caption ({e})") from None
    if spec is None:
        raise VerdictUnavailable("no ShapesGenEval verdict: the prompt is not a Shapes World caption")
    return spec


def verdict(image: Image.Image | list[Image.Image], requirements: Any) -> Verdict:
    _, judge = world_functions()
    return as_verdict(judge(image, requirements))


def as_verdict(result: Any) -> Verdict:
    """Accept the oracle's answer as a bool, a mapping or a dataclass-like object."""
    if isinstance(result, bool):
        return Verdict(passed=result)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    elif not isinstance(result, dict) and hasattr(result, "__dict__"):
        result = dict(vars(result))
    if not isinstance(result, dict):
        return Verdict(passed=bool(result))
    passed = bool(result.get("passed", result.get("ok", result.get("correct", False))))
    failures = result.get("failures", result.get("failed", result.get("reasons", []))) or []
    details = {k: v for k, v in result.items() if k not in ("passed", "ok", "correct", "failures", "failed", "reasons")}
    return Verdict(passed=passed, failures=[str(f) for f in failures], details=jsonable(details))


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if hasattr(value, "item"):
        try:
            return value.item()
        except Exception:
            pass
    return str(value)
