"""Versioned prompt templates of the LLM agents. A package so that they ship in the wheel."""
