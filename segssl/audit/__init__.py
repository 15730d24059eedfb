"""Label audit: out-of-fold predictions rank the given masks and regions most worth re-checking.

``folds`` (grouped K-fold), ``scoring`` (pure numpy: pixel, region and image scores),
``oof`` (train K models, store out-of-fold probabilities), ``report`` (CSV, HTML, suggested
masks), ``noise`` (synthetic label noise and detection metrics for benchmarks) and
``cleanlab_scores`` (the optional cleanlab comparison). Nothing here imports cleanlab unless
asked to, so ``import segssl`` never needs it.
"""
