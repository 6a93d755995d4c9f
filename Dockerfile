# The reference backend: `python -m backend`, the command the tests and the demo run.
# Small (slim base, no build tools in the final image) and non-root.
#   docker build -t ws-coordinator .
#   docker run -p 8080:8080 -e COORD_REDIS_URL=redis://host.docker.internal:6379/0 ws-coordinator

FROM python:3.11-slim AS build
WORKDIR /src
# A virtualenv built here and copied whole: no build tools in the final image, and no
# BuildKit-only syntax, so Cloud Build's classic `docker build` (gcloud builds submit)
# builds it as well as docker compose does. The pinned dependencies come first (their
# layer is rebuilt only when the lock changes), then the library, without dependencies.
COPY requirements.lock ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md ./
COPY coordinator ./coordinator
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . && /opt/venv/bin/pip check

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8080
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
# The reference service is not installed: it runs from here, as from the repository's
# root. Its files stay root's (read-only to the service), compiled ahead of time since
# the service writes no bytecode.
WORKDIR /app
COPY backend ./backend
RUN python -m compileall -q backend
USER 10001
EXPOSE 8080
# Exec form: Python is PID 1 and receives SIGTERM itself, so the drain runs.
CMD ["python", "-m", "backend"]
