"""Nearline: fresh events -> refreshed recommendations of the users they trigger, in seconds.

A Structured Streaming query reads ``bronze.events`` (a Delta table; new events appended
by ingest or any other producer) and handles each micro-batch in ``foreachBatch``:

1. the triggered users are found (``jobs.nearline.triggers``: a search or purchase, or
   the 5th detail view within 10 minutes, both configurable) and their state read from
   Delta (``jobs.nearline.state``: the batch's per-user features, written at start to
   ``gold.nearline_user_features``, with their events since the batch run folded in:
   recent CFV, history); nothing per user stays in the driver between batches;
2. their refresh rows go to the executors, where U2Q, query embedding, the FAISS shards
   (each loaded once per Python worker) and the ranking run (``udfs.nearline``);
3. one Delta MERGE writes ``gold.nearline_recommendations``: one row per user with the
   list (``items``: position, item, title, category, score and its components, the query
   and the reason), the triggering event (id, type, time) and the batch id. For tables
   in a local storage.root the driver commits it with delta-rs (tens of milliseconds;
   Spark's MERGE costs a second or more of Spark jobs), else with Spark
   (``nearline.commit``);
4. ``silver.nearline_batches`` gets one row per micro-batch (events, triggers, the
   MERGE's Delta version and commit time, seconds per phase).

Exactly once: the checkpoint (``nearline.checkpoint``) holds the stream's offsets; a batch
that was cut short is replayed with the same id and the same events after a restart. The
MERGE only replaces a user's row from a *later* batch (``s.batch_id > t.batch_id``), so a
replay of a batch whose MERGE had already committed changes nothing, and the batch log is
an idempotent Delta append (``txnAppId`` / ``txnVersion``). No event is skipped: the
offsets only advance after ``foreachBatch`` returned, and the source's starting version
is pinned at the first start (:func:`starting_version`), so that a replay of the very
first batch reads the same events.

Latency: everything that loads on first use is loaded before the first event (the model
and the shards in every Python worker, one refresh of real users through the whole path,
a MERGE that writes nothing), and a small job every ``nearline.keep_warm_s`` idle seconds
keeps the Python workers alive (Spark stops a worker after a minute without work).

New batch runs: every ``nearline.reload_check_s`` seconds a background thread looks for a
new version of ``gold.recommendations`` and, if there is one, loads the batch features
again beside the running stream; they take over between two micro-batches (the fresh
events are read per batch, so none handled meanwhile is missed).

Run it with ``discovery nearline`` (stops on Ctrl-C, or with ``--stop-after-idle``).
"""

from jobs.nearline.handler import BatchHandler, settings_from_conf, stored_candidates, warm_workers
from jobs.nearline.outputs import (
    BATCHES,
    RECOMMENDATIONS,
    RECOMMENDATIONS_SCHEMA,
    commit_engine,
    commit_lists,
    create_tables,
    log_batch,
)
from jobs.nearline.stream import run, start

__all__ = [
    "BATCHES",
    "RECOMMENDATIONS",
    "RECOMMENDATIONS_SCHEMA",
    "BatchHandler",
    "commit_engine",
    "commit_lists",
    "create_tables",
    "log_batch",
    "run",
    "settings_from_conf",
    "start",
    "stored_candidates",
    "warm_workers",
]
