"""The agents of the pipeline, by name. Each module defines ``AGENT`` (see udfs.llm.agent)."""

from __future__ import annotations

import importlib

from udfs.llm.agent import Agent

NAMES = ("item_profile", "behavior_compression", "cfv_potential", "portrait", "trend_query", "u2q")


def get(name: str) -> Agent:
    """The agent called ``name``; fails with the known names."""
    if name not in NAMES:
        raise KeyError(f"unknown agent {name!r} (known: {', '.join(NAMES)})")
    return importlib.import_module(f"udfs.agents.{name}").AGENT
