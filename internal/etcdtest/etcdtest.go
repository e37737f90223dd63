// Package etcdtest starts real etcd members for tests: embedded, in a
// temporary directory, on free loopback ports.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keygate/keygate/internal/etcdembed"
)

// Cluster is a single embedded member and a client connected to it.
type Cluster struct {
	Server    *etcdembed.Server
	Client    *clientv3.Client
	Endpoints []string
}

// Start runs an embedded etcd for the life of the test.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := etcdembed.Start(ctx, etcdembed.Config{
		DataDir:   tb.TempDir(),
		ClientURL: "http://127.0.0.1:0",
		PeerURL:   "http://" + FreeAddr(tb),
		LogLevel:  "fatal", // closing listeners log as errors
	})
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	tb.Cleanup(srv.Close)
	c := &Cluster{Server: srv, Endpoints: srv.Endpoints()}
	c.Client = NewClient(tb, c.Endpoints)
	return c
}

// NewClient returns a client closed at the end of the test.
func NewClient(tb testing.TB, endpoints []string) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		tb.Fatalf("etcdtest: client: %v", err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	return cli
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
// Peer URLs must be known before the member starts, so :0 cannot be used.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr())
}
