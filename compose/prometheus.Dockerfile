# Prometheus for compose/esp.yml's `monitoring` profile: the Debian base (no registry) plus Debian's own
# prometheus package. Built by `scripts/build-images.sh --monitoring`; its configuration is mounted from
# compose/prometheus/prometheus.yml.
ARG BASE=esp-debian:bookworm
FROM ${BASE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o prometheus -g prometheus /prometheus
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
