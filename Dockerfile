# One image for the relay, the example api-server and consumer, and the migrations
# (docker-compose.yml picks the command). Build: docker build -t transactional-outbox .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package first (changes less often than the examples): better layer caching.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[relay,consumer,async,examples]"

COPY examples ./examples

# Run as an unprivileged user.
RUN useradd --system --uid 10001 app
USER app

# The relay by default; compose overrides the command for the other services.
CMD ["python", "-m", "transactional_outbox.relay"]
