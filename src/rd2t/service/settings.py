"""Everything a station is started with; one dataclass filled by `rd2t serve` / `rd2t watch` or by tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rd2t.errors import ConfigError


@dataclass
class StationSettings:
    model: Path
    host: str = "127.0.0.1"  # loopback unless the operator says otherwise
    port: int = 8000
    db: str | None = None  # SQLAlchemy URL; default: SQLite file inside `images`
    images: Path = Path("rd2t-station")  # originals, overlays, thumbnails (content-addressed)
    mqtt: str | None = None  # mqtt://host:1883/topic
    token: str | None = None  # default: env RD2T_TOKEN
    backend: str = "auto"  # auto|torch|onnx
    threads: int | None = None  # CPU threads of the model
    workers: int = 2  # scoring threads
    queue: int = 16  # requests waiting for a worker before 503
    max_upload_mb: float = 50.0
    max_pixels: int = 40_000_000  # width * height, checked from the header before decoding
    overlay: str = "lazy"  # lazy: the map stored, the overlay drawn when first viewed; eager: per verdict
    # Retention (off unless set): the image files of unreviewed inspections older than this many days are
    # removed, and, while the images folder's disk has less free space than this, the oldest ones. Rows stay.
    keep_images_days: float | None = None
    min_free_gb: float | None = None

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        self.images = Path(self.images)
        if self.token is None:
            self.token = os.environ.get("RD2T_TOKEN") or None
        if self.workers < 1 or self.queue < 0:
            raise ConfigError(
                f"--workers {self.workers} / --queue {self.queue}: need workers >= 1, queue >= 0"
            )
        if not self.max_upload_mb > 0 or self.max_pixels < 1:
            raise ConfigError("--max-upload-mb and --max-pixels must be positive")
        if self.overlay not in ("eager", "lazy"):
            raise ConfigError(f"--overlay {self.overlay}: expected eager or lazy")
        for flag, value in (
            ("--keep-images-days", self.keep_images_days),
            ("--min-free-gb", self.min_free_gb),
        ):
            if value is not None and not value > 0:
                raise ConfigError(f"{flag} {value:g}: must be positive (leave it out to keep every image)")
        if self.mqtt:
            mqtt_target(self.mqtt)  # refuse a bad URL at start, not at the first verdict

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL; `postgresql://` means psycopg 3 (the driver the station extra installs)."""
        url = self.db or f"sqlite:///{(self.images / 'rd2t.sqlite').resolve()}"
        if url.startswith(("postgresql://", "postgres://")):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url


def mqtt_target(url: str) -> tuple[str, int, str, str | None, str | None]:
    """mqtt://[user:password@]host[:port][/topic] -> (host, port, topic, user, password)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigError(f"--mqtt {url}: expected mqtt://host:1883/topic")
    topic = parts.path.lstrip("/") or "rd2t/inspections"
    return parts.hostname, parts.port or 1883, topic, parts.username, parts.password
