// apibench measures per-call latency of the containerd snapshots API over unix sockets,
// with containerd's own proxy snapshotter client (the client containerd uses for a
// [proxy_plugins] snapshotter), against several servers in the same run, interleaved in
// rounds so that machine noise falls on all of them alike. See scripts/bench-api.
//
//	apibench -server snapshotd=/path/a.sock -server containerd=/path/b.sock [-n 1000]
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"google.golang.org/grpc"
)

type target struct {
	name string
	sn   snapshots.Snapshotter
	s    map[string][]float64
}

type servers []string

func (s *servers) String() string     { return strings.Join(*s, ",") }
func (s *servers) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	var srv servers
	flag.Var(&srv, "server", "NAME=SOCKET (repeatable; ratios are first / others)")
	n := flag.Int("n", 1000, "prepare/mounts/commit/stat/remove cycles per server")
	round := flag.Int("round", 50, "cycles per round before switching server")
	depth := flag.Int("depth", 32, "chain depth for the deep prepare case")
	scale := flag.Int("scale", 10000, "snapshots in the store for the scale case (0 skips)")
	scaleOn := flag.String("scale-on", "", "comma-separated servers for the scale case (default: the first)")
	pause := flag.Duration("pause", 0, "sleep between cycles, not timed (background work catches up, as between container starts)")
	flag.Parse()
	ctx := context.Background()

	var ts []*target
	for _, s := range srv {
		parts := strings.SplitN(s, "=", 2)
		conn, err := grpc.Dial(parts[1], grpc.WithInsecure(), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
		check(err)
		ts = append(ts, &target{name: parts[0], sn: proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), parts[0]), s: map[string][]float64{}})
	}
	if len(ts) == 0 {
		fmt.Fprintln(os.Stderr, "give at least one -server NAME=SOCKET")
		os.Exit(2)
	}

	for _, t := range ts {
		_, err := t.sn.Prepare(ctx, "bench-base-a", "")
		check(err)
		check(t.sn.Commit(ctx, "bench-base", "bench-base-a"))
		for i := 0; i < 20; i++ {
			cycle(ctx, t, fmt.Sprintf("warm-%d", i), map[string][]float64{})
		}
	}
	for done := 0; done < *n; done += *round {
		for _, t := range ts {
			for i := done; i < done+*round && i < *n; i++ {
				cycle(ctx, t, fmt.Sprint(i), t.s)
				time.Sleep(*pause)
			}
		}
	}
	deep := fmt.Sprintf("prepare (%d layers)", *depth)
	for _, t := range ts {
		parent := ""
		for l := 0; l < *depth; l++ {
			_, err := t.sn.Prepare(ctx, fmt.Sprintf("chain-%d-a", l), parent)
			check(err)
			parent = fmt.Sprintf("chain-%d", l)
			check(t.sn.Commit(ctx, parent, fmt.Sprintf("chain-%d-a", l)))
		}
		for i := 0; i < max(100, *n/5); i++ {
			k := fmt.Sprintf("deep-%d", i)
			timed(t.s, deep, func() error { _, err := t.sn.Prepare(ctx, k, parent); return err })
			check(t.sn.Remove(ctx, k))
			time.Sleep(*pause)
		}
	}

	fmt.Printf("\n## Per-call latency in ms (%d calls each, one client, same run)\n\n", *n)
	hdr, rule := "| call |", "|---|"
	for _, t := range ts {
		hdr += fmt.Sprintf(" %s p50 | %s p99 |", t.name, t.name)
		rule += "---:|---:|"
	}
	for _, t := range ts[1:] {
		hdr += fmt.Sprintf(" %s/%s p50 | p99 |", ts[0].name, t.name)
		rule += "---:|---:|"
	}
	fmt.Println(hdr)
	fmt.Println(rule)
	for _, op := range []string{"prepare", "mounts", "commit", "stat", "remove", deep} {
		line := "| " + op + " |"
		for _, t := range ts {
			line += fmt.Sprintf(" %.3f | %.3f |", pct(t.s[op], .5), pct(t.s[op], .99))
		}
		for _, t := range ts[1:] {
			line += fmt.Sprintf(" %.2fx | %.2fx |", pct(ts[0].s[op], .5)/pct(t.s[op], .5), pct(ts[0].s[op], .99)/pct(t.s[op], .99))
		}
		fmt.Println(line)
	}

	if *scale > 0 {
		on := map[string]bool{ts[0].name: true}
		if *scaleOn != "" {
			on = map[string]bool{}
			for _, s := range strings.Split(*scaleOn, ",") {
				on[s] = true
			}
		}
		fmt.Printf("\n## Prepare latency against store size (ms)\n\n| server | snapshots | p50 | p99 |\n|---|---:|---:|---:|\n")
		for _, t := range ts {
			if !on[t.name] {
				continue
			}
			have := 0
			var p50 []float64
			for _, size := range []int{100, *scale} {
				for ; have < size; have++ {
					_, err := t.sn.Prepare(ctx, fmt.Sprintf("fill-%d-a", have), "bench-base")
					check(err)
					check(t.sn.Commit(ctx, fmt.Sprintf("fill-%d", have), fmt.Sprintf("fill-%d-a", have)))
				}
				s := map[string][]float64{}
				for i := 0; i < max(200, *n/5); i++ {
					k := fmt.Sprintf("scale-%d-%d", size, i)
					timed(s, "prepare", func() error { _, err := t.sn.Prepare(ctx, k, "bench-base"); return err })
					check(t.sn.Remove(ctx, k))
				}
				xs := s["prepare"]
				fmt.Printf("| %s | %d | %.3f | %.3f |\n", t.name, size, pct(xs, .5), pct(xs, .99))
				p50 = append(p50, pct(xs, .5))
			}
			fmt.Printf("\n%s: prepare p50 with %d snapshots is %.2fx of with 100\n", t.name, *scale, p50[1]/p50[0])
		}
	}
}

// cycle times prepare → mounts → commit → stat → remove.
func cycle(ctx context.Context, t *target, id string, s map[string][]float64) {
	a, c := "a-"+id, "c-"+id
	timed(s, "prepare", func() error { _, err := t.sn.Prepare(ctx, a, "bench-base"); return err })
	timed(s, "mounts", func() error { _, err := t.sn.Mounts(ctx, a); return err })
	timed(s, "commit", func() error { return t.sn.Commit(ctx, c, a) })
	timed(s, "stat", func() error { _, err := t.sn.Stat(ctx, c); return err })
	timed(s, "remove", func() error { return t.sn.Remove(ctx, c) })
}

// timed runs call, appends its latency in ms to s[op], and stops the run on an error.
func timed(s map[string][]float64, op string, call func() error) {
	st := time.Now()
	err := call()
	s[op] = append(s[op], ms(st))
	check(err)
}

func ms(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[int(math.Min(float64(len(s)-1), float64(len(s))*p))]
}

func max(a, b int) int {
	if a > b {
		return a
	}
	return b
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "apibench:", err)
		os.Exit(1)
	}
}
