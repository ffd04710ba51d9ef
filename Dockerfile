# One image for every llmq process; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LLMQ_VAR_DIR=/app/var

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY llmq ./llmq
RUN pip install . && useradd --create-home --uid 10001 llmq && mkdir -p /app/var/files && chown -R llmq /app/var

USER llmq
EXPOSE 8000 5555
CMD ["llmq", "api"]
