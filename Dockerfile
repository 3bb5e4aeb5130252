# syntax=docker/dockerfile:1
# s3sentinel: one bytewax process of the connector per container.
#
#   docker build -t s3sentinel:0.1.0 .
#   docker run --read-only -v s3sentinel-data:/var/lib/s3sentinel \
#     -v $PWD/my.toml:/etc/s3sentinel/s3sentinel.toml:ro s3sentinel:0.1.0
#
# The install steps are the ones tests/deploy/test_image.py runs (no container daemon is
# needed for that): build the wheel with `pip wheel --no-deps`, create a clean venv,
# `pip install` the wheel there (its pinned dependencies, binary wheels only), then run
# `s3sentinel validate-config` and `python -m dataflow.cluster` from that venv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is made of (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY dataflow ./dataflow
COPY connectors ./connectors
COPY operators ./operators
RUN pip wheel --no-deps --wheel-dir /wheels .

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="s3sentinel" \
      org.opencontainers.image.description="Streaming connector that ships security logs from AWS S3 into Microsoft Sentinel, built on bytewax" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PATH=/opt/s3sentinel/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/s3sentinel \
    TMPDIR=/var/lib/s3sentinel/tmp \
    S3SENTINEL_CONFIG=/etc/s3sentinel/s3sentinel.toml

# A fixed uid/gid (10001), no login shell, no home outside the data directory.
RUN groupadd --system --gid 10001 s3sentinel \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/s3sentinel --shell /usr/sbin/nologin s3sentinel \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/s3sentinel /var/lib/s3sentinel/tmp

# The wheel and its pinned dependencies, binary wheels only (there is no compiler here);
# pip compiles the modules to .pyc now, as the root filesystem is read-only at run time.
# The wheel itself is bind-mounted from the builder and leaves no layer behind.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/s3sentinel \
 && /opt/s3sentinel/bin/pip install --only-binary=:all: /wheels/s3sentinel-*.whl \
 && /opt/s3sentinel/bin/s3sentinel --version

# The only writable path: recovery store, journals, dead letters, audit log, TMPDIR, HOME.
WORKDIR /var/lib/s3sentinel
VOLUME ["/var/lib/s3sentinel"]
USER 10001:10001

# ops.port (/metrics, /healthz, /readyz, /admin) and the bytewax cluster port.
EXPOSE 9464 2101

# SIGINT, not SIGTERM (both checked with bytewax 0.21.1 here):
# - SIGINT: Python's handler raises KeyboardInterrupt in the main thread (in the step it
#   runs with -w 1, in bytewax's wait for its workers with -w 2+), the dataflow stops, the
#   process unwinds (finally blocks, atexit: the run summary is printed) and exits, in
#   0.1-0.2 s. Steps in flight are abandoned, as with a kill (a request accepted but not
#   yet journaled is the documented duplicate window).
# - SIGTERM: Python and bytewax install no handler: it kills the process on the spot, no
#   unwinding. And this process is PID 1 of the container (the entrypoint execs), to which
#   the kernel delivers no signal it has no handler for: the container would ignore
#   SIGTERM and wait out its grace period for SIGKILL.
# Neither takes a snapshot at shutdown (bytewax has no such hook, bytewax#268): the flow
# resumes from its last periodic snapshot (runtime.snapshot_secs) and the upload journal
# skips what was delivered after it.
STOPSIGNAL SIGINT

# Derives -i/-a/-w from the StatefulSet pod's environment and execs `s3sentinel run`;
# arguments go to `s3sentinel run` (e.g. --catch-up). See dataflow/cluster.py.
ENTRYPOINT ["python", "-m", "dataflow.cluster"]
