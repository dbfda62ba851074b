// refserver serves containerd's own overlayfs snapshotter (Debian's containerd 1.6
// source, snapshots/overlay) over a unix socket with containerd's contrib/snapshotservice:
// the reference snapshotd is measured against in the same run.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o refserver ./Benchmarks/refserver
//	refserver ROOT SOCKET
package main

import (
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/snapshots/overlay"
	"google.golang.org/grpc"
)

func main() {
	if len(os.Args) != 3 {
		log.Fatalf("usage: %s ROOT SOCKET", os.Args[0])
	}
	root, sock := os.Args[1], os.Args[2]
	sn, err := overlay.NewSnapshotter(root)
	if err != nil {
		log.Fatal(err)
	}
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.GracefulStop()
	}()
	if err := srv.Serve(l); err != nil {
		log.Fatal(err)
	}
	sn.Close()
}
