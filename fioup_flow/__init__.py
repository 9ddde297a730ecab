"""fioup-flow: over-the-air updates of Docker Compose apps as a durable, resumable task graph."""

__version__ = "0.1.0"
