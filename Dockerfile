# The broker image, in two stages:
#   build    wheels of every runtime dependency, exactly as requirements/runtime.lock pins them
#            (hash-checked), and the wheel of this distribution (dome-token-broker)
#   runtime  python:3.11 slim + softhsm2/opensc (dev/test token; production mounts a real HSM's
#            PKCS#11 module instead), the wheels installed offline; no compiler, no grpcio-tools,
#            no source tree. Runs as the unprivileged user "broker" (uid/gid 10001).
#   docker build -t broker .
# tests/deploy/test_image_replay.py replays both stages' pip commands in a clean venv.
#
# Base image pinned by the digest of its multi-platform index: python:3.11-slim-bookworm as
# docker-library/repo-info records it (repos/python/remote/3.11-slim-bookworm.md at commit
# 33a22f41ac7b; Python 3.11.16, built 2026-08-25). Not pulled from here (no registry access):
# refresh it with `docker buildx imagetools inspect python:3.11-slim-bookworm`.
ARG BASE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip wheel --require-hashes --wheel-dir /wheels -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends softhsm2 opensc ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid broker --home-dir /var/lib/broker --shell /usr/sbin/nologin broker \
    && install -d -o broker -g broker -m 0700 /var/lib/broker /var/lib/broker-hsm /var/lib/broker-dev-client \
    && install -d -o broker -g broker -m 0755 /var/lib/peer-config

COPY requirements/runtime.lock /tmp/runtime.lock
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels --require-hashes -r /tmp/runtime.lock \
    && pip install --no-index --no-deps /wheels/dome_token_broker-*.whl \
    && rm /tmp/runtime.lock

WORKDIR /opt/broker
COPY softhsm ./softhsm
COPY deploy/token-init.sh deploy/healthcheck.py ./deploy/
RUN chmod 0755 softhsm/init-token.sh deploy/token-init.sh

USER 10001:10001
# SoftHSM reads its configuration once per process; token-init writes it on the shared volume.
ENV SOFTHSM2_CONF=/var/lib/broker-hsm/softhsm2.conf
EXPOSE 8443 50051
# gRPC health (grpc.health.v1) over mTLS with the dev client certificate token-init issues and the
# CA of the server certificate (deploy/healthcheck.py; deploy/README.md "Health check").
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=4 \
    CMD ["python", "/opt/broker/deploy/healthcheck.py"]
ENTRYPOINT ["broker"]
CMD ["serve", "--config", "/etc/broker/broker.toml"]
