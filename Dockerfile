# Trainwire image: the server and the worker run from it with different commands.
# Build stage: build a wheel of the project (and its dependencies) with the build tools present.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY engine engine
COPY server server
COPY client client
COPY migrations migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres]"

# Final stage: only the wheels installed, no compilers, a non-root user.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 trainwire
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER trainwire
WORKDIR /home/trainwire
ENV TRAINWIRE_HOST=0.0.0.0 \
    TRAINWIRE_PORT=50051 \
    PYTHONUNBUFFERED=1
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["trainwire", "health"]
# By default the whole service in one container, on embedded SQLite in the home folder:
#   docker run --stop-timeout 75 -e TRAINWIRE_ALLOW_OPEN_PUBLIC=true -p 127.0.0.1:50051:50051 trainwire
# (--stop-timeout: Docker's 10 s would kill the embedded workers before they checkpoint; it must
# outlast TRAINWIRE_STOP_TIMEOUT_S, 60 s by default, and the server's own grace)
# (without API keys it refuses to listen on 0.0.0.0 unless told to). docker-compose.yml runs the
# server and the workers as services of their own on PostgreSQL.
CMD ["trainwire", "serve"]
