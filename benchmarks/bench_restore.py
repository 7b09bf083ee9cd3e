"""State restore time from the changelog, per 1,000 and more assets, on the real Kafka of
deploy/local: one fitted asset state (PCA profile of the integration tests, 5 channels) is
copied under N asset ids into a fresh changelog topic; then a core restores them all.

    python benchmarks/bench_restore.py [--assets 1000 10000] [--bootstrap 127.0.0.1:19092]

Prints, per N: bytes per state, the read from Kafka and the restore into the core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from daemon.backtest import readings  # noqa: E402
from daemon.changelog import Changelog, encode_state  # noqa: E402
from daemon.core import StreamCore  # noqa: E402
from daemon.engine import ProfileRegistry  # noqa: E402
from daemon.settings import DaemonSettings, KafkaSettings  # noqa: E402
from seqae.synth import generate_asset  # noqa: E402
from seqae.train import train_profile  # noqa: E402

TP = ("sensors", 0)


def core_for(models: Path, state_dir: Path) -> StreamCore:
    settings = DaemonSettings.model_validate(
        {
            "state_dir": str(state_dir),
            "profiles": {
                "models_root": str(models),
                "routes": [{"pattern": "*", "profile": "pumps"}],
            },
            "baselines": {"mode": "per_asset", "warmup_windows": 30},
            "engine": {"device": "cpu"},
        }
    )
    return StreamCore(settings, ProfileRegistry(models, ["pumps"], "cpu", "never"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        history = [generate_asset(f"pump-{i}", 2000, seed=0, plant_seed=0)[0] for i in (1, 2)]
        train_profile(
            history,
            models_root=root / "models",
            profile="pumps",
            window=20,
            hop=5,
            kind="pca",
            progress=False,
            device="cpu",
        )
        source = core_for(root / "models", root / "a")
        for offset, reading in enumerate(readings([history[0]])):
            source.add(reading, TP, offset)
        list(source.score(everything=True, wait=True))
        state = source.asset_state("pump-1")
        source.close()
        for n in args.assets:
            kafka = KafkaSettings(
                bootstrap_servers=[args.bootstrap],
                group_id=f"bench-restore-{uuid.uuid4().hex[:8]}",
                connect_timeout_s=30,
                call_timeout_s=60,
            )
            log = Changelog(kafka)
            log.ensure(1)
            states = {f"asset-{i:06d}": dict(state, asset=f"asset-{i:06d}") for i in range(n)}
            for start in range(0, n, 5000):
                chunk = dict(list(states.items())[start : start + 5000])
                log.write(chunk)
            t0 = time.perf_counter()
            read = log.read({0})
            t1 = time.perf_counter()
            core = core_for(root / "models", root / f"b{n}")
            failed = core.restore_assets(read)
            t2 = time.perf_counter()
            assert len(read) == n and not failed, (len(read), failed[:1])
            size = len(encode_state(state))
            print(
                f"{n:7d} assets, {size} B/state: read {t1 - t0:6.2f} s "
                f"({(t1 - t0) / n * 1e6:.0f} us per asset), "
                f"restore into the core {t2 - t1:6.2f} s; per 1,000 assets "
                f"{(t2 - t0) / n * 1000:.2f} s"
            )
            core.close()
            log.close()


if __name__ == "__main__":
    main()
