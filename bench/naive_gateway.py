"""The baseline the benchmark compares against: the gateway most people would write first.

Everything happens inside paho's message callback, on the network thread: a full-size ``cv2.imdecode`` and one
photo's inference with the same models and policy as the real gateway, then the verdict is published. No worker
pool, no reduced-size decode, no queue: while one photo is judged, nothing else moves.

    python bench/naive_gateway.py --broker mqtt://127.0.0.1:1883 [--config FILE]
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import load_config
from gateway.judge import PhotoRequest, build_judge
from gateway.protocol import Topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args()
    # the largest analysis size there is: every photo is decoded at full resolution
    config = load_config(args.config, {"decode": {"analysis_long_side": 8192}})
    judge = build_judge(config)
    topics = Topics(config.topic_prefix)

    def on_message(client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = topics.parse_image_topic(msg.topic)
        props = msg.properties
        image_id = next(v for k, v in props.UserProperty if k == "image-id")
        judged = judge.judge(PhotoRequest(parsed.site, parsed.device, image_id, bytes(msg.payload)))
        reply = Properties(PacketTypes.PUBLISH)
        reply.CorrelationData = props.CorrelationData
        client.publish(props.ResponseTopic, judged.verdict.to_json(), qos=1, properties=reply)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="naive-gateway", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe([(f"{config.topic_prefix}/+/+/images", 1)])
    client.on_subscribe = lambda *_: print("subscribed", flush=True)
    url = urlsplit(args.broker)
    client.connect(url.hostname or "127.0.0.1", url.port or 1883)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
