package edge

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

const (
	settleQueue      = 4096
	settleBatch      = 256
	settleRPCTimeout = 5 * time.Second
	// settleLinger is how long a batch waits for more settlements: one
	// Settle call per few milliseconds instead of one per request, for a
	// reservation held that much longer.
	settleLinger = 5 * time.Millisecond
)

// settleOp is one settlement or one release.
type settleOp struct {
	settle  *limiterv1.Settlement
	release *limiterv1.Release
}

// settler batches Settle and Release calls off the request path. A lost
// settlement is not fatal: the limiter's reservation times out and the
// ledger still gets the usage; so a failed batch is logged, not retried.
type settler struct {
	lim Limiter
	log *slog.Logger

	mu    sync.Mutex
	q     []settleOp
	batch *batcher
	// busy is held by run from taking a batch until it is sent, so that
	// flush waits for a batch in flight rather than miss it.
	busy sync.Mutex
}

func newSettler(lim Limiter, log *slog.Logger) *settler {
	return &settler{lim: lim, log: log, batch: newBatcher(settleBatch, settleLinger)}
}

// add queues op; when the queue is full it is sent inline, which slows
// this request rather than losing the settlement.
func (s *settler) add(ctx context.Context, op settleOp) {
	s.mu.Lock()
	n := len(s.q)
	full := n >= settleQueue
	if !full {
		s.q = append(s.q, op)
		n++
	}
	s.mu.Unlock()
	if full {
		s.send(context.WithoutCancel(ctx), []settleOp{op})
		return
	}
	s.batch.queued(n)
}

func (s *settler) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.q)
}

// take removes the oldest batch from the queue.
func (s *settler) take() []settleOp {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := min(len(s.q), settleBatch)
	batch := slices.Clone(s.q[:k])
	s.q = append(s.q[:0], s.q[k:]...)
	return batch
}

// releaseLost frees the reservation of a Check whose answer was lost, now
// and once more after again: the Check may still be waiting in a limiter
// (for a key being handed over) and reserve after the first release went
// by, which would leave the key charged for a request never served.
func (s *settler) releaseLost(ctx context.Context, r *limiterv1.Release, again time.Duration) {
	s.add(ctx, settleOp{release: r})
	ctx = context.WithoutCancel(ctx)
	time.AfterFunc(again, func() { s.add(ctx, settleOp{release: r}) })
}

func (s *settler) run(ctx context.Context) {
	for s.batch.next(ctx, s.queued) {
		s.busy.Lock()
		// A batch in flight at shutdown still completes (each send has
		// its own timeout): dropped settlements would stay charged at
		// their estimates.
		if batch := s.take(); len(batch) > 0 {
			s.send(context.WithoutCancel(ctx), batch)
		}
		s.busy.Unlock()
	}
}

// flush sends what is queued, after the batch run may be sending.
func (s *settler) flush(ctx context.Context) {
	s.busy.Lock()
	defer s.busy.Unlock()
	for ctx.Err() == nil {
		batch := s.take()
		if len(batch) == 0 {
			return
		}
		s.send(context.WithoutCancel(ctx), batch)
	}
}

func (s *settler) send(ctx context.Context, batch []settleOp) {
	var settles []*limiterv1.Settlement
	var releases []*limiterv1.Release
	for _, op := range batch {
		if op.settle != nil {
			settles = append(settles, op.settle)
		} else {
			releases = append(releases, op.release)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, settleRPCTimeout)
	defer cancel()
	if len(settles) > 0 {
		if err := s.lim.Settle(ctx, settles); err != nil {
			s.log.Warn("edge: settling reservations failed; they will time out in the limiter", "count", len(settles), "err", err)
		}
	}
	if len(releases) > 0 {
		if err := s.lim.Release(ctx, releases); err != nil {
			s.log.Warn("edge: releasing reservations failed; they will time out in the limiter", "count", len(releases), "err", err)
		}
	}
}
