package edge_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/services/edge"
)

// TestLostCheckReleasedTwice: a Check whose answer is lost may still be
// waiting in a limiter (for a key being handed over) and reserve after the
// edge's first release went by; the edge releases the reservation once
// more, three limiter timeouts later, so that no stray charge remains.
func TestLostCheckReleasedTwice(t *testing.T) {
	h := startEdge(t, options{config: func(c *edge.Config) { c.LimiterTimeout = 20 * time.Millisecond }})
	h.limiter.setDecide(func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) { return nil, errors.New("no answer") })
	a := h.post(t, "/v1/chat/completions", goodKey, chatBody)
	require.Equal(t, 503, a.status)
	id := a.header.Get("X-Request-Id")
	require.Eventually(t, func() bool { _, r := h.limiter.settled(); return len(r) == 2 }, 10*time.Second, 5*time.Millisecond)
	_, r := h.limiter.settled()
	require.Equal(t, id, r[0].GetReservationId())
	require.Equal(t, id, r[1].GetReservationId())
}
