"""Everything after the conversion: data, training, evaluation and the parity suite.

One subpackage per concern; each module is imported explicitly by whoever needs it:

* ``parity.data``: datasets on their real on-disk layouts, and the recipe's transforms;
* ``parity.train``: the training loop, Caffe's SGD and poly schedule, the MSC loss, init
  loading, training checkpoints, data-parallel helpers, and the YAML recipes (``configs/``);
* ``parity.evaluation``: evaluation, the confusion-matrix metrics, DenseCRF;
* ``parity.suite``: the parity manifest, the runner, forward checks and the reports;
* ``parity.viz``: label colours and overlays (training's TensorBoard images and the demo);
* ``parity.commands``: the thin ``deeplab-parity``, ``deeplab-train`` and ``deeplab-demo``
  commands; no other module imports them.
"""
