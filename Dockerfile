# perdured, the Perdure sidecar. Configure it with PERDURE_* variables, e.g.:
#   docker run -e PERDURE_DATABASE_URL=postgresql://user:pass@db:5432/app perdure
# Run it beside your app container (same pod or network namespace): it listens on loopback.
# With no PERDURE_DATABASE_URL it starts an embedded PostgreSQL in /var/lib/perdure.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY migrations ./migrations
COPY sidecar ./sidecar
COPY sdk_python ./sdk_python
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[fast]"

FROM python:3.12-slim
RUN useradd --system --create-home --home-dir /var/lib/perdure --uid 10001 perdure
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER perdure
WORKDIR /var/lib/perdure
ENV PYTHONUNBUFFERED=1 \
    GRPC_ENABLE_FORK_SUPPORT=false \
    PERDURE_LISTEN=127.0.0.1:7433 \
    PERDURE_LOG_FORMAT=json \
    PERDURE_DATA_DIR=/var/lib/perdure
VOLUME ["/var/lib/perdure"]
EXPOSE 7433
# The standard gRPC health service, asked from inside the container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s CMD ["perdured", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["perdured"]
