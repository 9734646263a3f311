"""The bottom layer: what every job and every executor function may import.

- ``core.config``: the configuration (YAML profiles, ``--set`` overrides, validation);
- ``core.session``: the SparkSession with Delta Lake;
- ``core.tables``: every Delta table read and write, by logical name (``silver.x``);
- ``core.categories``: the category rules (a leaf category per item);
- ``core.rundate``: the run date a stage works for;
- ``core.logs``: one logging format for every command.

``core`` imports neither ``jobs`` (driver-side stages) nor ``udfs`` (executor code);
``tests/test_layers.py`` checks it.
"""
