#!/usr/bin/env bash
# Create healthscore's topics (idempotent: existing topics are left alone,
# their configs are not changed). Runs in the apache/kafka image.
#
# Env: BOOTSTRAP, INPUT_PARTITIONS, DLQ_PARTITIONS, REPLICATION_FACTOR,
#      MIN_INSYNC_REPLICAS, INPUT_RETENTION_MS (-1: forever, the default);
#      topic names default to the contract's.
#      COMMAND_CONFIG: a client properties file for a secured cluster, e.g.
#        security.protocol=SASL_SSL
#        sasl.mechanism=SCRAM-SHA-512
#        sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="..." password="...";
#        ssl.truststore.type=PEM
#        ssl.truststore.location=/etc/healthscore/tls/kafka-ca.pem
set -euo pipefail

KT=/opt/kafka/bin/kafka-topics.sh
BOOTSTRAP=${BOOTSTRAP:-kafka:19092}
P=${INPUT_PARTITIONS:-12}
DLQ_P=${DLQ_PARTITIONS:-3}
RF=${REPLICATION_FACTOR:-1}
ISR=${MIN_INSYNC_REPLICAS:-1}
INPUT_RETENTION=${INPUT_RETENTION_MS:--1}
USAGE_TOPIC=${USAGE_TOPIC:-product.usage.v1}
SUPPORT_TOPIC=${SUPPORT_TOPIC:-support.interactions.v1}
PROFILE_TOPIC=${PROFILE_TOPIC:-organization.profile.v1}
ALERT_TOPIC=${ALERT_TOPIC:-customer.churn-risk.v1}
HEALTH_TOPIC=${HEALTH_TOPIC:-customer.health.v1}
DLQ_SUFFIX=${DLQ_SUFFIX:-.dlq}
CLIENT=()
if [ -n "${COMMAND_CONFIG:-}" ]; then
  if [ ! -r "$COMMAND_CONFIG" ]; then
    echo "COMMAND_CONFIG=$COMMAND_CONFIG is not a readable file" >&2
    exit 2
  fi
  CLIENT=(--command-config "$COMMAND_CONFIG")
fi

create() {  # name partitions config...
  local name=$1 partitions=$2
  shift 2
  local args=()
  for c in "$@"; do args+=(--config "$c"); done
  "$KT" --bootstrap-server "$BOOTSTRAP" ${CLIENT[@]+"${CLIENT[@]}"} --create --if-not-exists \
    --topic "$name" --partitions "$partitions" --replication-factor "$RF" \
    --config "min.insync.replicas=$ISR" "${args[@]}"
}

# Inputs, keyed by organization_id and partitioned alike (the consumer that owns
# an organization's usage partition owns its support and profile partitions). Not
# compacted, profiles included: each adds to what the ones before said. Kept forever by
# default: `healthscore replay` rebuilds all state from them, and can only replay what is
# still there; but an erased organization's records (support subjects: free text) stay
# as long (docs/operations.md, "What it cannot remove"). INPUT_RETENTION_MS bounds them,
# and what a replay can rebuild with them.
# max.message.bytes caps what producers can send (the service dead-letters
# anything above MAX_MESSAGE_BYTES, 64 KiB by default); keeping it well under
# the service producer's KAFKA_MAX_REQUEST_BYTES (16 MiB) and the dead-letter
# topics' limit below means a rejected record always fits into the dead-letter
# topic with its headers (one that does not goes without its value, x-value-omitted).
for t in "$USAGE_TOPIC" "$SUPPORT_TOPIC" "$PROFILE_TOPIC"; do
  create "$t" "$P" cleanup.policy=delete "retention.ms=$INPUT_RETENTION" max.message.bytes=524288
done

# Dead letters: the rejected bytes unchanged plus x-error-* headers. Kept 30
# days to inspect and re-drive; max.message.bytes above the input topics' so a
# rejected record of the largest size Kafka accepted still fits with headers.
for t in "$USAGE_TOPIC" "$SUPPORT_TOPIC" "$PROFILE_TOPIC"; do
  create "$t$DLQ_SUFFIX" "$DLQ_P" cleanup.policy=delete retention.ms=2592000000 \
    max.message.bytes=2097152
done

# Churn-risk alerts for the notification service, keyed by organization_id.
create "$ALERT_TOPIC" "$P" cleanup.policy=delete retention.ms=2592000000

# Latest score per organization: compacted. An erasure's tombstone record here is the
# alerts' consumers' one signal to drop the organization: kept as long as the alerts.
create "$HEALTH_TOPIC" "$P" cleanup.policy=compact min.compaction.lag.ms=60000 \
  delete.retention.ms=2592000000

"$KT" --bootstrap-server "$BOOTSTRAP" ${CLIENT[@]+"${CLIENT[@]}"} --describe \
  --topic "$USAGE_TOPIC|$SUPPORT_TOPIC|$PROFILE_TOPIC|$ALERT_TOPIC|$HEALTH_TOPIC|.*\\$DLQ_SUFFIX" \
  | grep -E '^Topic:' || true
