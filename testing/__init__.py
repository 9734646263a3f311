"""What the tests and benchmarks use and the pipeline does not: an OpenAI-compatible server
that scripts latencies and faults (``testing.scripted_server``) and each agent's scripted
answers (``testing.answers``). Not part of the wheel."""
