package limiter

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/limitclient"
)

// TestLocalReplica: a limiter client whose process runs a replica decides
// that replica's keys by a direct call, with the service token, without
// any gRPC server: the replica here is registered under an address
// nothing listens on. Settlements and releases take the same path.
func TestLocalReplica(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	const addr = "127.0.0.1:1" // nothing listens here
	const token = "local-service-token-123"
	srv, err := New(t.Context(), Config{Etcd: c.etcd.Client, Clock: c.clock, Usage: c.usage, AdvertiseAddr: addr,
		ServiceToken: token, Logger: testLogger(t)})
	require.NoError(t, err)
	go func() { _ = srv.Run(context.WithoutCancel(t.Context())) }()
	t.Cleanup(func() { _ = srv.Close() })
	lc, err := limitclient.New(t.Context(), limitclient.Config{Etcd: c.etcd.Client,
		Local: &limitclient.Local{Addr: addr, Server: srv, Token: token}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lc.Close() })
	require.Eventually(t, func() bool { return srv.watcher.Ring().Len() == 1 }, 10*time.Second, 10*time.Millisecond)

	admitted := 0
	for i := range 5 {
		res, err := lc.Check(t.Context(), []*limiterv1.CheckItem{item("local-key", "r"+string(rune('0'+i)), rpd(3))})
		require.NoError(t, err)
		if res[0].GetAllowed() {
			admitted++
		}
	}
	require.Equal(t, 3, admitted)
	unknown, err := lc.SettleUnknown(t.Context(), []*limiterv1.Settlement{{Key: "local-key", ReservationId: "r0", ActualTokens: 1}})
	require.NoError(t, err)
	require.Zero(t, unknown)
	unknown, err = lc.ReleaseUnknown(t.Context(), []*limiterv1.Release{{Key: "local-key", ReservationId: "r1"}})
	require.NoError(t, err)
	require.Zero(t, unknown)
	res, err := lc.Check(t.Context(), []*limiterv1.CheckItem{item("local-key", "r9", rpd(3))})
	require.NoError(t, err)
	require.True(t, res[0].GetAllowed(), "the release freed one request of the day")

	// Without the token the replica refuses, as over gRPC.
	bad, err := limitclient.New(t.Context(), limitclient.Config{Etcd: c.etcd.Client,
		Local: &limitclient.Local{Addr: addr, Server: srv, Token: "wrong-token-wrong-token"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = bad.Close() })
	_, err = bad.Check(t.Context(), []*limiterv1.CheckItem{item("local-key", "x", rpd(3))})
	require.Error(t, err)
}
