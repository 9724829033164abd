"""The parity suite: reported numbers as data (``manifest``, ``manifest.yaml``), the runner that
checks each row (``runner``), layer-by-layer forward checks against a Caffe reference
(``forward``) and the reports (``reports``: JSON, Markdown, JUnit, comparison)."""
