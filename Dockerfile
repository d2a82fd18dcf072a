# sidecar: the proxy in a small image. `docker compose up` (docker-compose.yml) runs it
# between the demo primary and a canary; on its own:
#   docker build -t sidecar .
#   docker run -v "$PWD/rules:/etc/sidecar:ro" -p 8080:8080 sidecar
# The rules' primary/server addresses must be reachable from inside the container.

# --- build: the same wheel `pip wheel .` builds on a developer machine -----------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE MANIFEST.in build_hooks.py ./
COPY sidecar ./sidecar
COPY grammar ./grammar
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- run ---------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sidecar
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER sidecar
# 8080: the proxy; 9901: admin (/metrics /healthz /readyz /rules)
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=1)"]
ENTRYPOINT ["sidecar"]
CMD ["serve", "/etc/sidecar", "--listen", "0.0.0.0:8080", "--admin", "0.0.0.0:9901"]
