# stream-monitor: the monitor and its command line. Dependencies are installed at build time; it runs as a
# non-root user. Mount your config at /etc/stream-monitor/config.yaml (and reference artifacts next to it).
#   docker build -t stream-monitor .
#   docker run --rm -v $PWD/config:/etc/stream-monitor:ro -e KAFKA_BOOTSTRAP_SERVERS=broker:9092 stream-monitor
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream_monitor ./stream_monitor
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /var/lib/stream-monitor --create-home monitor
USER 10001
WORKDIR /var/lib/stream-monitor
COPY config/example.yaml /etc/stream-monitor/config.yaml

EXPOSE 9108
STOPSIGNAL SIGTERM
ENTRYPOINT ["stream-monitor"]
CMD ["run", "--config", "/etc/stream-monitor/config.yaml"]
