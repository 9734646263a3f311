"""The bottom layer: what every job and every executor function may import.

- ``core.config``: the configuration (YAML profiles, ``--set`` overrides, validation);
- ``core.session``: the SparkSession with Delta Lake;
- ``core.tables``: every Delta table read and write, by logical name (``silver.x``);
- ``core.categories``: the category rules (a leaf category per item);
- ``core.rundate``: the run date a stage works for;
- ``core.files``: files beside the tables (FAISS shards) on a local path or any fsspec URL;
- ``core.retry``: one retry policy for every HTTP call.

``core`` imports neither ``jobs`` (driver-side stages) nor ``udfs`` (executor code);
``tests/test_layers.py`` checks it.
"""
