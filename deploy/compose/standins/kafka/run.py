"""Start a KRaft broker from KAFKA_* variables, as apache/kafka's entrypoint does."""

import os
import shlex
import subprocess
import sys

CONFIG = "/opt/kafka/config/server.properties"
JAVA = ["java", "-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties",
        "-cp", "/opt/kafka/libs/*"]  # fmt: skip
# Variables of the image's own that are not broker properties (as upstream leaves them out).
NOT_PROPERTIES = {
    "KAFKA_HEAP_OPTS", "KAFKA_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS",
    "KAFKA_JMX_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_VERSION",
}  # fmt: skip


def property_name(variable: str) -> str:
    """KAFKA_LOG_DIRS -> log.dirs; `__` stands for `_` and `___` for `-`."""
    name = variable.removeprefix("KAFKA_").lower()
    return name.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def main() -> int:
    props = {
        property_name(k): v
        for k, v in sorted(os.environ.items())
        if k.startswith("KAFKA_") and k not in NOT_PROPERTIES
    }
    with open(CONFIG, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in props.items())
    cluster_id = os.environ["CLUSTER_ID"]
    fmt = [*JAVA, "kafka.tools.StorageTool", "format", "--ignore-formatted",
           "-t", cluster_id, "-c", CONFIG]  # fmt: skip
    if subprocess.call(fmt) != 0:
        print("kafka stand-in: storage format failed", file=sys.stderr)
        return 1
    heap = shlex.split(os.environ.get("KAFKA_HEAP_OPTS", ""))
    os.execvp("java", ["java", *heap, *JAVA[1:], "kafka.Kafka", CONFIG])


if __name__ == "__main__":
    sys.exit(main())
