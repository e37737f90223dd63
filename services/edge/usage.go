package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/services/edge/internal/spool"
)

const (
	// usageBatch is the most records one RecordUsage call carries (the
	// ledger takes up to 5,000). One batch is in flight at a time, so
	// this over the ledger's commit time bounds the rate one edge records.
	usageBatch      = 5000
	usageRPCTimeout = 10 * time.Second
	backoffMin      = 50 * time.Millisecond
	backoffMax      = 2 * time.Second
	// usageLinger is how long a small batch waits for more records: at a
	// few requests a second, one ledger commit per 10 ms rather than one
	// per request, for usage visible that much later. The records are
	// spooled meanwhile, so waiting risks none of them.
	usageLinger = 10 * time.Millisecond
	// lingerBelow is the batch that is sent without waiting.
	lingerBelow = 100
)

// sender hands usage records to the ledger in batches, in the background,
// and never drops one.
//
// Records are numbered 1, 2, 3 … under the edge's producer id, and a batch
// (a run of consecutive numbers) is sent only after the one before it was
// acknowledged: that is what the ledger's exactly-once needs (see the
// usage package). A batch leaves the queue only when RecordUsage
// acknowledged it; resending after a timeout or to another replica is
// safe.
//
// With a spool (see the spool package), each record is written to a local
// file before add returns and replayed after a restart, so a crash of the
// edge loses no answered request; the spool also keeps the producer id
// across restarts, so the ledger recognises replayed records.
//
// While the ledger is behind or down the queue grows. Past limit records,
// full reports true and the edge stops admitting new requests (503
// usage_backlog) until the ledger catches up: an answered request is never
// forgotten by billing, budgets and daily limits.
type sender struct {
	rec      Recorder
	log      *slog.Logger
	producer string
	limit    int
	sp       *spool.Spool // nil: memory only
	// spoolErr is set once a spool write failed: the edge then refuses
	// requests, since what it answers could no longer survive a crash.
	spoolErr atomic.Bool

	mu    sync.Mutex
	buf   []*usagev1.UsageRecord // pending records are buf[head:]
	head  int
	base  uint64 // sequence number of buf[head]
	batch *batcher

	// sendMu makes Run's loop and Close take turns at sending.
	sendMu  sync.Mutex
	failing bool
	narrow  int // batch size while isolating a refused record; 0 = full

	sent        metric.Int64Counter
	refusedRecs metric.Int64Counter
}

func newSender(rec Recorder, producer string, limit int, log *slog.Logger) *sender {
	return &sender{rec: rec, log: log, producer: producer, limit: limit, base: 1, batch: newBatcher(lingerBelow, usageLinger)}
}

// withSpool makes the sender write through sp and queues the records sp
// replayed, under sp's producer id.
func (s *sender) withSpool(sp *spool.Spool, replay [][]byte) error {
	s.sp, s.producer = sp, sp.Producer()
	s.base = sp.Next() - uint64(len(replay))
	for i, b := range replay {
		r := &usagev1.UsageRecord{}
		if err := proto.Unmarshal(b, r); err != nil {
			return fmt.Errorf("edge: spooled usage record %d: %w", s.base+uint64(i), err)
		}
		s.buf = append(s.buf, r)
	}
	if len(replay) > 0 {
		s.log.Info("edge: replaying spooled usage records", "records", len(replay), "producer", s.producer)
	}
	return nil
}

// add queues r without blocking on the ledger; with a spool, r is in the
// spool file when add returns.
func (s *sender) add(r *usagev1.UsageRecord) {
	spooled := s.sp != nil && !s.spoolErr.Load()
	var b []byte
	if spooled {
		b, _ = proto.Marshal(r)
	}
	s.mu.Lock()
	if spooled {
		// Under s.mu, so that spool numbers follow queue order. After a
		// failed write the spool is left alone: it keeps a prefix of the
		// numbering, and numbers it never held are not reused after a
		// restart once acknowledged (Ack moves its next number past them).
		if _, err := s.sp.Append(b); err != nil && s.spoolErr.CompareAndSwap(false, true) {
			s.log.Error("edge: usage spool write failed; refusing requests until restarted", "err", err)
		}
	}
	s.buf = append(s.buf, r)
	n := len(s.buf) - s.head
	s.mu.Unlock()
	s.batch.queued(n)
}

// pending is the number of records not yet acknowledged.
func (s *sender) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.buf) - s.head
}

// full reports whether the backlog has reached its limit, or the spool
// can no longer be written.
func (s *sender) full() bool { return s.pending() >= s.limit || s.spoolErr.Load() }

// oldestAge is how long the oldest unacknowledged record has waited.
func (s *sender) oldestAge(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.head == len(s.buf) {
		return 0
	}
	return now.Sub(s.buf[s.head].GetTime().AsTime())
}

// peek copies up to max of the oldest records and the sequence number of
// the first.
func (s *sender) peek(max int) ([]*usagev1.UsageRecord, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := min(len(s.buf)-s.head, max)
	return append([]*usagev1.UsageRecord(nil), s.buf[s.head:s.head+k]...), s.base
}

// ack removes the n oldest records, acknowledged by the ledger.
func (s *sender) ack(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.buf[s.head : s.head+n])
	s.head += n
	s.base += uint64(n)
	// Reuse the array once the acknowledged part dominates it.
	if s.head > len(s.buf)/2 {
		k := copy(s.buf, s.buf[s.head:])
		clear(s.buf[k:])
		s.buf = s.buf[:k]
		s.head = 0
	}
}

// sendOnce sends one batch; it reports whether the queue was empty or the
// batch was acknowledged.
func (s *sender) sendOnce(ctx context.Context) (bool, error) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	batch, first := s.peek(s.batchLimit())
	if len(batch) == 0 {
		return true, nil
	}
	rctx, cancel := context.WithTimeout(ctx, usageRPCTimeout)
	_, err := s.rec.RecordUsage(rctx, &usagev1.RecordUsageRequest{Records: batch, Producer: s.producer, FirstSequence: first})
	cancel()
	if status.Code(err) == codes.InvalidArgument {
		return s.refused(ctx, batch, first, err), nil
	}
	if err != nil {
		if !s.failing {
			s.failing = true
			s.log.Warn("edge: recording usage failed; queueing and retrying", "err", err, "pending", s.pending())
		}
		return false, err
	}
	if s.failing {
		s.failing = false
		s.log.Info("edge: recording usage recovered", "pending", s.pending())
	}
	s.ack(len(batch))
	s.narrow = 0
	if s.sp != nil {
		if err := s.sp.Ack(first + uint64(len(batch)) - 1); err != nil {
			// Harmless but for disk: the replay would be duplicates.
			s.log.Warn("edge: usage spool acknowledgement not saved", "err", err)
		}
	}
	s.sent.Add(ctx, int64(len(batch)))
	return true, nil
}

// run sends until ctx ends, backing off while the ledger fails.
func (s *sender) run(ctx context.Context) {
	backoff := backoffMin
	t := time.NewTimer(0)
	defer t.Stop()
	for s.batch.next(ctx, s.pending) {
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

// batchLimit is the size of the next batch: usageBatch, or less while a
// refused batch is being narrowed down to its invalid record.
func (s *sender) batchLimit() int {
	if s.narrow > 0 {
		return s.narrow
	}
	return usageBatch
}

// refused handles a batch the ledger refused as invalid, which no retry
// would change. The batch is halved until the invalid record is alone;
// that record is dropped, logged and counted, and sending goes on (a
// sequence number left out is no gap to the ledger). Only a record the
// ledger can never take is lost: one jammed batch would otherwise stop
// every later record.
func (s *sender) refused(ctx context.Context, batch []*usagev1.UsageRecord, first uint64, err error) bool {
	if len(batch) > 1 {
		s.narrow = len(batch) / 2
		return true
	}
	s.narrow = 0
	s.log.Error("edge: the ledger refused a usage record; dropping it", "request_id", batch[0].GetRequestId(), "err", err)
	s.ack(1)
	if s.sp != nil {
		_ = s.sp.Ack(first)
	}
	s.refusedRecs.Add(ctx, 1)
	return true
}

// SpoolSync is how often spooled records are flushed to stable storage:
// what the loss of the machine (not of the process) may take.
const SpoolSync = 100 * time.Millisecond

// syncSpool flushes the spool every SpoolSync until ctx ends.
func (s *sender) syncSpool(ctx context.Context) {
	if s.sp == nil {
		return
	}
	clock.Every(ctx, SpoolSync, func() {
		if err := s.sp.Sync(); err != nil && s.spoolErr.CompareAndSwap(false, true) {
			s.log.Error("edge: usage spool sync failed; refusing requests until restarted", "err", err)
		}
	})
}

// flush sends until the queue is empty or ctx ends.
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
