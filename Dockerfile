# sensortasks: the API and dispatcher (`sensortasks serve`), or the simulator.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# dev-certs needs openssl (ca-certificates brings it into the slim image); the compose scripts
# are docker-compose.yml's init and serve steps.
COPY scripts/dev-certs scripts/compose-init scripts/compose-serve ./scripts/
RUN pip install . && useradd --system --home /data sensortasks && mkdir -p /data && chown sensortasks /data
USER sensortasks
WORKDIR /data
ENV SENSORTASKS_HTTP_HOST=0.0.0.0 \
    SENSORTASKS_DATABASE_URL=sqlite+aiosqlite:////data/sensortasks.db
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
ENTRYPOINT ["sensortasks"]
CMD ["serve"]
