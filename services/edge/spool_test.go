package edge_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/services/edge"
)

// nexts is, per producer, the sequence number after the last record the
// ledger acknowledged.
func (u *usageServer) nexts() map[string]uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return maps.Clone(u.next)
}

// spoolProducer is the producer id the spool in dir numbers its records
// under.
func spoolProducer(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "producer"))
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// chatN sends n chat requests, each answered 200, and returns their ids.
func (h *harness) chatN(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		id := a.header.Get("X-Request-Id")
		require.NotEmpty(t, id)
		ids = append(ids, id)
	}
	return ids
}

// crash stops the edge as a killed process would leave it: nothing more
// is delivered, and what was not acknowledged stays in the spool.
func (h *harness) crash(t *testing.T, undelivered int) {
	t.Helper()
	h.stop() // Run and Serve end; only Close could deliver now
	expired, cancel := context.WithCancel(t.Context())
	cancel()
	err := h.srv.Close(expired)
	if undelivered > 0 {
		require.ErrorContains(t, err, fmt.Sprintf("%d usage records not delivered", undelivered))
	} else {
		require.NoError(t, err)
	}
}

// TestSpoolReplayAfterCrash: records answered while the ledger was down
// survive the edge; the next edge on the same spool delivers exactly
// them, once each, under the same producer id and numbering, after those
// the ledger already had.
func TestSpoolReplayAfterCrash(t *testing.T) {
	t.Parallel()
	for _, delivered := range []int{0, 3} {
		t.Run(fmt.Sprintf("delivered=%d", delivered), func(t *testing.T) {
			t.Parallel()
			const n = 20
			dir := filepath.Join(t.TempDir(), "spool")
			withSpool := options{config: func(c *edge.Config) { c.SpoolDir = dir }}
			h := startEdge(t, withSpool)
			producer := spoolProducer(t, dir)

			before := h.chatN(t, delivered)
			require.Eventually(t, func() bool { return h.counter(t, "keygate.edge.usage.sent") == int64(delivered) },
				10*time.Second, 5*time.Millisecond)
			h.usage.setDown(true)
			ids := h.chatN(t, n)
			h.crash(t, n)
			require.ElementsMatch(t, before, h.usage.ids(), "nothing of the outage was delivered")

			ledger := h.usage
			ledger.setDown(false)
			withSpool.usage = ledger
			h2 := startEdge(t, withSpool)
			require.Equal(t, producer, spoolProducer(t, dir))
			require.Eventually(t, func() bool { return h2.counter(t, "keygate.edge.usage.sent") == n },
				10*time.Second, 5*time.Millisecond)
			require.ElementsMatch(t, append(before, ids...), ledger.ids(), "each record once")
			require.Equal(t, map[string]uint64{producer: uint64(delivered + n + 1)}, ledger.nexts(),
				"one producer, numbered without gaps or repeats")
			for _, id := range ids {
				require.Equal(t, "key1", ledger.record(id).GetKey())
			}
			require.Contains(t, h2.logs.String(), "replaying spooled usage records")

			// The replay is acknowledged: a third start replays nothing.
			h2.crash(t, 0)
			h3 := startEdge(t, withSpool)
			last := h3.chatN(t, 1)
			require.Eventually(t, func() bool { return h3.counter(t, "keygate.edge.usage.sent") == 1 },
				10*time.Second, 5*time.Millisecond)
			require.Len(t, ledger.ids(), delivered+n+1)
			require.Equal(t, last[0], ledger.ids()[delivered+n])
			require.Equal(t, map[string]uint64{producer: uint64(delivered + n + 2)}, ledger.nexts())
			require.NotContains(t, h3.logs.String(), "replaying spooled usage records")
		})
	}
}

// TestSpoolCleanRestartReplaysNothing: after every record was delivered
// and the edge closed, the next edge on the spool replays nothing and
// numbers on under the same producer.
func TestSpoolCleanRestartReplaysNothing(t *testing.T) {
	t.Parallel()
	const n = 10
	dir := filepath.Join(t.TempDir(), "spool")
	withSpool := options{config: func(c *edge.Config) { c.SpoolDir = dir }}
	h := startEdge(t, withSpool)
	producer := spoolProducer(t, dir)
	ids := h.chatN(t, n)
	require.Eventually(t, func() bool { return h.counter(t, "keygate.edge.usage.sent") == n },
		10*time.Second, 5*time.Millisecond)
	h.stop()
	require.NoError(t, h.srv.Close(t.Context()))

	withSpool.usage = h.usage
	h2 := startEdge(t, withSpool)
	next := h2.chatN(t, 1)
	require.Eventually(t, func() bool { return h2.counter(t, "keygate.edge.usage.sent") == 1 },
		10*time.Second, 5*time.Millisecond)
	require.Equal(t, append(ids, next...), h.usage.ids(), "each record once, in order")
	require.Equal(t, map[string]uint64{producer: n + 2}, h.usage.nexts())
	require.NotContains(t, h2.logs.String(), "replaying spooled usage records")
}

// TestSpoolOneEdgePerDirectory: a second edge on a spool in use does not
// start.
func TestSpoolOneEdgePerDirectory(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "spool")
	h := startEdge(t, options{config: func(c *edge.Config) { c.SpoolDir = dir }})
	_, err := edge.New(edge.Config{
		Verifier: h.verifier, ErrInvalidKey: errInvalidKey, Limiter: h.limiter,
		// Never called: New fails first.
		Usage: usagev1.NewUsageServiceClient(nil), Registry: keystorev1.NewKeystoreServiceClient(nil), SpoolDir: dir,
	})
	require.ErrorContains(t, err, "in use by another process")
	// The first edge is unaffected.
	h.chatN(t, 1)
}
