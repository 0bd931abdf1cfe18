"""Verdicts out to MQTT: one small JSON message per inspection, QoS 1, and the station's state.

paho-mqtt's network loop runs in its own thread and reconnects by itself (1 s .. 30 s back-off);
`publish` only queues the message, so an absent broker never slows an inspection. Messages published
while the broker is away wait in paho's queue (bounded) and go out after the reconnect.

`<topic>/status` (retained) tells a line controller whether the station is there to judge parts:
"online" with the model in use at each connect and after a model reload, "offline" when it stops, and,
as the connection's Last Will that the broker itself publishes, "offline" when the process dies or the
network drops (the standard MQTT birth and death pattern).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone

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


def status(state: str, **fields) -> str:
    at = datetime.now(timezone.utc).isoformat()
    return json.dumps({"state": state, **fields, "at": at})


class Publisher:
    def __init__(self, url: str, client_id: str = "", online: Callable[[], dict] | None = None):
        """`online`: what the station says of itself in its "online" status (the model in use)."""
        host, port, self.topic, user, password = mqtt_target(url)
        self.broker = f"{host}:{port}"  # shown on the Model page: never the credentials
        self.status_topic = f"{self.topic}/status"
        self.online = online or dict
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if user:
            self.client.username_pw_set(user, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.max_queued_messages_set(MAX_QUEUED)
        # Published by the broker when this connection ends without a goodbye (kill -9, power, network).
        lost = status("offline", reason="connection lost")
        self.client.will_set(self.status_topic, lost, qos=1, retain=True)

        def connected(client, userdata, flags, rc, properties) -> None:
            log.info("mqtt: connected to %s:%s (%s)", host, port, rc)
            self.announce()

        self.client.on_connect = connected
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

    def announce(self) -> None:
        """Publish (retained) that the station is online, with what `online` says (the model in use)."""
        try:
            self.client.publish(self.status_topic, status("online", **self.online()), qos=1, retain=True)
        except Exception as e:  # never let the broker fail the station
            log.warning("mqtt: could not queue the status (%s)", e)

    def close(self) -> None:
        """Say "offline" (retained; waits up to 2 s for the broker), then disconnect: a clean stop. With the
        broker away there is nobody to tell now, so no wait (a broker that lost the connection publishes the
        Last Will instead)."""
        try:
            if self.client.is_connected():
                offline = status("offline", reason="stopped")
                self.client.publish(self.status_topic, offline, qos=1, retain=True).wait_for_publish(
                    timeout=2
                )
        except Exception as e:  # the broker went away meanwhile: its Last Will says offline
            log.warning("mqtt: could not say offline (%s)", e)
        self.client.disconnect()
        self.client.loop_stop()
