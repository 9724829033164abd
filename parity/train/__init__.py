"""Training: the loop (``loop``), Caffe's SGD parameter groups and poly schedule (``solver``),
the MSC loss (``loss``), init-checkpoint loading (``init``), training checkpoints
(``checkpoint``), the batch stream (``batches``), data-parallel helpers (``distributed``) and the
YAML recipes (``config``, ``configs/*.yaml``)."""
