"""Pool capacity: VG figures and gauges, warning levels, wake on new space, reduce.

``figures.py`` holds the pure math (levels, the extension rate, headroom, the reduce
target); ``watch.py`` polls the VGs and acts on changes; ``reduce.py`` gives space back.
"""
