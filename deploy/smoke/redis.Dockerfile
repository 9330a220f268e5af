# Redis from Debian's package, for deploy/smoke.sh on a machine without a registry
# (production uses the official image named in compose.yaml).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data
WORKDIR /data
CMD ["redis-server"]
