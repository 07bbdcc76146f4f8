# guardbot: the margin guard daemon. Build: docker build -t guardbot .
# Run:   docker run --rm guardbot --help   (the entrypoint is `guardbot`)
#
# No secret is ever copied into the image: account secrets come at run time from the
# environment or from mounted files (docker secrets), the config file is mounted read-only.

# Pinned patch release; in production pin the digest too (python:3.11.13-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what the wheel needs; .dockerignore keeps .venv, tests, caches and local files out.
COPY pyproject.toml README.md LICENSE ./
COPY guardbot ./guardbot
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# GUARDBOT_MIGRATIONS: where `guardbot db upgrade` finds Alembic (guardbot/audit/schema.py).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GUARDBOT_MIGRATIONS=/opt/guardbot/migrations
RUN groupadd --system --gid 10001 guardbot \
    && useradd --system --uid 10001 --gid guardbot --home-dir /var/lib/guardbot \
       --create-home --shell /usr/sbin/nologin guardbot
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-index --find-links /tmp/wheels guardbot && rm -rf /tmp/wheels
COPY migrations /opt/guardbot/migrations

# The state (the SQLite audit log, the audit spool) belongs here: mount a volume and give
# the config absolute paths into it (relative ones are taken from the config's folder).
WORKDIR /var/lib/guardbot
USER guardbot:guardbot
# 9108: /healthz, /readyz, /metrics (bind [health] host = "0.0.0.0" inside a container).
EXPOSE 9108
ENTRYPOINT ["guardbot"]
CMD ["--help"]
