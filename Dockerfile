# One image recipe for every service; EXTRAS picks the service's dependency group from pyproject.toml.
# Set PIP_EXTRA_INDEX_URL to a CPU-only PyTorch wheel index to keep the trainer image small.
FROM python:3.11-slim

ARG EXTRAS=""
ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY shared ./shared
COPY services ./services
COPY migrations ./migrations
RUN if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; else pip install .; fi \
    && useradd --system --uid 10001 warp && mkdir -p /var/lib/warp/hub && chown warp /var/lib/warp/hub
USER warp
