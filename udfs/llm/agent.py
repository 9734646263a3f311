"""What an agent is: a prompt, an output schema, a validator and a heuristic twin.

Both implementations honour one contract: given an input row (a dict of the agent's input
columns) they produce an instance of the agent's pydantic output model. The LLM one goes
through :func:`parse_answer`, which accepts the usual wrappers (```json fences, text around
the object) and rejects anything that is not the schema, or uses a word outside the
vocabulary the agent was given.

Example
-------
>>> agent = Agent(name="item_profile", output_model=ItemProfile, input_columns=("title",),
...               template_values=lambda row, ctx: {"title": row["title"]},
...               heuristic=lambda row, ctx: ItemProfile(...))
>>> parse_answer('```json\\n{"short_title": "Heart T-Light Holder", ...}\\n```', agent, row, ctx)
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pyspark.sql import types as T

from prompts import Prompt

Row = Mapping[str, Any]
Context = Mapping[str, Any]


class AnswerError(ValueError):
    """An answer that cannot be used. ``kind``: not_json, wrong_schema, out_of_vocabulary
    or copied_example (the prompt's own example given back)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Agent:
    """One reasoning step with an LLM and a heuristic implementation of the same contract.

    Parameters
    ----------
    name : the agent's name; its prompts live in ``prompts/<name>/``.
    output_model : pydantic model of one answer (``extra="forbid"`` recommended).
    input_columns : the columns of the input DataFrame the agent reads.
    template_values : ``(row, context) -> {placeholder: value}`` for the prompt template.
    heuristic : ``(row, context) -> output_model`` without any LLM.
    heuristic_version : stored as the prompt version of heuristic rows; bump on change.
    check : optional ``(answer, row, context) -> None`` raising :class:`AnswerError`
        (kind ``out_of_vocabulary``) for answers the schema alone cannot reject.
    image_column : optional column with an image URL, sent as an ``image_url`` content part.
    request_schema : optional ``(row, context) -> JSON schema`` of the answer to this one
        request, with exactly the limits the prompt states for it (item counts, category
        enums); sent to grammar-constrained servers and the source of ``max_tokens``.
        Default: the output model's schema.
    complete : optional ``(salvaged answer, row, context) -> answer``: fills an answer that
        was cut off inside a list (its complete items kept) up to what was asked, e.g. from
        the heuristic. Without it a cut-off answer fails as ``not_json``.
    prune : optional ``(answer, row, context) -> (answer, problems)``: the answer without
        its list items that fail the check, and why each was left out. With ``complete``,
        an answer that fails the check but keeps some items is used for those, completed
        (status ``partial``, error class ``pruned``) instead of failing whole.
    """

    name: str
    output_model: type[BaseModel]
    input_columns: tuple[str, ...]
    template_values: Callable[[Row, Context], dict[str, Any]]
    heuristic: Callable[[Row, Context], BaseModel]
    heuristic_version: str = "h1"
    check: Callable[[BaseModel, Row, Context], None] | None = None
    image_column: str | None = None
    request_schema: Callable[[Row, Context], dict[str, Any]] | None = None
    complete: Callable[[BaseModel, Row, Context], BaseModel] | None = None
    prune: Callable[[BaseModel, Row, Context], tuple[BaseModel, list[str]]] | None = None

    def messages(self, prompt: Prompt, row: Row, context: Context) -> list[dict[str, Any]]:
        """Chat messages for one input: a system message and a user message.

        With an image URL the user content is a list of content parts (text first, then
        ``{"type": "image_url", "image_url": {"url": ...}}``), as vision models expect.
        """
        system, user = prompt.render(**self.template_values(row, context))
        image = row.get(self.image_column) if self.image_column else None
        if image:
            content: Any = [
                {"type": "text", "text": user},
                {"type": "image_url", "image_url": {"url": str(image)}},
            ]
        else:
            content = user
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def json_schema(self) -> dict[str, Any]:
        return self.output_model.model_json_schema()

    def schema_for(self, row: Row, context: Context) -> dict[str, Any]:
        """The JSON schema of the answer to one request (see ``request_schema``)."""
        return self.request_schema(row, context) if self.request_schema else self.json_schema()


def json_list(row: Row, column: str) -> list:
    """The JSON array in ``row[column]``; an empty list where the column is null or empty."""
    return json.loads(row.get(column) or "[]")


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in an answer: bare, inside ```json fences, or the first {...} in prose.

    A raw control character inside a string (a line break, a tab) is read as that
    character instead of failing the whole answer: grammar-constrained servers such as
    llama.cpp's (``llama-cpp-python`` 0.3) let a model write them, and the agents' checks
    reject or prune a value that carries a line break where it must not."""
    if text is None:
        raise AnswerError("not_json", "empty answer")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate.strip(), strict=False)
        except (json.JSONDecodeError, ValueError):
            continue
    snippet = text.strip().replace("\n", " ")[:80]
    raise AnswerError("not_json", f"answer is not JSON: {snippet!r}")


def parse_answer(text: str, agent: Agent, row: Row, context: Context, example: Any = None) -> BaseModel:
    """Validate an LLM answer against the agent's schema and vocabulary; ``example``: the
    prompt's example answer, which an answer may not copy (``copied_example``)."""
    value = extract_json(text)
    if not isinstance(value, dict):
        raise AnswerError("wrong_schema", f"expected a JSON object, got {type(value).__name__}")
    _not_copied(value, example)
    try:
        answer = agent.output_model.model_validate(value)
    except ValidationError as e:
        raise AnswerError("wrong_schema", _problems(e)) from None
    if agent.check is not None:
        agent.check(answer, row, context)
    return answer


def _problems(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors()[:5]
    )


def _not_copied(value: dict[str, Any], example: Any) -> None:
    if example is not None and copies_example(value, example):
        raise AnswerError("copied_example", "the answer repeats the prompt's example instead of answering")


def _canonical(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.lower().split())
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def copies_example(value: dict[str, Any], example: Any) -> bool:
    """Whether an answer is the prompt's example, or holds one of the example's list items
    (a query, a row) in the same field."""
    if _canonical(value) == _canonical(example):
        return True
    if not isinstance(example, dict):
        return False
    for field, items in example.items():
        if isinstance(items, list) and isinstance(value.get(field), list):
            given = {_canonical(item) for item in items}
            if any(_canonical(item) in given for item in value[field]):
                return True
    return False


@dataclass(frozen=True)
class Salvaged:
    """An answer cut off inside a list (e.g. at ``max_tokens``; ``reason`` ``cut_off``) or
    with some list items that fail the check (``pruned``): ``output`` holds its complete,
    valid items, completed by the agent's ``complete`` (the heuristic's items for the
    rest); ``note`` says how many were kept. Stored with status ``partial`` and ``reason``
    as its error class."""

    output: BaseModel
    kept: int
    note: str
    reason: str = "cut_off"


def closed_prefixes(text: str) -> list[str]:
    """The JSON object at the start of a cut-off answer, closed after each complete list
    item (longest first): ``{"q": [{"a": 1}, {"a": 2}, {"a"`` gives ``{"q": [{"a": 1},
    {"a": 2}]}`` and ``{"q": [{"a": 1}]}``. Empty when the object is complete or none starts."""
    start = text.find("{")
    if start < 0:
        return []
    stack: list[str] = []
    cuts: list[str] = []
    in_string = escaped = False

    def cut(end: int) -> None:
        closing = "".join("]" if c == "[" else "}" for c in reversed(stack))
        cuts.append(text[start:end] + closing)

    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                if stack[-1] == "[":  # a string item of a list ends here
                    cut(i + 1)
        elif c == '"':
            in_string = True
        elif c in "{[":
            stack.append(c)
        elif c in "}]":
            if not stack or stack.pop() != ("{" if c == "}" else "["):
                return []  # not JSON: nothing to salvage
            if not stack:
                return []  # the object is complete: not cut off
            if stack[-1] == "[":  # an object or list item of a list ends here
                cut(i + 1)
    return cuts[::-1]


def _items(answer: BaseModel) -> int:
    return sum(len(v) for v in answer.model_dump().values() if isinstance(v, list))


def salvage(text: str, agent: Agent, row: Row, context: Context, example: Any = None) -> Salvaged | None:
    """The complete, valid items of an answer cut off inside a list, completed by the agent
    (see :class:`Salvaged`); None when the agent cannot complete one or no item survives."""
    if agent.complete is None:
        return None
    for prefix in closed_prefixes(text):
        try:
            value = json.loads(prefix, strict=False)
        except ValueError:  # e.g. a bare word cut off before the list's next item
            continue
        _not_copied(value, example)
        answer = _valid_items(agent, value)
        if answer is None or _items(answer) == 0:
            continue
        if agent.check is not None:
            agent.check(answer, row, context)
        kept = _items(answer)
        done = agent.complete(answer, row, context)
        note = f"answer cut off: {kept} complete item(s) kept, {_items(done) - kept} added by the heuristic"
        return Salvaged(done, kept, note)
    return None


def _valid_items(agent: Agent, value: dict[str, Any]) -> BaseModel | None:
    """The model of ``value``, leaving out list items that break the schema (the last one,
    cut off mid-way, typically); None if something else is wrong."""
    for _ in range(3):
        try:
            return agent.output_model.model_validate(value)
        except ValidationError as e:
            bad = {(err["loc"][0], err["loc"][1]) for err in e.errors()
                   if len(err["loc"]) >= 2 and isinstance(err["loc"][1], int)}  # fmt: skip
            if not bad:
                return None
            value = {
                k: [x for i, x in enumerate(v) if (k, i) not in bad] if isinstance(v, list) else v
                for k, v in value.items()
            }
    return None


def read_answer(
    text: str, agent: Agent, row: Row, context: Context, example: Any = None
) -> BaseModel | Salvaged:
    """:func:`parse_answer`, or for an answer cut off inside a list its salvaged items
    (:func:`salvage`); raises :class:`AnswerError` when neither works."""
    try:
        return parse_answer(text, agent, row, context, example)
    except AnswerError as e:
        if e.kind == "out_of_vocabulary":
            pruned = _pruned(text, agent, row, context)
            if pruned is None:
                raise
            return pruned
        if e.kind != "not_json":
            raise
        salvaged = salvage(text or "", agent, row, context, example)
        if salvaged is None:
            raise
        return salvaged


def _pruned(text: str, agent: Agent, row: Row, context: Context) -> Salvaged | None:
    """An answer that failed the check with its failing items left out (``agent.prune``)
    and completed; None when the agent cannot do that or no item is left."""
    if agent.prune is None or agent.complete is None:
        return None
    answer = agent.output_model.model_validate(extract_json(text))  # parsed once already
    kept_answer, problems = agent.prune(answer, row, context)
    kept = _items(kept_answer)
    if kept == 0:
        return None
    if agent.check is not None:
        agent.check(kept_answer, row, context)
    done = agent.complete(kept_answer, row, context)
    note = (f"{len(problems)} item(s) left out ({problems[0]}), {kept} kept, "
            f"{_items(done) - kept} added by the heuristic")  # fmt: skip
    return Salvaged(done, kept, note[:500], "pruned")


def nothing_to_add(answer: BaseModel, row: Row, context: Context) -> BaseModel:
    """``Agent.complete`` for an agent whose pruned answer is whole as it is (fewer list
    items are still a valid answer: an item's factors, a buyer's main categories)."""
    return answer


def narrowed_schema(model: type[BaseModel], limits: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON schema of ``model`` with extra keywords on some fields: ``limits`` maps
    ``"field"`` (of the model) or ``"Model.field"`` (of a nested model, as named in
    ``$defs``) to keywords such as ``{"enum": [...]}``, ``{"maxItems": 3}`` or, for a list
    of strings, ``{"items": {"type": "string", "maxLength": 60}}``."""
    schema = copy.deepcopy(model_schema(model))
    for path, keywords in limits.items():
        *owner, field = path.split(".")
        target = schema["$defs"][owner[0]] if owner else schema
        target["properties"][field].update(keywords)
    return schema


@functools.lru_cache(maxsize=32)
def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema, built once per model and process (request schemas are
    built for every request); copy it before changing it."""
    return model.model_json_schema()


def one_line(min_length: int, max_length: int) -> dict[str, Any]:
    """A string of ``min_length`` to ``max_length`` characters on one line, without angle
    brackets (no ``<placeholder>``, no ``<input>`` tag), quotes or backslashes. The
    ``pattern`` carries the bounds too: llama.cpp's converter turns a pattern into the
    string's grammar and then ignores ``minLength`` / ``maxLength`` (kept for the others)."""
    return {
        "type": "string",
        "minLength": min_length,
        "maxLength": max_length,
        "pattern": f'^[^\\n\\r\\t<>"\\\\]{{{min_length},{max_length}}}$',
    }


def enum_or_string(values: Any, max_length: int = 80) -> dict[str, Any]:
    """``{"enum": values}``, or a bounded string where no value is known (an empty enum
    would allow no answer at all)."""
    values = sorted({str(v) for v in values if v})
    return {"enum": values} if values else {"type": "string", "maxLength": max_length}


# Tokens an answer may take, from its schema's bounds: a string of n characters at most
# n / 3 + 2 tokens (English text averages about 4 characters a token), a number 8, every
# key, bracket and separator counted, each property with room for a line break and indent.
CHARS_PER_TOKEN = 3
MARGIN = 1.25


def token_bound(schema: dict[str, Any]) -> int | None:
    """An upper bound of the tokens of an answer that follows ``schema`` (JSON schema, with
    ``$defs``), or None when some string or list in it has no maximum length."""
    defs = schema.get("$defs", {})

    def bound(s: dict[str, Any]) -> int | None:
        if "$ref" in s:
            return bound(defs[s["$ref"].rsplit("/", 1)[-1]])
        for key in ("anyOf", "oneOf"):
            if key in s:
                parts = [bound(x) for x in s[key]]
                return None if None in parts else max(parts)
        if "enum" in s or "const" in s:
            values = s.get("enum", [s.get("const")])
            return max(len(json.dumps(v)) for v in values) // CHARS_PER_TOKEN + 2 if values else 2
        kind = s.get("type")
        if kind == "string":
            return s["maxLength"] // CHARS_PER_TOKEN + 2 if "maxLength" in s else None
        if kind in ("integer", "number"):
            return 8
        if kind in ("boolean", "null"):
            return 2
        if kind == "array" and "prefixItems" in s:  # a tuple: one schema per position
            parts = [bound(x) for x in s["prefixItems"]]
            return None if None in parts else 2 + sum(p + 2 for p in parts)
        if kind == "array":
            item = bound(s.get("items", {}))
            return None if item is None or "maxItems" not in s else 2 + s["maxItems"] * (item + 2)
        if kind == "object":
            total = 2
            for name, prop in s.get("properties", {}).items():
                value = bound(prop)
                if value is None:
                    return None
                total += len(name) // CHARS_PER_TOKEN + 4 + value
            return total
        return None

    return bound(schema)


def max_tokens_for(schema: dict[str, Any]) -> int | None:
    """``max_tokens`` that lets any answer within the schema's bounds finish (with a margin)."""
    b = token_bound(schema)
    return None if b is None else int(b * MARGIN) + 16


def request_hash(body: Mapping[str, Any]) -> str:
    """Stable hash of a request body (model, messages, sampling settings, response format)."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """Rough token count of messages (4 characters a token), for rate limits and reports."""
    chars = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
            chars += 85 * 4 * sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return max(1, -(-chars // 4))


_SCALARS: dict[Any, T.DataType] = {
    str: T.StringType(),
    int: T.LongType(),
    float: T.DoubleType(),
    bool: T.BooleanType(),
    dt.date: T.DateType(),
    dt.datetime: T.TimestampType(),
}


def _spark_type(ann: Any) -> T.DataType:
    origin = typing.get_origin(ann)
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if len(args) != 1:
            raise TypeError(f"unions other than Optional are not supported: {ann}")
        return _spark_type(args[0])
    if origin is typing.Literal:
        return _SCALARS[type(args[0])]
    if origin is typing.Annotated:
        return _spark_type(args[0])
    if origin in (list, tuple, set, frozenset):
        return T.ArrayType(_spark_type(args[0]))
    if origin is dict:
        return T.MapType(_spark_type(args[0]), _spark_type(args[1]))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return spark_schema(ann)
    if ann in _SCALARS:
        return _SCALARS[ann]
    raise TypeError(f"no Spark type for {ann!r}")


def spark_schema(model: type[BaseModel]) -> T.StructType:
    """The Spark struct of a pydantic model (fields in declaration order)."""
    return T.StructType(
        [
            T.StructField(name, _spark_type(field.annotation), True)
            for name, field in model.model_fields.items()
        ]
    )
