# scripts/leftovers.bash: sourced by scripts/test and scripts/soak (not run on its own).
#
# Every process a run starts inherits ZKRENDER_TEST_RUN=$run_id (the caller sets run_id and
# exports the variable to cargo); once cargo is done, any process still carrying it outlived
# its test. check_leftovers NAME gives servers stopped on drop a few seconds, then names
# those still alive on stderr (as "NAME: error: ..."), sends them SIGKILL and returns 1.

# Pids of the live processes whose environment carries this run's marker.
marked() {
  local environ pid
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    if grep -qzx "ZKRENDER_TEST_RUN=$run_id" "$environ" 2>/dev/null; then
      printf '%s\n' "$pid"
    fi
  done
}

check_leftovers() {
  local name=$1 left tries=0
  left=$(marked)
  while [[ -n $left ]] && ((tries < 20)); do
    sleep 0.5
    tries=$((tries + 1))
    left=$(marked)
  done
  [[ -n $left ]] || return 0
  printf '%s: error: processes started by the tests outlived them:\n' "$name" >&2
  # shellcheck disable=SC2086 # one pid a word
  ps -o pid=,ppid=,pgid=,etime=,args= -p "$(printf '%s' "$left" | paste -sd,)" >&2 || true
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
  return 1
}
