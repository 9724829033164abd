"""The command-line entry points, thin over the packages beside them: ``deeplab-parity``
(``parity``, with ``eval`` from ``eval``), ``deeplab-train`` (``train``), ``deeplab-demo``
(``demo``); ``errors`` prints bad input as one line. Nothing outside this package imports it."""
