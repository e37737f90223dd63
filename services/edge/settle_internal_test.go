package edge

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

// settleCounter keeps the size of every Settle and Release call.
type settleCounter struct {
	mu               sync.Mutex
	settles, release []int
}

func (c *settleCounter) Check(context.Context, []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error) {
	return nil, nil
}

func (c *settleCounter) Settle(_ context.Context, s []*limiterv1.Settlement) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settles = append(c.settles, len(s))
	return nil
}

func (c *settleCounter) Release(_ context.Context, r []*limiterv1.Release) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.release = append(c.release, len(r))
	return nil
}

func (c *settleCounter) calls() ([]int, []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.settles...), append([]int(nil), c.release...)
}

// TestSettlerBatches: settlements wait for a full batch (or the linger),
// go as one call per kind, and what is queued at shutdown goes at flush.
func TestSettlerBatches(t *testing.T) {
	t.Parallel()
	lim := &settleCounter{}
	s := newSettler(lim, slog.New(slog.DiscardHandler))
	s.batch.delay = time.Hour // only a full batch ends the wait
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { s.run(ctx); close(done) }()

	for i := range settleBatch - 1 {
		s.add(t.Context(), settleOp{settle: &limiterv1.Settlement{ReservationId: "r" + strconv.Itoa(i)}})
	}
	s.add(t.Context(), settleOp{release: &limiterv1.Release{ReservationId: "x"}})
	require.Eventually(t, func() bool { return s.queued() == 0 }, 10*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { st, rl := lim.calls(); return len(st) == 1 && len(rl) == 1 }, 10*time.Second, time.Millisecond)
	st, rl := lim.calls()
	require.Equal(t, []int{settleBatch - 1}, st)
	require.Equal(t, []int{1}, rl)

	s.add(t.Context(), settleOp{settle: &limiterv1.Settlement{ReservationId: "late"}})
	cancel()
	<-done
	s.flush(t.Context())
	st, _ = lim.calls()
	require.Equal(t, []int{settleBatch - 1, 1}, st, "what was queued at shutdown goes at flush")
}
