"""Evaluation: sliding the model over a dataset (``evaluate``), the confusion-matrix scores
(``metrics``) and DenseCRF post-processing (``crf``)."""
