"""Pipeline stages of the discovery recommender: one module per stage.

Each stage is a few pure ``DataFrame -> DataFrame`` transforms plus ``run(spark, conf)``.
Shared plumbing: ``jobs.config`` (YAML + overrides), ``jobs.session`` (Spark + Delta),
``jobs.tables`` (where tables live, idempotent writes).
"""
