"""biomedica-train: CLIP continued pretraining and evaluation on biomedica-kit datasets.

The training application of the workbench, kept apart from the library as open_clip keeps
``open_clip_train`` apart from ``open_clip``: it imports :mod:`biomedica_kit` (shards,
metadata, splits, labels) and open_clip's own training package, and the library never imports
it. Its commands (``biomedica train``, ``biomedica evaluate``) join the ``biomedica`` CLI
through the ``biomedica.commands`` entry points.

Modules: :mod:`~biomedica_train.models` (architectures, pretrained weights, checkpoints),
:mod:`~biomedica_train.text` (the text an image trains with), :mod:`~biomedica_train.data`
(streaming training data from shards),
:mod:`~biomedica_train.train` (the training run), :mod:`~biomedica_train.evaluate`
(zero-shot classification and retrieval), :mod:`~biomedica_train.cli`.
"""
