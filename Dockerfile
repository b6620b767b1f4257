# syntax=docker/dockerfile:1
#
# s3batchd container image.
#
#   docker build -t s3batchd:0.1.0 .
#   docker run --rm s3batchd:0.1.0 check-config      # the settings the daemon would use
#
# The base is pinned to a full tag (Python patch release and Debian release). Pin it further
# to a digest where you build, e.g.
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
#   ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
# (the digest could not be looked up where this file was written: no registry access).
# Both stages must use the same image: the virtual environment copied into the final stage
# points at /usr/local/bin/python3.11 of the build stage's base.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- stage 1: build the wheel and install it with its dependencies into /opt/venv -----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1

WORKDIR /src
# Only what the wheel is built from (see .dockerignore): the image cannot drift from
# pyproject.toml, and constraints.txt pins every dependency to the versions the test suite ran.
COPY pyproject.toml README.md constraints.txt ./
COPY s3batchd/ s3batchd/

RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels /src \
    && /opt/venv/bin/pip install --constraint /src/constraints.txt /wheels/s3batchd-*.whl \
    && /opt/venv/bin/s3batchd --version

# --- stage 2: the runtime image: the base plus /opt/venv, nothing from the build ------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="s3batchd" \
      org.opencontainers.image.description="S3 PutObject sidecar that batches small objects into tar files with a JSON index" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, non-root UID/GID: Kubernetes' runAsNonRoot can only verify a numeric USER, and
# volumes (fsGroup, named volumes, host directories) can be prepared for it in advance.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" s3batchd \
    && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin s3batchd \
    && mkdir -p /var/lib/s3batchd/spool /etc/s3batchd \
    && chown "${UID}:${GID}" /var/lib/s3batchd/spool \
    && chmod 0700 /var/lib/s3batchd/spool

COPY --from=build /opt/venv /opt/venv
# Every key at its default (the environment below overrides spool.dir). Mount your own file
# over it, or set S3BATCHD_<SECTION>__<KEY> variables.
COPY config.example.toml /etc/s3batchd/config.toml

# S3BATCHD_SPOOL__DIR wins over spool.dir in any mounted config file (the environment beats
# the file): mount the spool volume here, or override the variable too.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    S3BATCHD_SPOOL__DIR=/var/lib/s3batchd/spool

# Sealed batches not yet uploaded live here: keep it on a volume that outlives the container.
VOLUME ["/var/lib/s3batchd/spool"]
WORKDIR /var/lib/s3batchd

USER ${UID}:${GID}

# 9000: the S3 API. It listens on 127.0.0.1 only (auth.mode = "none" by default: `serve` refuses
#       other addresses unless "sigv4"), so only containers sharing this namespace reach it: a
#       Kubernetes pod, `network_mode: service:...` in Compose, `docker run --network
#       container:...`. Publishing it with -p does not work, by design.
# 9002: the admin listener (/healthz, /readyz, /metrics), 127.0.0.1 by default; set
#       server.admin_host = "0.0.0.0" for probes from outside the network namespace.
EXPOSE 9000 9002

# No curl in the slim image: Python's urllib. Assumes the default admin port 9002; Kubernetes
# ignores HEALTHCHECK and uses the probes of the pod spec instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9002/healthz', timeout=2)"]

# SIGTERM: seal and upload open batches within shutdown.drain_timeout_s, then exit 0 (all
# uploaded) or 3 (batches kept in the spool). Give the container more than twice that long to
# stop (docker stop --time, Compose stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["s3batchd"]
CMD ["serve", "--config", "/etc/s3batchd/config.toml"]
