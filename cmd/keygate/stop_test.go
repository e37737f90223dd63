package main

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestIdleStopIsQuick: an idle `keygate up` told to stop does not wait out
// its shutdown timeout (here a minute) and logs no errors on the way out.
func TestIdleStopIsQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the keygate binary")
	}
	c := newCluster(t)
	p := c.start("up", "up", "--data-dir", filepath.Join(c.dataDir, "up"), "--shutdown-timeout", "1m",
		"--http-addr", anyPort, "--edge-addr", anyPort, "--grpc-addr", anyPort, "--metrics-addr", anyPort,
		"--etcd-client-url", "http://"+anyPort, "--etcd-peer-url", "http://"+anyPort)
	a := p.addrs(t)
	waitHealthy(t, "http://"+a["edge"]+"/healthz")
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, p.out.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("keygate up still running 30 s after SIGTERM (its shutdown timeout is a minute):\n%s", p.out.String())
	}
	for _, line := range strings.Split(p.out.String(), "\n") {
		l := strings.ToLower(line)
		require.NotContains(t, l, `"level":"error"`, "a clean stop logs no errors")
	}
}
