# Write "$MESSAGE <n>" to the shared volume every second (pair v1); exit at once on SIGTERM.
trap 'exit 0' TERM INT
n=0
while true; do
  n=$((n + 1))
  echo "$MESSAGE $n" > /data/message.tmp && mv /data/message.tmp /data/message
  sleep 1 & wait $!
done
