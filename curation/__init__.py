"""The Label Studio bridge: experts review cluster-derived labels in a real Label Studio.

``curation`` imports the library (:mod:`biomedica_kit`); the library never imports it. Modules:

- :mod:`curation.server`: run Label Studio 1.23.2 from its own virtual environment on
  127.0.0.1 (start, stop, status; the admin's token in a mode-0600 secret file, redacted).
- :mod:`curation.client`: the REST client (legacy ``Token`` keys and personal access tokens,
  i.e. JWT refresh -> ``Bearer``), retries through :mod:`biomedica_kit.base.http`.
- :mod:`curation.config`: the labeling config generated from the taxonomy.
- :mod:`curation.push`: one review task per cluster plus spot checks, idempotent.
- :mod:`curation.pull`: incremental sync of annotations into votes, then a label version.
- :mod:`curation.cli`: the ``biomedica labelstudio`` and ``biomedica review`` commands.

``taxonomy/`` holds BIOMEDICA's taxonomy definitions (data, read by
:mod:`biomedica_kit.labels.taxonomy`).
"""

__all__: list[str] = []
