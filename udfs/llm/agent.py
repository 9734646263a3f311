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

import datetime as dt
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
    """An answer that cannot be used. ``kind``: not_json, wrong_schema or out_of_vocabulary."""

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
    """

    name: str
    output_model: type[BaseModel]
    input_columns: tuple[str, ...]
    template_values: Callable[[Row, Context], dict[str, Any]]
    heuristic: Callable[[Row, Context], BaseModel]
    heuristic_version: str = "h1"
    check: Callable[[BaseModel, Row, Context], None] | None = None
    image_column: str | None = None

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


def json_list(row: Row, column: str) -> list:
    """The JSON array in ``row[column]``; an empty list where the column is null or empty."""
    return json.loads(row.get(column) or "[]")


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in an answer: bare, inside ```json fences, or the first {...} in prose."""
    if text is None:
        raise AnswerError("not_json", "empty answer")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate.strip())
        except (json.JSONDecodeError, ValueError):
            continue
    snippet = text.strip().replace("\n", " ")[:80]
    raise AnswerError("not_json", f"answer is not JSON: {snippet!r}")


def parse_answer(text: str, agent: Agent, row: Row, context: Context) -> BaseModel:
    """Validate an LLM answer against the agent's schema and vocabulary."""
    value = extract_json(text)
    if not isinstance(value, dict):
        raise AnswerError("wrong_schema", f"expected a JSON object, got {type(value).__name__}")
    try:
        answer = agent.output_model.model_validate(value)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors()[:5]
        )
        raise AnswerError("wrong_schema", problems) from None
    if agent.check is not None:
        agent.check(answer, row, context)
    return answer


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
