"""`streamguard eval`: multiple-choice audio-visual QA sets (the common schema and the published
benchmarks' files) answered through the streaming path, scored per method with compression and
first-token KL against full tokens: `datasets` reads the files, `runner` streams the videos and
asks, `results` keeps the resumable log, `report` sums it up.

Kept free of imports so that building the CLI parser (which reads `datasets.FORMATS`) stays light.
"""
