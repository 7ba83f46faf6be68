"""colposcopy-gateway: judges colposcopy photo quality on the clinic LAN and answers devices over MQTT."""

__version__ = "0.1.0"
