# Start and stop a private Docker engine on a socket under a folder of our own, so that
# tests and the demo never touch (or depend on) a system daemon. Sourced by scripts.

# start_dockerd DIR: start dockerd with its data, exec root, socket and log under DIR and
# wait until it answers. Prints nothing on success; on failure shows the log and returns 1.
start_dockerd() {
  local dir=$1
  mkdir -p "$dir"
  setsid dockerd --data-root "$dir/root" --exec-root "$dir/exec" \
    -H "unix://$dir/docker.sock" --pidfile "$dir/dockerd.pid" \
    >"$dir/dockerd.log" 2>&1 </dev/null &
  local i
  for i in $(seq 1 60); do
    if curl -sf --unix-socket "$dir/docker.sock" http://docker/_ping >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  echo "dockerd did not answer on $dir/docker.sock; its log:" >&2
  tail -n 30 "$dir/dockerd.log" >&2
  return 1
}

# stop_dockerd DIR: stop the dockerd started by start_dockerd DIR and wait for it to exit.
stop_dockerd() {
  local dir=$1 pid
  [ -f "$dir/dockerd.pid" ] || return 0
  pid=$(cat "$dir/dockerd.pid")
  kill -TERM "$pid" 2>/dev/null || return 0
  local i
  for i in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
}
