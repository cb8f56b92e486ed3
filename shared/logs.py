"""Logging set-up: one JSON object per line in production, readable lines in a terminal.

Handlers pass ids as ``extra={"message_id": ..., "install_id": ...}``; those keys appear in both formats.
Image bytes and secrets are never passed to loggers.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from shared.settings import CommonSettings, LogFormat

CONTEXT_KEYS = ("message_id", "install_id", "event_type", "run_id", "version", "reason", "delivery")


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{key}={getattr(record, key)}" for key in CONTEXT_KEYS if hasattr(record, key))
        return f"{line} {context}" if context else line


def configure_logging(settings: CommonSettings, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format is LogFormat.JSON:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(_TextFormatter(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # aio-pika logs every publish at DEBUG with the message body: keep it quiet even when we debug.
    logging.getLogger("aio_pika").setLevel(max(logging.INFO, root.level))
    logging.getLogger("aiormq").setLevel(max(logging.INFO, root.level))
