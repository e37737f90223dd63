package edge

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

const (
	usageBatch      = 500
	usageRPCTimeout = 10 * time.Second
	backoffMin      = 50 * time.Millisecond
	backoffMax      = 2 * time.Second
)

// sender hands usage records to the ledger in batches, in the background.
//
// Records wait in a bounded ring buffer. A batch leaves the buffer only
// when RecordUsage acknowledged it, so a usage outage loses nothing until
// the buffer is full; then the oldest record is dropped for each new one
// (the newest usage is the most useful to limits and dashboards), counted
// in keygate.edge.usage.dropped and logged once per outage. Resending a
// batch is safe: the ledger is idempotent by request id.
type sender struct {
	rec Recorder
	log *slog.Logger

	mu      sync.Mutex
	buf     []*usagev1.UsageRecord
	start   int    // index of the oldest record
	n       int    // records held
	base    uint64 // sequence number of the oldest record
	wake    chan struct{}
	dropLog bool // a drop was logged in the current outage

	// sendMu makes Run's loop and Close take turns at sending.
	sendMu  sync.Mutex
	failing bool

	dropped metric.Int64Counter
}

func newSender(rec Recorder, size int, log *slog.Logger) *sender {
	return &sender{rec: rec, log: log, buf: make([]*usagev1.UsageRecord, size), wake: make(chan struct{}, 1)}
}

// add buffers r without blocking.
func (s *sender) add(r *usagev1.UsageRecord) {
	s.mu.Lock()
	dropped := false
	if s.n == len(s.buf) {
		s.buf[s.start] = nil
		s.start = (s.start + 1) % len(s.buf)
		s.n--
		s.base++
		dropped = true
	}
	s.buf[(s.start+s.n)%len(s.buf)] = r
	s.n++
	logDrop := dropped && !s.dropLog
	if logDrop {
		s.dropLog = true
	}
	s.mu.Unlock()
	if dropped {
		s.dropped.Add(context.Background(), 1)
		if logDrop {
			s.log.Error("edge: usage buffer full; dropping the oldest usage records until the ledger accepts again",
				"capacity", len(s.buf))
		}
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pending is the number of records not yet acknowledged.
func (s *sender) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// peek copies up to max of the oldest records and the sequence number just
// past them.
func (s *sender) peek(max int) ([]*usagev1.UsageRecord, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := min(s.n, max)
	out := make([]*usagev1.UsageRecord, k)
	for i := range k {
		out[i] = s.buf[(s.start+i)%len(s.buf)]
	}
	return out, s.base + uint64(k)
}

// ack removes the records before sequence number end that are still held
// (some may have been dropped while their batch was in flight).
func (s *sender) ack(end uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if end <= s.base {
		return
	}
	k := int(min(end-s.base, uint64(s.n)))
	for i := range k {
		s.buf[(s.start+i)%len(s.buf)] = nil
	}
	s.start = (s.start + k) % len(s.buf)
	s.n -= k
	s.base += uint64(k)
	if s.n == 0 {
		s.dropLog = false
	}
}

// sendOnce sends one batch; it reports whether the buffer was empty or
// the batch was acknowledged.
func (s *sender) sendOnce(ctx context.Context) (bool, error) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	batch, end := s.peek(usageBatch)
	if len(batch) == 0 {
		return true, nil
	}
	rctx, cancel := context.WithTimeout(ctx, usageRPCTimeout)
	_, err := s.rec.RecordUsage(rctx, &usagev1.RecordUsageRequest{Records: batch})
	cancel()
	if err != nil {
		if !s.failing {
			s.failing = true
			s.log.Warn("edge: recording usage failed; buffering and retrying", "err", err, "pending", s.pending())
		}
		return false, err
	}
	if s.failing {
		s.failing = false
		s.log.Info("edge: recording usage recovered", "pending", s.pending())
	}
	s.ack(end)
	return true, nil
}

// run sends until ctx ends, backing off while the ledger fails.
func (s *sender) run(ctx context.Context) {
	backoff := backoffMin
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		if s.pending() == 0 {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			}
		}
		ok, _ := s.sendOnce(ctx)
		if ok {
			backoff = backoffMin
			continue
		}
		t.Reset(backoff)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		backoff = min(backoff*2, backoffMax)
	}
}

// flush sends until the buffer is empty or ctx ends.
func (s *sender) flush(ctx context.Context) error {
	backoff := backoffMin
	for s.pending() > 0 {
		if ok, _ := s.sendOnce(ctx); ok {
			continue
		}
		select {
		case <-ctx.Done():
			return errors.New("edge: " + strconv.Itoa(s.pending()) + " usage records not delivered: " + ctx.Err().Error())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, backoffMax)
	}
	return nil
}
