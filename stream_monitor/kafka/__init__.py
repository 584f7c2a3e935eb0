"""Kafka edge: the only part of stream-monitor that talks to Kafka."""
