// Package conformance runs containerd's own snapshotter test suite against snapshotd,
// through containerd's proxy snapshotter client: the same client containerd uses for a
// `[proxy_plugins]` snapshotter. Each test case gets a fresh daemon on a fresh root.
//
// Built in GOPATH mode against Debian's golang-github-containerd-containerd-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode SNAPSHOTD=.build/debug/snapshotd go test ./tests/conformance
package conformance

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func TestSnapshotd(t *testing.T) {
	bin := os.Getenv("SNAPSHOTD")
	if bin == "" {
		t.Fatal("SNAPSHOTD must name the snapshotd binary")
	}
	testsuite.SnapshotterSuite(t, "Snapshotd", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return startDaemon(bin, root, os.Getenv("SNAPSHOTD_ARGS"))
	})
}

// startDaemon runs snapshotd on root with its socket beside it and returns a proxy
// snapshotter connected to it; the cleanup stops the daemon with SIGTERM and checks that
// it exits cleanly.
func startDaemon(bin, root, extra string) (snapshots.Snapshotter, func() error, error) {
	sock := filepath.Join(filepath.Dir(root), "snapshotd.sock")
	args := []string{"--root", root, "--address", sock, "--log-level", "warning"}
	args = append(args, strings.Fields(extra)...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			return nil, nil, fmt.Errorf("snapshotd exited before listening: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return nil, nil, fmt.Errorf("snapshotd did not listen on %s within 30s", sock)
		}
		time.Sleep(5 * time.Millisecond)
	}

	conn, err := grpc.Dial(sock, grpc.WithInsecure(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		cmd.Process.Kill()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "snapshotd")
	cleanup := func() error {
		conn.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("snapshotd exited with %v after SIGTERM", err)
			}
			if _, err := os.Stat(sock); err == nil {
				return fmt.Errorf("snapshotd left its socket %s behind", sock)
			}
			return nil
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			return fmt.Errorf("snapshotd did not stop within 20s of SIGTERM")
		}
	}
	return sn, cleanup, nil
}
