"""Pipeline stages of the discovery recommender: one module per stage.

Each stage is a few pure ``DataFrame -> DataFrame`` transforms plus ``run(spark, conf)``.
Shared plumbing: ``core.config`` (YAML + overrides), ``core.session`` (Spark + Delta),
``core.tables`` (where tables live, idempotent writes).
"""
