"""seqae daemon: Kafka in, scored windows and alerts out to InfluxDB."""

import seqae  # noqa: F401  (sets MKL's reproducible mode before torch computes anything)
