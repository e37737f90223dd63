package clock_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/internal/clock"
)

// TestEvery: f runs on every tick until the context ends, then Every
// returns.
func TestEvery(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	calls := make(chan struct{})
	done := make(chan struct{})
	go func() {
		clock.Every(ctx, time.Millisecond, func() { calls <- struct{}{} })
		close(done)
	}()
	for range 3 {
		<-calls
	}
	cancel()
	// A tick may be waiting to deliver; take it so Every can see ctx end.
	for {
		select {
		case <-calls:
		case <-done:
			return
		}
	}
}

// TestFake: a fake clock moves only when told.
func TestFake(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := clock.NewFake(t0)
	require.Equal(t, t0, f.Now())
	f.Advance(time.Minute)
	require.Equal(t, t0.Add(time.Minute), f.Now())
	f.Set(t0)
	require.Equal(t, t0, f.Now())
}
