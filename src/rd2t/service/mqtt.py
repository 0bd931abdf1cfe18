"""Verdicts out to MQTT: one small JSON message per inspection, QoS 1.

paho-mqtt's network loop runs in its own thread and reconnects by itself (1 s .. 30 s back-off);
`publish` only queues the message, so an absent broker never slows an inspection. Messages published
while the broker is away wait in paho's queue (bounded) and go out after the reconnect.
"""

from __future__ import annotations

import json
import logging

import paho.mqtt.client as mqtt

from rd2t.service.settings import mqtt_target

log = logging.getLogger("rd2t.service")
MAX_QUEUED = 10_000


def message(record: dict) -> dict:
    """The MQTT payload: the verdict and where it came from (no images, no links)."""
    return {
        "id": record["id"],
        "time": record["time"],
        "score": record["score"],
        "decision": record["decision"],
        "threshold": record["threshold"],
        "model_id": record["model"]["id"],
        "part_id": record["part_id"],
        "line": record["line"],
        "station": record["station"],
        "image_sha256": record["image_sha256"],
    }


class Publisher:
    def __init__(self, url: str, client_id: str = ""):
        host, port, self.topic, user, password = mqtt_target(url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if user:
            self.client.username_pw_set(user, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.max_queued_messages_set(MAX_QUEUED)
        self.client.on_connect = lambda c, u, f, rc, p: log.info(
            "mqtt: connected to %s:%s (%s)", host, port, rc
        )
        self.client.on_disconnect = lambda c, u, f, rc, p: log.warning("mqtt: disconnected (%s)", rc)
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    def publish(self, record: dict) -> None:
        try:
            self.client.publish(self.topic, json.dumps(message(record)), qos=1)
        except Exception as e:  # never let the broker fail an inspection
            log.warning("mqtt: could not queue inspection %s (%s)", record.get("id"), e)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
