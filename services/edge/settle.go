package edge

import (
	"context"
	"log/slog"
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
	q   chan settleOp
	// busy is held by run from taking a batch until it is sent, so that
	// flush waits for a lingering batch rather than miss it.
	busy sync.Mutex
}

func newSettler(lim Limiter, log *slog.Logger) *settler {
	return &settler{lim: lim, log: log, q: make(chan settleOp, settleQueue)}
}

// add queues op; when the queue is full it is sent inline, which slows
// this request rather than losing the settlement.
func (s *settler) add(ctx context.Context, op settleOp) {
	select {
	case s.q <- op:
	default:
		s.send(context.WithoutCancel(ctx), []settleOp{op})
	}
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
	batch := make([]settleOp, 0, settleBatch)
	linger := time.NewTimer(settleLinger)
	defer linger.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case op := <-s.q:
			s.busy.Lock()
			batch = append(batch[:0], op)
		}
		linger.Reset(settleLinger)
	drain:
		for len(batch) < settleBatch {
			select {
			case op := <-s.q:
				batch = append(batch, op)
			case <-linger.C:
				break drain
			case <-ctx.Done():
				break drain
			}
		}
		// A batch in flight at shutdown still completes (each send has
		// its own timeout): dropped settlements would stay charged at
		// their estimates.
		s.send(context.WithoutCancel(ctx), batch)
		s.busy.Unlock()
	}
}

// flush sends what is queued, after the batch run may be holding.
func (s *settler) flush(ctx context.Context) {
	s.busy.Lock()
	defer s.busy.Unlock()
	for {
		batch := make([]settleOp, 0, settleBatch)
	drain:
		for len(batch) < settleBatch {
			select {
			case op := <-s.q:
				batch = append(batch, op)
			default:
				break drain
			}
		}
		if len(batch) == 0 || ctx.Err() != nil {
			return
		}
		// A batch in flight at shutdown still completes (each send has
		// its own timeout): dropped settlements would stay charged at
		// their estimates.
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
