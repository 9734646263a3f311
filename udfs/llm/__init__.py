"""The LLM runtime every agent uses (see docs/llm.md).

- :mod:`udfs.llm.agent`: what an agent is (prompt, schema, validator, heuristic twin).
- :mod:`udfs.llm.client`: concurrent calls with retries, timeouts and one repair.
- :mod:`udfs.llm.ratelimit`: one rate limit shared by all tasks of a job.
- :mod:`udfs.llm.runner`: the Spark side, with the Delta response cache.
- :mod:`udfs.llm.scripted_server`: an OpenAI-compatible server for tests and benchmarks.
"""

from udfs.llm.agent import Agent, AnswerError, parse_answer
from udfs.llm.runner import AgentRun, run_agent

__all__ = ["Agent", "AgentRun", "AnswerError", "parse_answer", "run_agent"]
