#!/usr/bin/env bash
# heartbeatd against mosquitto, on this machine, in one run, with one load
# generator (target/release/heartbeat-load, source in benches/load/).
#
#   bash benches/compare.sh            # full run (about 14 minutes)
#   bash benches/compare.sh --quick    # smaller N, shorter steps (under 2 minutes)
#   bash benches/compare.sh --max-n 50000   # the "largest N" row at 50,000 (root
#                                           # raises the fd limit as needed)
#   bash benches/compare.sh --nice -10      # servers and generator at nice -10
#                                           # (root), on a machine others share
#   bash benches/compare.sh --tune-backlog  # root: net.core.netdev_max_backlog
#                                           # 65536 for the run (restored after)
#   bash benches/compare.sh --rt            # root: the paced rows' servers and
#                                           # generator under SCHED_FIFO (chrt -f 1),
#                                           # so other tenants' builds do not
#                                           # decide when they run
#
# Installs mosquitto when missing (root: apt-get). Both servers run one at a
# time on loopback, pinned to the last CPU; the generator is pinned to CPU 0.
# Prints one markdown table (both systems, the ratio, the targets) and keeps
# it with the raw generator output in target/compare/. What each row measures
# and how is in docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
max_n=
niceness=0
tune_backlog=
rt=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --max-n) max_n=$2; shift ;;
    --nice) niceness=$2; shift ;;
    --tune-backlog) tune_backlog=65536 ;;
    --rt) rt=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "compare: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---- parameters ------------------------------------------------------------
if [ "$mode" = quick ]; then
  n_mem=2000 idle_secs=3
  rate_clients=5000 rate=50000 rate_warmup=1 rate_secs=2
  sweep_steps=3 sweep_warmup=0.5 sweep_secs=1.5 reps=1
  det_clients=2000 det_interval=2000 det_keepalive=2 det_timeout=3000 det_lead=2000 det_spread=1000 det_grace=8000
  default_max_n=5000
  paced_secs=3
else
  n_mem=10000 idle_secs=30
  rate_clients=5000 rate=50000 rate_warmup=2 rate_secs=6
  sweep_steps=6 sweep_warmup=1 sweep_secs=4 reps=3
  det_clients=10000 det_interval=2000 det_keepalive=2 det_timeout=3000 det_lead=4000 det_spread=4000 det_grace=8000
  default_max_n=
  paced_secs=5
fi
# Paced rows: heartbeats spread evenly in time over 1,000 clients (the
# generator's rate --even), as a fleet sends them.
paced_clients=1000 paced_rates=(30000 5000) paced_warmup=1
tick_ms=100
# Detection: an even MQTT keepalive, since mosquitto 2.0 computes its
# timeout as keepalive * 3 / 2 in whole seconds; a grace of 8 s, since it
# checks keepalives only every 5-6 s. heartbeatd's step ends as soon as
# every client is detected.
# Accepting: connects in flight per generator worker. Below mosquitto's
# listen backlog (100) so neither server is measured by SYN retransmits.
concurrency=64

# ---- the machine -----------------------------------------------------------
out_dir=target/compare
mkdir -p "$out_dir"
rm -f "$out_dir"/*.out "$out_dir"/*.log "$out_dir"/*-net.txt
work=$(mktemp -d)
server_pid=
backlog_was=

cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "$backlog_was" ]; then
    echo "$backlog_was" > /proc/sys/net/core/netdev_max_backlog
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Loopback delivers each sent segment through the sending CPU's backlog
# queue (net.core.netdev_max_backlog, 1000 by default). When softirq work
# is deferred to ksoftirqd on a busy CPU, a burst overflows it, segments
# are dropped and TCP retransmits them after 200 ms or more: a stall that
# belongs to neither server. The drops are counted per system. (TCP's own
# retransmit counters are not: other tenants' network tests share them.)
backlog_now=$(cat /proc/sys/net/core/netdev_max_backlog)
if [ -n "$tune_backlog" ]; then
  if ! { [ "$(id -u)" -eq 0 ] && echo "$tune_backlog" > /proc/sys/net/core/netdev_max_backlog; } 2>/dev/null; then
    echo "compare: --tune-backlog needs root" >&2
    exit 1
  fi
  backlog_was=$backlog_now
  backlog_now=$tune_backlog
fi
# Segments dropped by the per-CPU backlogs since boot (column 2, hex).
net_drops() {
  local total=0 dropped
  while read -r _ dropped _; do total=$((total + 16#$dropped)); done < /proc/net/softnet_stat
  echo "$total"
}

if ! command -v mosquitto >/dev/null 2>&1 && ! [ -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "compare: mosquitto is missing; install it (apt-get install mosquitto) or run as root" >&2
    exit 1
  fi
  echo "compare: installing mosquitto" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
fi
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
# The package starts a system broker on port 1883; it is not ours to stop, and
# ours listens elsewhere.

echo "compare: building (release)" >&2
cargo build --release --quiet --bin heartbeatd --bin heartbeat-load
hbd=target/release/heartbeatd
load=target/release/heartbeat-load

hard=$(ulimit -Hn)
if [ -z "$max_n" ]; then
  max_n=${default_max_n:-$((hard - 100))}
fi
need=$((max_n + 100))
if [ "$need" -gt "$hard" ]; then
  # Only root may raise a hard limit (up to fs.nr_open).
  ulimit -Hn "$need" 2>/dev/null || { echo "compare: --max-n $max_n needs an fd limit of $need (hard limit $hard): run as root" >&2; exit 1; }
  hard=$need
fi
ulimit -n "$hard"

# The scheduling class of the paced rows (--rt), empty otherwise.
sched=()
if [ -n "$rt" ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "compare: --rt needs root" >&2; exit 1; fi
fi

if [ "$(nproc)" -ge 2 ]; then
  server_cpu=$(($(nproc) - 1)) gen_cpu=0
  pin_server=(nice -n "$niceness" taskset -c "$server_cpu") pin_gen=(nice -n "$niceness" taskset -c "$gen_cpu")
  pinning="server on CPU $server_cpu, load generator on CPU $gen_cpu (taskset), nice $niceness"
else
  pin_server=(nice -n "$niceness") pin_gen=(nice -n "$niceness")
  pinning="none (one CPU: server and generator share it), nice $niceness"
fi

# Busy share of all CPUs over 2 s while nothing of ours runs: other tenants.
busy_pct() {
  local a b
  read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ < /proc/stat
  sleep 2
  read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ < /proc/stat
  a=$(( (u2+n2+s2+q2+sq2+st2) - (u1+n1+s1+q1+sq1+st1) ))
  b=$(( a + (i2+w2) - (i1+w1) ))
  awk -v a="$a" -v b="$b" 'BEGIN { printf "%.0f", b ? 100 * a / b : 0 }'
}

free_port() {
  local p
  for p in $(seq "$1" $(($1 + 500))); do
    if [ -z "$(ss -Htln "sport = :$p")" ]; then echo "$p"; return; fi
  done
  echo "compare: no free port from $1" >&2; exit 1
}

wait_listening() {
  local i
  for i in $(seq 100); do
    [ -n "$(ss -Htln "sport = :$1")" ] && return
    kill -0 "$server_pid" 2>/dev/null || { echo "compare: the server exited; see $2" >&2; exit 1; }
    sleep 0.05
  done
  echo "compare: nothing listens on port $1; see $2" >&2; exit 1
}

# start_heartbeatd NAME INTERVAL TIMEOUT LOG_LEVEL; $hbd_extra is one more
# [daemon] line.
hbd_extra=
start_heartbeatd() {
  port=$(free_port 17700)
  cat > "$work/$1.toml" <<EOF
[daemon]
tick = "${tick_ms}ms"
max_clients = $((max_n + 1000))
log_level = "$4"
$hbd_extra
[[listener]]
name = "bench"
address = "127.0.0.1:$port"
protocol = "native"
interval = "$2"
timeout = "$3"
EOF
  "${sched[@]}" "${pin_server[@]}" "$hbd" --config "$work/$1.toml" 2> "$out_dir/$1.log" &
  server_pid=$!
  wait_listening "$port" "$out_dir/$1.log"
}

# start_mosquitto NAME MAX_KEEPALIVE LOGGING(none|notice)
start_mosquitto() {
  port=$(free_port 18830)
  {
    echo "listener $port 127.0.0.1"
    echo "allow_anonymous true"
    echo "persistence false"
    # mosquitto accepts max_keepalive from 10 s; clients may ask for less.
    echo "max_keepalive $(( $2 > 10 ? $2 : 10 ))"
    echo "set_tcp_nodelay true"
    if [ "$3" = notice ]; then
      echo "log_dest stderr"
      echo "log_type notice"
      echo "log_timestamp_format %Y-%m-%dT%H:%M:%S"
    else
      echo "log_dest none"
    fi
  } > "$work/$1.conf"
  "${sched[@]}" "${pin_server[@]}" "$mosquitto_bin" -c "$work/$1.conf" 2> "$out_dir/$1.log" &
  server_pid=$!
  wait_listening "$port" "$out_dir/$1.log"
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# gen SYSTEM OUTFILE CLIENTS ARGS...: the generator against the running
# server; adds the run's backlog drops to SYSTEM-net.txt.
gen() {
  local system=$1 outfile=$2 clients=$3 drops0
  shift 3
  local proto=(--proto native)
  [ "$system" = mosquitto ] && proto=(--proto mqtt --keepalive "$keepalive")
  drops0=$(net_drops)
  "${sched[@]}" "${pin_gen[@]}" "$load" --addr "127.0.0.1:$port" "${proto[@]}" --clients "$clients" \
    --concurrency "$concurrency" --server-pid "$server_pid" "$@" > "$out_dir/$outfile" 2>> "$out_dir/generator.log"
  echo "$(($(net_drops) - drops0))" >> "$out_dir/$system-net.txt"
}

# field FILE STEP KEY: a value from a generator result line.
field() {
  awk -v s="step=$2" -v k="$3" '$1 == "result" && $2 == s {
    for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) { print kv[2]; exit } } }' "$out_dir/$1"
}

# start SYSTEM NAME: the server for a phase. heartbeatd gets INTERVAL and
# TIMEOUT, mosquitto the equivalent max_keepalive (timeout = keepalive x 1.5).
start() {
  local s=$1 name=$2 interval=$3 timeout=$4 ka=$5 level=$6 mlog=$7
  keepalive=$ka
  if [ "$s" = heartbeatd ]; then start_heartbeatd "$s-$name" "$interval" "$timeout" "$level"; else start_mosquitto "$s-$name" "$ka" "$mlog"; fi
}

phase_idle() {
  echo "compare: $1: memory, accept rate and idle CPU at N=$n_mem" >&2
  # Long timeouts: idle clients must not time out. 60 s interval, 180 s
  # timeout; MQTT keepalive 60 s (90 s).
  start "$1" idle 60s 180s 60 warn none
  gen "$1" "$1-idle.out" "$n_mem" --settle 2 idle --secs "$idle_secs"
  stop_server
  echo "compare: $1: memory and accept rate at N=$max_n" >&2
  start "$1" maxn 60s 180s 60 warn none
  gen "$1" "$1-maxn.out" "$max_n" --settle 2 idle --secs 1
  stop_server
}

phase_load() {
  echo "compare: $1: CPU per heartbeat at $rate/s over $rate_clients clients; sustained rates (round $2 of $reps)" >&2
  # Timeouts far above the offered intervals: only the work per heartbeat
  # counts here. 100 ms interval, 15 s timeout; MQTT keepalive 10 s (15 s).
  start "$1" load 100ms 15s 10 warn none
  gen "$1" "$1-rate-$2.out" "$rate_clients" rate --rate "$rate" --warmup "$rate_warmup" --secs "$rate_secs"
  for c in 1000 5000; do
    gen "$1" "$1-sweep-$c-$2.out" "$c" sweep --steps "$sweep_steps" --warmup "$sweep_warmup" --secs "$sweep_secs"
  done
  stop_server
}

# phase_paced VARIANT ROUND: the paced rows for heartbeatd (its default
# coalescing), heartbeatd-nocoalesce (coalesce = "0s") or mosquitto.
phase_paced() {
  local v=$1 r=$2 s=$1 pr
  [ "$v" = heartbeatd-nocoalesce ] && s=heartbeatd && hbd_extra='coalesce = "0s"'
  [ -n "$rt" ] && sched=(chrt -f 1)
  echo "compare: $v: CPU per heartbeat, paced evenly at ${paced_rates[*]}/s over $paced_clients clients (round $r of $reps)" >&2
  start "$s" "paced-$v" 100ms 15s 10 warn none
  for pr in "${paced_rates[@]}"; do
    gen "$s" "$v-paced-$pr-$r.out" "$paced_clients" rate --rate "$pr" --even --warmup "$paced_warmup" --secs "$paced_secs"
  done
  stop_server
  hbd_extra= sched=()
}

phase_detect() {
  echo "compare: $1: detection error over $det_clients clients" >&2
  # The same silence timeout for both: heartbeatd's timeout, mosquitto's
  # keepalive x 1.5. Both log each detection (heartbeatd at warn, mosquitto
  # at notice).
  start "$1" detect "${det_interval}ms" "${det_timeout}ms" "$det_keepalive" warn notice
  gen "$1" "$1-detect.out" "$det_clients" detect --interval-ms "$det_interval" --timeout-ms "$det_timeout" \
    --lead-ms "$det_lead" --spread-ms "$det_spread" --grace-ms "$det_grace"
  stop_server
}

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t0=$SECONDS
: > "$out_dir/generator.log"
background=$(busy_pct)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
systems=(heartbeatd mosquitto)
for s in "${systems[@]}"; do
  : > "$out_dir/$s-net.txt"
  phase_idle "$s"
done
# The load rows alternate between the systems, round after round, so both
# meet the machine's other tenants alike; the table keeps each system's
# best sustained rate and its median CPU per heartbeat.
for r in $(seq "$reps"); do
  for s in "${systems[@]}"; do phase_load "$s" "$r"; done
done
for r in $(seq "$reps"); do
  for v in heartbeatd heartbeatd-nocoalesce mosquitto; do phase_paced "$v" "$r"; done
done
for s in "${systems[@]}"; do phase_detect "$s"; done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$((SECONDS - t0))

# ---- the table ---------------------------------------------------------------
# row LABEL HB MQ BETTER(lower|higher) TARGET_CHECK
# TARGET_CHECK is an awk condition on h (heartbeatd) and m (mosquitto), or "-".
row() {
  awk -v label="$1" -v h="$2" -v m="$3" -v better="$4" -v target="$5" -v cond="$6" 'BEGIN {
    if (h == "" || h == "-" || m == "" || m == "-" || m + 0 == 0 || h + 0 == 0) ratio = "n/a"
    else if (better == "lower") ratio = sprintf("%.2fx better", m / h)
    else ratio = sprintf("%.2fx better", h / m)
    if (ratio != "n/a" && ((better == "lower" && h > m) || (better == "higher" && h < m)))
      ratio = (better == "lower") ? sprintf("%.2fx worse", h / m) : sprintf("%.2fx worse", m / h)
    met = "-"
    if (cond != "-") met = (cond == "1") ? "met" : "MISSED"
    printf "| %s | %s | %s | %s | %s | %s |\n", label, h, m, ratio, target, met
  }'
}
# check COND H M: "1" when the awk condition holds for h and m.
check() {
  awk -v h="$2" -v m="$3" "BEGIN { if (h == \"\" || h == \"-\") { print 0; exit } print (($1) ? 1 : 0) }"
}

H() { field "heartbeatd-$1.out" "$2" "$3"; }
M() { field "mosquitto-$1.out" "$2" "$3"; }
# rounds SYSTEM NAME STEP KEY: the value of every load round, one a line.
rounds() { local r; for r in $(seq "$reps"); do field "$1-$2-$r.out" "$3" "$4"; done; }
best() { rounds "$@" | sort -g | tail -1; }
median() { rounds "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
# best_round SYSTEM NAME STEP KEY: the round whose value is the best.
best_round() {
  local r b=0 v best_r=1
  for r in $(seq "$reps"); do
    v=$(field "$1-$2-$r.out" "$3" "$4")
    if awk -v v="${v:-0}" -v b="$b" 'BEGIN { exit !(v > b) }'; then b=${v:-0} best_r=$r; fi
  done
  echo "$best_r"
}

mem_h=$(H idle connect rss_bytes_per_conn) mem_m=$(M idle connect rss_bytes_per_conn)
memx_h=$(H maxn connect rss_bytes_per_conn) memx_m=$(M maxn connect rss_bytes_per_conn)
cpu_h=$(median heartbeatd rate rate server_cpu_ns_per_reply) cpu_m=$(median mosquitto rate rate server_cpu_ns_per_reply)
s1_h=$(best heartbeatd sweep-1000 sweep replies_per_s) s1_m=$(best mosquitto sweep-1000 sweep replies_per_s)
s5_h=$(best heartbeatd sweep-5000 sweep replies_per_s) s5_m=$(best mosquitto sweep-5000 sweep replies_per_s)
acc_h=$(H idle connect connects_per_s) acc_m=$(M idle connect connects_per_s)
accx_h=$(H maxn connect connects_per_s) accx_m=$(M maxn connect connects_per_s)
idle_h=$(H idle idle server_core_pct) idle_m=$(M idle idle server_core_pct)
dmax_h=$(H detect detect err_max_ms) dmax_m=$(M detect detect err_max_ms)
for pr in "${paced_rates[@]}"; do
  declare "paced_h_$pr=$(median heartbeatd "paced-$pr" rate server_cpu_ns_per_reply)"
  declare "paced_o_$pr=$(median heartbeatd-nocoalesce "paced-$pr" rate server_cpu_ns_per_reply)"
  declare "paced_m_$pr=$(median mosquitto "paced-$pr" rate server_cpu_ns_per_reply)"
done
fmt_n() { printf "%'d" "$1" 2>/dev/null || echo "$1"; }

table=$(
  echo "| metric | heartbeatd | mosquitto | heartbeatd vs mosquitto | target | |"
  echo "|---|---:|---:|---|---|---|"
  row "user memory per idle connection, N=$(fmt_n "$n_mem") (B, RSS delta / N)" "$mem_h" "$mem_m" lower "≤ 256 B" "$(check 'h <= 256' "$mem_h" "$mem_m")"
  row "user memory per idle connection, N=$(fmt_n "$max_n") (B)" "$memx_h" "$memx_m" lower "≤ 256 B" "$(check 'h <= 256' "$memx_h" "$memx_m")"
  row "CPU per heartbeat at $(fmt_n "$rate")/s, $(fmt_n "$rate_clients") clients (ns, user+sys, median of $reps)" "$cpu_h" "$cpu_m" lower "≤ ½ mosquitto" "$(check 'h <= m / 2' "$cpu_h" "$cpu_m")"
  row "CPU per heartbeat, paced 30,000/s evenly over $(fmt_n "$paced_clients") clients (ns, median of $reps)" "$paced_h_30000" "$paced_m_30000" lower "≤ 8,000 ns and ≤ 0.6× mosquitto" "$(check 'h <= 8000 && h <= 0.6 * m' "$paced_h_30000" "$paced_m_30000")"
  row "… the same, heartbeatd with coalesce = \"0s\"" "$paced_o_30000" "$paced_m_30000" lower "-" "-"
  row "CPU per heartbeat, paced 5,000/s evenly over $(fmt_n "$paced_clients") clients (ns, median of $reps)" "$paced_h_5000" "$paced_m_5000" lower "≤ coalesce off ($paced_o_5000)" "$(check 'h <= m' "$paced_h_5000" "$paced_o_5000")"
  row "… the same, heartbeatd with coalesce = \"0s\"" "$paced_o_5000" "$paced_m_5000" lower "-" "-"
  row "sustained heartbeats/s, 1,000 clients (p99 RTT < 10 ms, best of $reps)" "$s1_h" "$s1_m" higher "≥ 2× mosquitto" "$(check 'h >= 2 * m' "$s1_h" "$s1_m")"
  row "sustained heartbeats/s, 5,000 clients (p99 RTT < 10 ms, best of $reps)" "$s5_h" "$s5_m" higher "≥ 2× mosquitto" "$(check 'h >= 2 * m' "$s5_h" "$s5_m")"
  row "accept rate, N=$(fmt_n "$n_mem") (connections/s with handshake)" "$acc_h" "$acc_m" higher "≥ 1.3× mosquitto" "$(check 'h >= 1.3 * m' "$acc_h" "$acc_m")"
  row "accept rate, N=$(fmt_n "$max_n") (connections/s with handshake)" "$accx_h" "$accx_m" higher "-" "-"
  row "idle CPU, N=$(fmt_n "$n_mem") idle clients over ${idle_secs} s (% of a core)" "$idle_h" "$idle_m" lower "≤ 0.5 %" "$(check 'h <= 0.5' "$idle_h" "$idle_m")"
  for q in min median max; do
    h=$(H detect detect "err_${q}_ms") m=$(M detect detect "err_${q}_ms")
    if [ "$q" = max ]; then
      row "detection error, $(fmt_n "$det_clients") clients, $q (ms)" "$h" "$m" lower "≤ tick + 20 ms = $((tick_ms + 20)) ms" "$(check "h <= $((tick_ms + 20))" "$h" "$m")"
    else
      row "detection error, $(fmt_n "$det_clients") clients, $q (ms)" "$h" "$m" lower "-" "-"
    fi
  done
)

details=$(
  for s in heartbeatd mosquitto; do
    for r in $(seq "$reps"); do
      f="$s-rate-$r.out"
      echo "- $s, round $r, $(fmt_n "$rate")/s offered: $(field "$f" rate replies_per_s) replies/s, RTT p50/p99/p999 $(field "$f" rate p50_us)/$(field "$f" rate p99_us)/$(field "$f" rate p999_us) µs, $(field "$f" rate server_cpu_ns_per_reply) ns per heartbeat ($(field "$f" rate server_user_ns_per_reply) user + $(field "$f" rate server_sys_ns_per_reply) system), server $(field "$f" rate server_core_pct) % of a core, generator $(field "$f" rate gen_core_pct) %"
    done
    for v in $( [ "$s" = heartbeatd ] && echo heartbeatd heartbeatd-nocoalesce || echo mosquitto ); do
      for pr in "${paced_rates[@]}"; do
        for r in $(seq "$reps"); do
          f="$v-paced-$pr-$r.out"
          echo "- $v, paced $(fmt_n "$pr")/s evenly, round $r: $(field "$f" rate replies_per_s) replies/s, RTT p50/p99 $(field "$f" rate p50_us)/$(field "$f" rate p99_us) µs, $(field "$f" rate server_cpu_ns_per_reply) ns per heartbeat ($(field "$f" rate server_user_ns_per_reply) user + $(field "$f" rate server_sys_ns_per_reply) system), server $(field "$f" rate server_core_pct) % of a core, generator $(field "$f" rate gen_core_pct) %"
        done
      done
    done
    for c in 1000 5000; do
      r=$(best_round "$s" "sweep-$c" sweep replies_per_s)
      f="$s-sweep-$c-$r.out"
      echo "- $s, $c clients: sustained per round: $(rounds "$s" "sweep-$c" sweep replies_per_s | paste -sd/ -); best (round $r) at p99 $(field "$f" sweep p99_us) µs; that round's saturation (1 in flight per client) $(field "$f" sweep-max replies_per_s)/s with the server at $(field "$f" sweep-max server_core_pct) % and the generator at $(field "$f" sweep-max gen_core_pct) % of a core"
    done
    echo "- $s, detection: $(field "$s-detect.out" detect detected) detected, $(field "$s-detect.out" detect undetected) undetected, $(field "$s-detect.out" detect lost) dropped while heartbeating; p99 error $(field "$s-detect.out" detect err_p99_ms) ms"
    drops=$(awk '{ d += $1 } END { print d + 0 }' "$out_dir/$s-net.txt")
    echo "- $s, over all its runs: $drops loopback segments dropped by the backlog queue"
  done
)

report=$(cat <<EOF
## heartbeatd vs mosquitto ($mode run, $started)

$table

Details:
$details

Machine: $(nproc) × $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME").
Versions: heartbeatd $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $("$mosquitto_bin" -h 2>/dev/null | head -1).
Pinning: $pinning; paced rows $( [ -n "$rt" ] && echo "under SCHED_FIFO 1 (--rt)" || echo "at that nice level" ). fd limit for both servers: $hard. Tick: ${tick_ms} ms. net.core.netdev_max_backlog: $backlog_now.
Other load on the machine: $background % of all CPUs busy before the run; load average $load_before before, $load_after after.
Run time: ${elapsed} s. Raw generator output: $out_dir/.
EOF
)
echo "$report" | tee "$out_dir/report-$mode.md"
