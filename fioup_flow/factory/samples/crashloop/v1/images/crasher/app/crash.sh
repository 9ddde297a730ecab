# Run a second, then exit 1 (CRASH=yes), or keep running (CRASH=no); exit at once on SIGTERM.
trap 'exit 0' TERM INT
if [ "$CRASH" = "yes" ]; then
  echo "crasher: starting, and failing in a second"
  sleep 1 & wait $!
  exit 1
fi
while true; do
  echo "crasher: up"
  sleep 2 & wait $!
done
