package edge

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/clock"
)

// KeyUseRecorder records when keys were last used;
// keystorev1.KeystoreServiceClient fits.
type KeyUseRecorder interface {
	RecordKeyUse(ctx context.Context, in *keystorev1.RecordKeyUseRequest, opts ...grpc.CallOption) (*keystorev1.RecordKeyUseResponse, error)
}

const (
	// keyUseBatch is the most uses the keystore takes per call.
	keyUseBatch = 1000
	// keyUseLimit bounds the keys waiting for the keystore.
	keyUseLimit = 100_000
)

// lastUse is the latest admitted request of a key, and the report-mode
// limits that would have denied its requests since the last flush.
type lastUse struct {
	ws       string
	t        time.Time
	reported []string
}

// maxReported bounds the distinct report-mode limits kept per key between
// flushes (3 levels of a few limits each fit).
const maxReported = 32

// keyUses aggregates the last use of each key between flushes, so the
// keystore sees one write per key per interval, never one per request.
// A failed flush keeps its entries for the next one; beyond keyUseLimit
// keys, new keys are dropped (counted in keygate.edge.key_use.dropped) until
// a flush succeeds. A nil *keyUses records nothing.
type keyUses struct {
	rec   KeyUseRecorder
	log   *slog.Logger
	limit int

	mu      sync.Mutex
	pending map[string]lastUse // by key id
	dropLog bool               // a drop was logged since the last good flush

	// sendMu makes Run's loop and Close take turns at flushing.
	sendMu  sync.Mutex
	failing bool

	dropped metric.Int64Counter
}

func newKeyUses(rec KeyUseRecorder, limit int, mp metric.MeterProvider, log *slog.Logger) (*keyUses, error) {
	dropped, err := mp.Meter("github.com/keygate/keygate/services/edge").Int64Counter("keygate.edge.key_use.dropped",
		metric.WithUnit("{key}"), metric.WithDescription("Key uses not recorded because too many keys were waiting for the keystore."))
	if err != nil {
		return nil, errors.Join(errors.New("edge: metrics"), err)
	}
	return &keyUses{rec: rec, log: log, limit: limit, pending: map[string]lastUse{}, dropped: dropped}, nil
}

// note records that key id of workspace ws was used at t, and the
// report-mode limits that would have denied the request; the latest time
// wins.
func (u *keyUses) note(ws, id string, t time.Time, reported []string) {
	if u == nil {
		return
	}
	u.mu.Lock()
	dropped := !u.merge(ws, id, t, reported)
	logDrop := dropped && !u.dropLog
	if logDrop {
		u.dropLog = true
	}
	u.mu.Unlock()
	if dropped {
		u.drop(1, logDrop)
	}
}

// merge keeps the later of t and the pending time of id, and the union of
// the reported limits; it reports false when id is new and the map is
// full. Call with mu held.
func (u *keyUses) merge(ws, id string, t time.Time, reported []string) bool {
	e, ok := u.pending[id]
	switch {
	case ok:
		if t.After(e.t) {
			e.ws, e.t = ws, t
		}
	case len(u.pending) < u.limit:
		e = lastUse{ws: ws, t: t}
	default:
		return false
	}
	for _, r := range reported {
		if len(e.reported) < maxReported && !slices.Contains(e.reported, r) {
			e.reported = append(e.reported, r)
		}
	}
	u.pending[id] = e
	return true
}

func (u *keyUses) drop(n int, log bool) {
	u.dropped.Add(context.Background(), int64(n))
	if log {
		u.log.Error("edge: too many keys waiting for the keystore; dropping their last-used times until it accepts again",
			"capacity", u.limit)
	}
}

// run flushes every interval until ctx ends.
func (u *keyUses) run(ctx context.Context, every time.Duration) {
	if u == nil {
		return
	}
	clock.Every(ctx, every, func() { _ = u.flush(ctx) })
}

// flush sends the pending uses; what the keystore did not take waits for
// the next flush.
func (u *keyUses) flush(ctx context.Context) error {
	if u == nil {
		return nil
	}
	u.sendMu.Lock()
	defer u.sendMu.Unlock()
	u.mu.Lock()
	batch := u.pending
	if len(batch) == 0 {
		u.mu.Unlock()
		return nil
	}
	u.pending = make(map[string]lastUse, len(batch))
	u.mu.Unlock()

	uses := make([]*keystorev1.KeyUse, 0, len(batch))
	for id, e := range batch {
		uses = append(uses, &keystorev1.KeyUse{Workspace: e.ws, Key: id, Time: timestamppb.New(e.t), Reported: e.reported})
	}
	sent := 0
	var err error
	for chunk := range slices.Chunk(uses, keyUseBatch) {
		rctx, cancel := context.WithTimeout(ctx, usageRPCTimeout)
		_, err = u.rec.RecordKeyUse(rctx, &keystorev1.RecordKeyUseRequest{Uses: chunk})
		cancel()
		if err != nil {
			break
		}
		sent += len(chunk)
	}
	if err == nil {
		u.mu.Lock()
		u.dropLog = false
		u.mu.Unlock()
		if u.failing {
			u.failing = false
			u.log.Info("edge: recording key use recovered")
		}
		return nil
	}
	u.mu.Lock()
	lost := 0
	for _, ku := range uses[sent:] {
		if !u.merge(ku.GetWorkspace(), ku.GetKey(), ku.GetTime().AsTime(), ku.GetReported()) {
			lost++
		}
	}
	logDrop := lost > 0 && !u.dropLog
	if logDrop {
		u.dropLog = true
	}
	u.mu.Unlock()
	if lost > 0 {
		u.drop(lost, logDrop)
	}
	if !u.failing {
		u.failing = true
		u.log.Warn("edge: recording key use failed; keeping it for the next flush", "err", err, "keys", len(uses)-sent)
	}
	return errors.New("edge: last-used times of " + strconv.Itoa(len(uses)-sent) + " keys not recorded: " + err.Error())
}
