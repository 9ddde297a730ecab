# Print a tick every two seconds; exit at once on SIGTERM.
trap 'exit 0' TERM INT
while true; do
  echo "ticker v1 tick"
  sleep 2 & wait $!
done
