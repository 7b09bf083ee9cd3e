#!/bin/sh
# Kafka's own BrokerApiVersionsCommand, as bin/kafka-broker-api-versions.sh runs it upstream.
exec java -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
    -cp '/opt/kafka/libs/*' org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
