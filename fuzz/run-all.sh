#!/usr/bin/env bash
# Runs every fuzz target in turn for SECS seconds each (default 600) on one
# core, niced, with the seeds and the JSON dictionary. Findings go to
# artifacts/<target>/, logs to logs/<target>.log.
set -uo pipefail
cd "$(dirname "$0")"
secs=${SECS:-600}
mkdir -p logs
targets=${TARGETS:-"store_ops payload_join_session payload_send_message payload_session_user payload_save_public_key payload_set_session_key payload_file_downloaded"}
for t in $targets; do
  mkdir -p "corpus/$t"
  [ -d "seeds/$t" ] && cp -n seeds/$t/* "corpus/$t/" 2>/dev/null
  dict=""
  [ "$t" != store_ops ] && dict="-dict=dicts/payloads.dict"
  echo "== $t $(date -u +%FT%TZ)" >> logs/summary.log
  nice -n 10 cargo +nightly fuzz run "$t" -s none -a -- -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 $dict \
    > "logs/$t.log" 2>&1
  echo "   exit $? $(date -u +%FT%TZ) $(grep -E '^#[0-9]+.*(DONE|pulse)' logs/$t.log | tail -1)" >> logs/summary.log
done
echo "all done" >> logs/summary.log
