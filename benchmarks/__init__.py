"""GPU benchmark programs; their raw results are in ``benchmarks/results/``, where ``mtlib.bench`` reads them.

Run them from the repository root as modules, with ``mtlib`` importable (installed, or the checkout itself:
``-m`` puts the current folder on the path), e.g. on a CUDA host::

    python -m benchmarks.gpu_benchmark --data DATA_DIR --out OUT_DIR
"""
