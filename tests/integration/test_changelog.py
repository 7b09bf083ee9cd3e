"""The changelog on the real Kafka of deploy/local: the topic it creates, where states go and
what a read returns."""

from __future__ import annotations

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from daemon.changelog import Changelog, ChangelogError
from daemon.settings import KafkaSettings

pytestmark = pytest.mark.integration


def state(asset: str, partition: int, last_end: int) -> dict:
    return {"asset": asset, "partition": ["sensors", partition], "last_end_ns": last_end}


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_created_compacted_states_in_their_partition_newest_wins(
    kafka_bootstrap: str, unique_topic: str, client: str
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=[kafka_bootstrap],
        group_id=f"g {unique_topic}",
        connect_timeout_s=30,
        client=client,  # type: ignore[arg-type]
    )
    assert settings.changelog == f"g_{unique_topic}-seqae-changelog"  # a legal topic name
    log = Changelog(settings)
    try:
        log.ensure(3)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            configs = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, settings.changelog)]
            )["topic"][settings.changelog]
            partitions = admin.describe_topics([settings.changelog])[0]["partitions"]
        finally:
            admin.close()
        assert configs["cleanup.policy"]["value"] == "compact"
        assert len(partitions) == 3
        assert log.read({0, 1, 2}) == {}
        log.write({"pump-1": state("pump-1", 2, 10), "pump-3": state("pump-3", 0, 5)})
        log.write({"pump-1": state("pump-1", 2, 20)})
        assert {a: s["last_end_ns"] for a, s in log.read({2}).items()} == {"pump-1": 20}
        both = log.read({0, 2})
        assert {a: s["last_end_ns"] for a, s in both.items()} == {"pump-1": 20, "pump-3": 5}
        assert log.records_written == 3 and log.bytes_written > 0
        other = Changelog(settings)  # another member, whose input topic has more partitions
        try:
            with pytest.raises(ChangelogError, match="has 3 partitions, the input topics 5"):
                other.ensure(5)
        finally:
            other.close()
    finally:
        log.close()
