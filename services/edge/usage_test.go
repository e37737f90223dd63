package edge_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/services/edge"
)

// TestUsageOutage: while the ledger is down, answers are unaffected and
// records wait; after it recovers every record arrives exactly once.
func TestUsageOutage(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	h.usage.setDown(true)
	var ids []string
	for range 5 {
		a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
		require.Equal(t, http.StatusOK, a.status)
		ids = append(ids, a.header.Get("X-Request-Id"))
	}
	require.Empty(t, h.usage.ids())
	h.usage.setDown(false)
	require.Eventually(t, func() bool { return len(h.usage.ids()) == 5 }, 10*time.Second, 10*time.Millisecond)
	require.ElementsMatch(t, ids, h.usage.ids())
	// The counter moves once the acknowledgement is back at the edge.
	require.Eventually(t, func() bool { return h.counter(t, "keygate.edge.usage.sent") == 5 }, 10*time.Second, 10*time.Millisecond)
}

// TestUsageBacklogFull: records are never dropped; once the backlog is at
// its limit the edge refuses new requests with 503 usage_backlog until the
// ledger catches up, then admits again.
func TestUsageBacklogFull(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{config: func(c *edge.Config) { c.UsageBacklog = 3 }})
	h.usage.setDown(true)
	var ids []string
	for range 3 {
		a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
		require.Equal(t, http.StatusOK, a.status)
		ids = append(ids, a.header.Get("X-Request-Id"))
	}
	a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
	require.Equal(t, http.StatusServiceUnavailable, a.status)
	require.Equal(t, "usage_backlog", a.errorCode())
	require.Equal(t, "1", a.header.Get("Retry-After"))
	require.Contains(t, h.logs.String(), "usage backlog full")

	h.usage.setDown(false)
	// Delivered (the ledger has them) and acknowledged (the edge's backlog
	// is empty again): the ledger records a batch before its answer
	// reaches the edge.
	require.Eventually(t, func() bool {
		return len(h.usage.ids()) == 3 && h.counter(t, "keygate.edge.usage.sent") == 3
	}, 10*time.Second, 10*time.Millisecond)
	require.ElementsMatch(t, ids, h.usage.ids())
	a = h.post(t, "/v1/chat/completions", goodKey, chatBody)
	require.Equal(t, http.StatusOK, a.status)
	require.Eventually(t, func() bool { return len(h.usage.ids()) == 4 }, 10*time.Second, 10*time.Millisecond)
}

// TestCloseFlushesUsage: Close delivers what is pending, or says how much
// it could not deliver.
func TestCloseFlushesUsage(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	h.usage.setDown(true)
	a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
	require.Equal(t, http.StatusOK, a.status)
	h.stop() // Run ends: only Close can deliver now

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	require.ErrorContains(t, h.srv.Close(ctx), "1 usage records not delivered")

	h.usage.setDown(false)
	// h.stop closed the gRPC server; a fresh edge shows Close succeeding.
	h2 := startEdge(t, options{})
	h2.usage.setDown(true)
	a = h2.post(t, "/v1/chat/completions", goodKey, chatBody)
	require.Equal(t, http.StatusOK, a.status)
	h2.usage.setDown(false)
	require.NoError(t, h2.srv.Close(t.Context()))
	require.NotNil(t, h2.usage.record(a.header.Get("X-Request-Id")))
}

// TestUsageRefusedRecord: a record the ledger refuses as invalid would
// jam every later one; the sender narrows the batch down to it, drops it
// (counted) and delivers the rest.
func TestUsageRefusedRecord(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	h.usage.setDown(true)
	var ids []string
	for range 5 {
		a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
		require.Equal(t, http.StatusOK, a.status)
		ids = append(ids, a.header.Get("X-Request-Id"))
	}
	h.usage.mu.Lock()
	h.usage.refuse = map[string]bool{ids[2]: true}
	h.usage.down = false
	h.usage.mu.Unlock()
	require.Eventually(t, func() bool { return len(h.usage.ids()) == 4 }, 10*time.Second, 10*time.Millisecond)
	require.ElementsMatch(t, append(append([]string{}, ids[:2]...), ids[3:]...), h.usage.ids())
	require.Eventually(t, func() bool { return h.counter(t, "keygate.edge.usage.refused") == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Contains(t, h.logs.String(), "refused a usage record")
}
