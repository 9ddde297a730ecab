# Print a line every two seconds; exit at once on SIGTERM.
trap 'exit 0' TERM INT
while true; do
  echo "extras: up"
  sleep 2 & wait $!
done
