package edge

import (
	"context"
	"log/slog"
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

const (
	settleQueue      = 4096
	settleBatch      = 256
	settleRPCTimeout = 5 * time.Second
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

func (s *settler) run(ctx context.Context) {
	batch := make([]settleOp, 0, settleBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case op := <-s.q:
			batch = append(batch[:0], op)
		}
	drain:
		for len(batch) < settleBatch {
			select {
			case op := <-s.q:
				batch = append(batch, op)
			default:
				break drain
			}
		}
		// A batch in flight at shutdown still completes (each send has
		// its own timeout): dropped settlements would stay charged at
		// their estimates.
		s.send(context.WithoutCancel(ctx), batch)
	}
}

// flush sends what is queued.
func (s *settler) flush(ctx context.Context) {
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
