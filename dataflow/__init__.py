"""The application: the flow, its config and CLI, built from the connectors and operators."""

import os

# polars (transforms, the columnar path, Parquet) works on frames of one batch, a few
# thousand rows, per worker: its thread pool only adds CPU there (measured with
# bench/formats.py on 2 cores: ~15% more CPU per row on the columnar path with the default
# pool). Parallelism comes from workers and processes. A deployment may still set
# POLARS_MAX_THREADS itself; this runs before anything imports polars in a flow process.
os.environ.setdefault("POLARS_MAX_THREADS", "1")
