# tidegate's image: Debian (bookworm) with Python 3.11, run as an unprivileged user.
# Built and run by compose.yaml; not built on the development machine (no Docker there).

# The web UI's two libraries, from the npm registry at the versions package-lock.json pins.
FROM node:20-bookworm-slim AS web-assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TIDEGATE_HOME=/var/lib/tidegate
WORKDIR /src
COPY pyproject.toml requirements.lock ./
COPY tidegate ./tidegate
COPY --from=web-assets /assets/node_modules/@picocss/pico/css/pico.min.css /assets/node_modules/chart.js/dist/chart.umd.js ./tidegate/web/static/vendor/
# requirements.lock pins the whole tree (test tools included): used as constraints, it pins the
# server's dependencies without installing the test tools.
RUN pip install --constraint requirements.lock . && rm -rf /src
# The home (SQLite, audit journal, metrics, secrets) belongs to the server's user alone; the
# data directory exists in the image so that a volume mounted there (compose.yaml shares one
# between nodes) gets the user's ownership.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/tidegate --no-create-home tidegate \
    && install -d -m 0700 -o tidegate -g tidegate /var/lib/tidegate /var/lib/tidegate/data
USER tidegate
WORKDIR /var/lib/tidegate
EXPOSE 8000
# Alive = /healthz (no dependency checked); the load balancer asks /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["tidegate", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
