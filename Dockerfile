# The broker: python:3.11 on Debian bookworm with SoftHSM2 (dev/test token; production mounts a
# real HSM's PKCS#11 module instead). Runs as the unprivileged user "broker".
#   docker build -t broker .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends softhsm2 opensc ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid broker --home-dir /var/lib/broker --shell /usr/sbin/nologin broker \
    && install -d -o broker -g broker -m 0700 /var/lib/broker /var/lib/broker-hsm \
    && install -d -o broker -g broker -m 0755 /var/lib/peer-config

WORKDIR /opt/broker
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY protos ./protos
COPY softhsm ./softhsm
COPY deploy/token-init.sh ./deploy/token-init.sh
RUN pip install . && chmod 0755 softhsm/init-token.sh deploy/token-init.sh

USER broker
# SoftHSM reads its configuration once per process; token-init writes it on the shared volume.
ENV SOFTHSM2_CONF=/var/lib/broker-hsm/softhsm2.conf
EXPOSE 8443 50051
ENTRYPOINT ["broker"]
CMD ["serve", "--config", "/etc/broker/broker.toml"]
