"""Measuring models and runs: the long-copy probe, the RULER-style tasks, lm-eval, the loss gap,
the on-policy shift and the compare's tables. Above world/; never imports steps/ or driver/."""
