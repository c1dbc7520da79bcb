"""Rendering results: training curves, ranked-results PNG, HTML report, console tables.

Everything here draws or formats an object someone else computed (a history, a
:class:`~reid_dhm.retrieval.result.ReidEvaluation`, a classification table); nothing
here trains or evaluates. The run layer and the command line call it; engines do not.

* ``curves.plot_training_curves(history, path)``: a panel each for the total loss, each
  loss term per branch or pair, accuracy, learning rate and the evaluation
* ``ranked.write_ranked_png(evaluation, path, queries, topk)`` (and the lower-level
  ``plot_ranked_results`` that ``reid-dhm retrieve`` uses; ``ranked_labels`` decides
  its text)
* ``report.write_report(path, evaluation, title=..., info=..., config=...,
  settings=..., single_file=...)``: a report folder, or one HTML file
* ``labels``: identity and camera as the image file names spell them (cameras from 1)
* ``tables.format_reid(evaluation)``, ``tables.format_classification(table)``

Submodules import matplotlib / PIL only when used, so import them directly.
"""
