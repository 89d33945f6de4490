#!/usr/bin/env bash
# The compose brokers' command (apache/kafka image). `sensorcast deploy kafka-config` wrote this node's
# secured server.properties and its storage-format @argument file, which carries the admin's SCRAM
# login: Kafka's storage tool takes a password only as an argument, and a file of mode 600 keeps it off
# every command line. Format once (the data volume keeps it), delete that file, run the broker.
set -euo pipefail
node="${SENSORCAST_KAFKA_NODE:?set SENSORCAST_KAFKA_NODE: kafka, kafka-1, kafka-2 or kafka-3}"
conf="${SENSORCAST_KAFKA_CONFIG_DIR:-/etc/sensorcast/kafka}"
home="${KAFKA_HOME:-/opt/kafka}"
props="$conf/$node.properties"
args="$conf/$node.format.args"
data="$(sed -n 's/^log\.dirs=//p' "$props")"
if [ ! -f "$data/meta.properties" ]; then
  [ -f "$args" ] || { echo "no $args: run \`sensorcast deploy kafka-config\` first" >&2; exit 1; }
  java -cp "$home/libs/*" "@$args"
fi
rm -f "$args"
exec "$home/bin/kafka-server-start.sh" "$props"
