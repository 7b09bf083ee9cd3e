"""seqae: LSTM sequence-autoencoder anomaly detection for industrial sensor streams.

Windows in, scores out: the library knows nothing of Kafka or InfluxDB.
"""

import os

# In its default mode MKL may take another code path for the same call from one run to the
# next: a backtest of one history, rerun on a loaded machine, scored windows a few float32 ulps
# apart. Conditional numerical reproducibility (strict: whatever the alignment or thread
# count) keeps the CPU's own instruction set and cost nothing measurable in bench_scoring.
# MKL reads it at its first call: it must be set before torch computes anything.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
