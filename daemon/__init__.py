"""seqae daemon: Kafka in, scored windows and alerts out to InfluxDB."""
