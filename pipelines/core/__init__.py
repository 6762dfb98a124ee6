"""Floor 1, under everything: typed records, errors, the config tree, method specs, the entropy
and long-copy math, the sample log and the index file format. Imports nothing of the project."""
