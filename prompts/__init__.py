"""Versioned prompt templates of the LLM agents (a package, so that they ship in the wheel).

One file per agent and version: ``prompts/<agent>/<version>.yaml`` with the keys

``version``  the version label (must match the file name), stored with every answer;
``system``   the system message;
``user``     the user message, a ``string.Template`` (``$title``, ``${categories}``);
``repair``   optional: the message sent after an invalid answer (``$error`` is the reason).
``example``  optional: an example answer (YAML), shown where the templates say ``$example``
             and never accepted as an answer (``copied_example``); placeholders such as
             ``<a category from the list>`` make it one no check can pass either.

Inputs taken from data are untrusted: templates put them between ``<input>`` tags and the
runtime strips those tags from the values, so data cannot close the delimiter.

Example
-------
>>> prompt = load_prompt("item_profile")           # the latest version
>>> prompt.version
'v2'
>>> system, user = prompt.render(title="RED HEART T-LIGHT HOLDER", categories="candles")
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

import yaml

DEFAULT_REPAIR = (
    "Your previous answer could not be used: $error\n"
    "Answer again with only the JSON object described above, nothing else."
)

_DELIMITER = re.compile(r"</?\s*input\s*>", re.IGNORECASE)


class PromptError(ValueError):
    """A prompt file is missing, malformed, or a template value is missing."""


@dataclass(frozen=True)
class Prompt:
    agent: str
    version: str
    system: str
    user: str
    repair: str = DEFAULT_REPAIR
    example: Any = None

    def render(self, **values: object) -> tuple[str, str]:
        """The system and user message texts with ``values`` filled in (delimiters stripped)."""
        clean = {k: _DELIMITER.sub("", "" if v is None else str(v)) for k, v in values.items()}
        if self.example is not None:
            clean.setdefault("example", json.dumps(self.example, ensure_ascii=False))
        try:
            return Template(self.system).substitute(clean), Template(self.user).substitute(clean)
        except KeyError as e:
            raise PromptError(f"prompt {self.agent}/{self.version}: no value for ${e.args[0]}") from None

    def render_repair(self, error: str) -> str:
        return Template(self.repair).safe_substitute(error=error)


def _version_key(version: str) -> tuple:
    # v2 < v10: compare the numeric parts as numbers.
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version))


def versions(agent: str) -> list[str]:
    """The versions of an agent's prompt, oldest first."""
    folder = resources.files("prompts").joinpath(agent)
    if not folder.is_dir():
        raise PromptError(f"no prompts for agent {agent!r} (expected a folder prompts/{agent}/)")
    found = [f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml")]
    if not found:
        raise PromptError(f"prompts/{agent}/ holds no <version>.yaml file")
    return sorted(found, key=_version_key)


def load_prompt(agent: str, version: str | None = None) -> Prompt:
    """Load ``prompts/<agent>/<version>.yaml``; ``version=None`` takes the latest."""
    version = version or versions(agent)[-1]
    path = resources.files("prompts").joinpath(agent, f"{version}.yaml")
    if not path.is_file():
        known = ", ".join(versions(agent))
        raise PromptError(f"prompt {agent}/{version} not found (versions: {known})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PromptError(f"prompts/{agent}/{version}.yaml: not valid YAML: {e}") from None
    if not isinstance(data, dict) or not data.get("system") or not data.get("user"):
        raise PromptError(f"prompts/{agent}/{version}.yaml: needs 'system' and 'user' texts")
    if str(data.get("version", version)) != version:
        raise PromptError(
            f"prompts/{agent}/{version}.yaml: says version {data.get('version')!r}; "
            "the file name and the version must agree"
        )
    return Prompt(
        agent=agent,
        version=version,
        system=str(data["system"]),
        user=str(data["user"]),
        repair=str(data.get("repair") or DEFAULT_REPAIR),
        example=data.get("example"),
    )
