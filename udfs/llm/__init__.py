"""The LLM runtime every agent uses, on the executors (see docs/llm.md); the driver side,
which runs an agent over a DataFrame, is ``jobs.agents``.

- :mod:`udfs.llm.agent`: what an agent is (prompt, schema, validator, heuristic twin).
- :mod:`udfs.llm.client`: concurrent calls with retries, timeouts and one repair.
- :mod:`udfs.llm.ratelimit`: one rate limit shared by all tasks of a job.
"""

from udfs.llm.agent import Agent, AnswerError, parse_answer

__all__ = ["Agent", "AnswerError", "parse_answer"]
