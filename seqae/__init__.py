"""seqae: LSTM sequence-autoencoder anomaly detection for industrial sensor streams.

Windows in, scores out: the library knows nothing of Kafka or InfluxDB.
"""

__version__ = "0.1.0"
