# Helpers shared by the shell tests. Source it from the repository's top directory, then
# call `test_init NAME`:
#
#   cd "$(dirname "$0")/../.." && . tests/lib.sh && test_init import
#
# test_init sets `bin` (the binaries: $SNAPSHOTD_BIN or the debug build), `t` (a fresh
# directory under /tmp, or under test_init's second argument; removed at exit unless
# KEEP=1) and `pids` (processes to stop at
# exit), and installs traps: at exit, every pid is stopped, everything mounted under $t is
# unmounted and $t removed; a failing command (ERR) fails the test with its line.
# A test may set `logs` (files whose tail `fail` prints) and define `at_cleanup` and
# `at_fail` (run first in the cleanup, and after the logs on a failure).

test_init() { # NAME [PARENT]
  test_name=$1
  bin=${SNAPSHOTD_BIN:-$(swift build --show-bin-path)}
  t=$(mktemp -d "${2:-/tmp}/snapshotd-$1-XXXXXX")
  pids=() logs=()
  trap test_cleanup EXIT
  trap 'fail "\"$BASH_COMMAND\" exited $? at line $LINENO${FUNCNAME:+ (in ${FUNCNAME[*]}; lines ${BASH_LINENO[*]})}"' ERR
}

test_cleanup() {
  set +e
  trap - ERR
  if declare -F at_cleanup >/dev/null; then at_cleanup; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  unmount_under "$t"
  # The short aliases of roots under $t that daemons made (/run/sd/<6 hex>, and their marks).
  for alias in /run/sd/*; do
    case $(readlink "$alias" 2>/dev/null) in "$t"/*) rm -rf "$alias" "$alias.volatile" ;; esac
  done
  if [ -n "${KEEP:-}" ]; then echo "$test_name: kept $t" >&2; else rm -rf "$t"; fi
}

# unmount_under DIR: lazily unmounts everything mounted at or below DIR, deepest first.
unmount_under() {
  { grep -o " $1[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m"; done
}

# fail MESSAGE: ends the test. Outside a $(...) subshell it also prints the logs' tails.
fail() {
  echo "$test_name: FAIL: $*" >&2
  if ((BASH_SUBSHELL == 0)); then
    for log in "${logs[@]}"; do
      if [ -s "$log" ]; then echo "--- tail of $log" >&2; tail -40 "$log" | cut -c1-400 >&2; fi
    done
    if declare -F at_fail >/dev/null; then at_fail; fi
  fi
  exit 1
}

# expect_exit CODE COMMAND...: runs COMMAND, stdout in $t/out and stderr in $t/err, and
# fails unless it exits CODE.
expect_exit() {
  local want=$1 got=0
  shift
  "$@" >"$t/out" 2>"$t/err" || got=$?
  [ "$got" = "$want" ] || fail "'$*' exited $got, expected $want: $(cat "$t/err")"
}

# eventually [-t SECONDS] COMMAND...: polls COMMAND for up to SECONDS (10); its status is
# the last try's.
eventually() {
  local tries=100 i
  if [ "$1" = -t ]; then tries=$(($2 * 10)); shift 2; fi
  for ((i = 0; i < tries; i++)); do "$@" && return; sleep 0.1; done
  "$@"
}

# start_daemon ROOT SOCKET LOG [ARGS...]: starts snapshotd in the background (its pid in
# `pids` and `daemon_pid`) and waits until it answers.
start_daemon() {
  "$bin/snapshotd" --root "$1" --address "$2" "${@:4}" >>"$3" 2>&1 &
  daemon_pid=$!
  pids+=("$daemon_pid")
  for _ in $(seq 600); do
    "$bin/snapctl" --address "$2" list >/dev/null 2>&1 && return
    kill -0 "$daemon_pid" 2>/dev/null || fail "snapshotd exited at start: $(tail -3 "$3")"
    sleep 0.05
  done
  fail "snapshotd did not answer on $2 within 30 s"
}

# snapctl ARGS...: snapctl talking to the daemon on $sock.
snapctl() { "$bin/snapctl" --address "$sock" "$@"; }
