# Print what the producer last wrote, every second (pair v1); exit at once on SIGTERM.
trap 'exit 0' TERM INT
while true; do
  cat /data/message 2>/dev/null
  sleep 1 & wait $!
done
