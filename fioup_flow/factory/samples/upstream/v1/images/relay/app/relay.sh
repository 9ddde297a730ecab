# Print a line every two seconds; exit at once on SIGTERM (the factory's own image).
trap 'exit 0' TERM INT
while true; do
  echo "upstream relay v1"
  sleep 2 & wait $!
done
