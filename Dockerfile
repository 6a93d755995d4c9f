# syntax=docker/dockerfile:1
# The reference backend: `python -m backend`, the command the tests and the demo run.
# Small (slim base, wheels only, no build tools in the final image) and non-root.
#   docker build -t ws-coordinator .
#   docker run -p 8080:8080 -e COORD_REDIS_URL=redis://host.docker.internal:6379/0 ws-coordinator

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY coordinator ./coordinator
COPY backend ./backend
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8080
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install /wheels/*.whl \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER 10001
EXPOSE 8080
# Exec form: Python is PID 1 and receives SIGTERM itself, so the drain runs.
CMD ["python", "-m", "backend"]
