# Start and stop a private Docker engine on a socket under a folder of our own, so that
# tests and the demo never touch (or depend on) a system daemon. Sourced by scripts.
#
# Each engine gets an address pool of its own (10.N.0.0/16, N free on this machine) and no
# default bridge, and its bridges are deleted when it stops: bridge interfaces outlive the
# daemon that made them, and engines sharing Docker's default pools run out of addresses.

# _free_pool_octet: a second octet N such that no interface has an address in 10.N.0.0/16.
_free_pool_octet() {
  local used n
  used=$(ip -o -4 addr show 2>/dev/null | awk '{print $4}' | awk -F. '$1 == "10" {print $2}' | sort -u)
  for n in $(shuf -i 100-250 -n 150); do
    grep -qx "$n" <<<"$used" || { echo "$n"; return 0; }
  done
  echo "no free 10.N.0.0/16 address pool left on this machine" >&2
  return 1
}

# start_dockerd DIR: start dockerd with its data, exec root, socket and log under DIR and
# wait until it answers. Prints nothing on success; on failure shows the log and returns 1.
start_dockerd() {
  local dir=$1 octet
  mkdir -p "$dir"
  octet=$(_free_pool_octet) || return 1
  echo "$octet" > "$dir/pool-octet"
  setsid dockerd --data-root "$dir/root" --exec-root "$dir/exec" \
    -H "unix://$dir/docker.sock" --pidfile "$dir/dockerd.pid" \
    --bridge none --default-address-pool "base=10.$octet.0.0/16,size=24" \
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

# stop_dockerd DIR: stop the dockerd started by start_dockerd DIR, wait for it to exit, and
# delete the bridges it left behind.
stop_dockerd() {
  local dir=$1 pid i
  if [ -f "$dir/dockerd.pid" ]; then
    pid=$(cat "$dir/dockerd.pid")
    if kill -TERM "$pid" 2>/dev/null; then
      for i in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  if [ -f "$dir/pool-octet" ]; then
    local octet
    octet=$(cat "$dir/pool-octet")
    ip -o -4 addr show 2>/dev/null | awk -v net="10.$octet." '$2 ~ /^br-/ && index($4, net) == 1 {print $2}' \
      | sort -u | xargs -r -n1 ip link del 2>/dev/null || true
  fi
}
