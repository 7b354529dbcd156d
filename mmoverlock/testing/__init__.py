"""What the tests and the benchmark tools share and the models never use, as mmdet keeps it in ``mmdet.testing``:
the formulations the fused ContMix op is measured against (:mod:`.contmix_baselines`), with the op's cost model.

Nothing in ``mmoverlock.ops``, ``models``, ``apis``, ``engine`` or ``analysis`` imports this package; tests and the
command-line tools under ``tools/`` may.
"""
