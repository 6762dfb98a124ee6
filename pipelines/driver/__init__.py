"""Runs the steps: the stage driver (the paper's algorithm box), construction, the fleet of
actors and their placement, reports, dataset export, the plan and the compare. Only the CLI
(pipelines/cli.py) sits above it."""
