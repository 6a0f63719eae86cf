"""Data where it lives: manifests, media and results in object storage (``s3://``, ``gs://``) and behind
URLs (``https://``), with the trust rules a manifest from elsewhere is held to.

* :mod:`~batchqwen.storage.locations`: parsing locations, resolving a manifest's media, trust rules (pure).
* :mod:`~batchqwen.storage.fetch`: reading remote files (ranged reads for probes, downloads into a bounded
  cache for the run), retried on transient errors.
* :mod:`~batchqwen.storage.outputs`: a run's output folder in a bucket: the local state directory, uploads
  at checkpoints, the lock object.
"""
