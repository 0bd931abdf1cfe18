"""The inspection station: `rd2t serve` (HTTP service) and `rd2t watch` (a folder), one results database.

    bytes --Station.inspect--> Predictor (the code `rd2t predict` runs) --> files (atomic, by SHA-256)
          --> one committed row --> answer / MQTT / live page

Needs the `station` extra (FastAPI, uvicorn, SQLAlchemy, Alembic, psycopg, paho-mqtt, prometheus-client).
"""

from rd2t.service.settings import StationSettings

__all__ = ["StationSettings"]
