# A busy disk for the benchmarks' --busy mode (sourced): a background writer on the same disk
# doing fsync-heavy I/O at a fixed rate, as other tenants of a node's disk do.
#   busy_start DIR   starts it (fio: 16 KiB sequential writes, an fsync after each, 8 MiB/s,
#                    into DIR/busy-disk.dat); busy_stop stops it; busy_describe says what runs.
# The rate is fixed so every contender meets the same load; /proc/pressure/io is sampled at
# the stop for the report.
busy_pid=
busy_dir=
busy_rate=${SNAPSHOTD_BUSY_RATE:-8m}
busy_start() {
  busy_dir=$1
  command -v fio >/dev/null || { echo "fio is missing (scripts/install-deps installs it)" >&2; return 1; }
  fio --name=busy --filename="$busy_dir/busy-disk.dat" --rw=write --bs=16k --size=1g --fsync=1 \
    --rate="$busy_rate" --ioengine=psync --time_based --runtime=86400 --output=/dev/null >/dev/null 2>&1 &
  busy_pid=$!
  sleep 2
}
busy_stop() {
  [ -n "$busy_pid" ] || return 0
  busy_pressure=$(awk '/^some/ { print $3 }' /proc/pressure/io | cut -d= -f2)
  kill "$busy_pid" 2>/dev/null; wait "$busy_pid" 2>/dev/null || true
  busy_pid=
  rm -f "$busy_dir/busy-disk.dat"
}
busy_describe() {
  echo "Busy disk: fio writing 16 KiB blocks with an fsync after each at $busy_rate/s on the same disk (/proc/pressure/io \"some\" avg60 ${busy_pressure:-(still running)}% when it stopped)."
}
