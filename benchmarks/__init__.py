"""Performance benchmarks for vmcontainer; run ``python -m benchmarks.run --help``.

Every figure is measured next to a baseline taken in the same process and the
same run, interleaved round by round, because the reference machine (2 shared
cores) drifts too much for figures from different runs to be compared.
"""
