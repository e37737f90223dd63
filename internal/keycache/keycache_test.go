package keycache

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/pkg/keyformat"
)

// fakeKeystore is a keystore whose answers and change history the test
// controls, served over real gRPC. Its change stream follows the
// keystore's contract: a RESET at the head revision when opened from 0 or
// from a revision compacted away (or not reached), else the changes after
// the start revision and a PROGRESS at the head; then every change.
type fakeKeystore struct {
	keystorev1.UnimplementedKeystoreServiceServer
	calls atomic.Int64
	// broken makes VerifyKey fail as if storage were down.
	broken atomic.Bool
	// refuse makes WatchKeyChanges fail at once.
	refuse atomic.Bool
	// notFound makes VerifyKey answer NotFound for unknown secrets.
	notFound atomic.Bool

	mu        sync.Mutex
	keys      map[string]*keystorev1.VerifyKeyResponse
	head      int64
	compacted int64
	history   []*keystorev1.WatchKeyChangesResponse // by revision
	wake      chan struct{}                         // closed on a change
	kill      chan struct{}                         // closed to break the open streams
	starts    []int64                               // start revision of each stream opened
}

func (f *fakeKeystore) VerifyKey(_ context.Context, req *keystorev1.VerifyKeyRequest) (*keystorev1.VerifyKeyResponse, error) {
	f.calls.Add(1)
	if f.broken.Load() {
		return nil, status.Error(codes.Unavailable, "down")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.keys[req.GetSecret()]; ok {
		return r, nil
	}
	if f.notFound.Load() {
		return nil, status.Error(codes.NotFound, "no such key")
	}
	return nil, status.Error(codes.Unauthenticated, "invalid API key")
}

func (f *fakeKeystore) WatchKeyChanges(req *keystorev1.WatchKeyChangesRequest, st grpc.ServerStreamingServer[keystorev1.WatchKeyChangesResponse]) error {
	f.mu.Lock()
	f.starts = append(f.starts, req.GetStartRevision())
	start := req.GetStartRevision()
	reset := start == 0 || start < f.compacted || start > f.head
	if reset {
		start = f.head
	}
	pos := sort.Search(len(f.history), func(i int) bool { return f.history[i].GetRevision() > start })
	head := f.head
	f.mu.Unlock()
	if f.refuse.Load() {
		return status.Error(codes.Unavailable, "keystore down")
	}
	if reset {
		if err := st.Send(&keystorev1.WatchKeyChangesResponse{Type: keystorev1.WatchKeyChangesResponse_TYPE_RESET, Revision: head}); err != nil {
			return err
		}
	}
	for resumed := !reset; ; resumed = false {
		f.mu.Lock()
		pending := f.history[pos:]
		pos = len(f.history)
		wake, kill := f.wake, f.kill
		f.mu.Unlock()
		for _, m := range pending {
			if err := st.Send(m); err != nil {
				return err
			}
		}
		if resumed {
			// Caught up: report the head, as etcd's progress does.
			if err := st.Send(&keystorev1.WatchKeyChangesResponse{Type: keystorev1.WatchKeyChangesResponse_TYPE_PROGRESS, Revision: head}); err != nil {
				return err
			}
		}
		select {
		case <-st.Context().Done():
			return nil
		case <-kill:
			return status.Error(codes.Unavailable, "stream broken")
		case <-wake:
		}
	}
}

func (f *fakeKeystore) set(secret string, r *keystorev1.VerifyKeyResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r == nil {
		delete(f.keys, secret)
		return
	}
	f.keys[secret] = r
}

// change records a change of key id at a new revision and returns it.
func (f *fakeKeystore) change(typ keystorev1.WatchKeyChangesResponse_Type, id string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.head++
	f.history = append(f.history, &keystorev1.WatchKeyChangesResponse{Type: typ, Key: id, Revision: f.head})
	close(f.wake)
	f.wake = make(chan struct{})
	return f.head
}

// changeLevel records a change of a workspace (member "") or a member at
// a new revision.
func (f *fakeKeystore) changeLevel(ws, member string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.head++
	typ := keystorev1.WatchKeyChangesResponse_TYPE_WORKSPACE_UPDATED
	if member != "" {
		typ = keystorev1.WatchKeyChangesResponse_TYPE_MEMBER_UPDATED
	}
	f.history = append(f.history, &keystorev1.WatchKeyChangesResponse{Type: typ, Workspace: ws, Member: member, Revision: f.head})
	close(f.wake)
	f.wake = make(chan struct{})
	return f.head
}

// progress reports the head revision on the open streams.
func (f *fakeKeystore) progress() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.history = append(f.history, &keystorev1.WatchKeyChangesResponse{Type: keystorev1.WatchKeyChangesResponse_TYPE_PROGRESS, Revision: f.head})
	close(f.wake)
	f.wake = make(chan struct{})
}

// compact forgets the changes up to the head revision.
func (f *fakeKeystore) compact() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.compacted = f.head
}

// breakStreams ends every open stream with an error.
func (f *fakeKeystore) breakStreams() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.kill)
	f.kill = make(chan struct{})
}

func (f *fakeKeystore) streams() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.starts...)
}

type fixture struct {
	ks    *fakeKeystore
	v     *Verifier
	clock *clock.Fake
	logs  *recorder
}

const (
	testMaxStale       = 5 * time.Second
	testMaxUnconfirmed = 3 * time.Minute
)

func start(t testing.TB, opts ...func(*Options)) *fixture {
	t.Helper()
	f := &fakeKeystore{
		keys: map[string]*keystorev1.VerifyKeyResponse{},
		head: 100, wake: make(chan struct{}), kill: make(chan struct{}),
	}
	s := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { keystorev1.RegisterKeystoreServiceServer(r, f) })
	conn := grpctest.Dial(t, s.Addr,
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: time.Millisecond, Multiplier: 2, MaxDelay: 20 * time.Millisecond},
			// Else each attempt has only its backoff (1 ms) to connect.
			MinConnectTimeout: 20 * time.Second}))
	fx := &fixture{ks: f, clock: clock.NewFake(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)), logs: &recorder{}}
	o := Options{Clock: fx.clock, Logger: slog.New(fx.logs), MaxStaleness: testMaxStale, MaxUnconfirmed: testMaxUnconfirmed}
	for _, opt := range opts {
		opt(&o)
	}
	fx.v = New(keystorev1.NewKeystoreServiceClient(conn), o)
	fx.v.minBackoff, fx.v.maxBackoff = time.Millisecond, 10*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fx.v.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
	})
	fx.waitStreaming(t)
	return fx
}

// waitStreaming waits until a stream is open and heard from.
func (fx *fixture) waitStreaming(t testing.TB) {
	t.Helper()
	require.Eventually(t, fx.v.streaming.Load, 5*time.Second, time.Millisecond)
}

// cutOff breaks the stream and refuses new ones until restore.
func (fx *fixture) cutOff(t testing.TB) {
	t.Helper()
	fx.ks.refuse.Store(true)
	fx.ks.breakStreams()
	require.Eventually(t, func() bool { return !fx.v.streaming.Load() }, 5*time.Second, time.Millisecond)
}

// restore lets streams open again and waits until one is heard from.
func (fx *fixture) restore(t testing.TB) {
	t.Helper()
	fx.ks.refuse.Store(false)
	fx.waitStreaming(t)
}

func (fx *fixture) revision() int64 {
	fx.v.mu.RLock()
	defer fx.v.mu.RUnlock()
	return fx.v.rev
}

func (fx *fixture) key(t testing.TB, mut func(*keystorev1.VerifyKeyResponse)) (string, string) {
	t.Helper()
	id := keyformat.NewID()
	text, _ := keyformat.New(keyformat.Standard, id)
	r := &keystorev1.VerifyKeyResponse{Key: &keystorev1.Key{Id: id, Enabled: true, State: keystorev1.KeyState_KEY_STATE_ACTIVE}}
	if mut != nil {
		mut(r)
	}
	fx.ks.set(text, r)
	return id, text
}

func (fx *fixture) verifyOK(t *testing.T, secret string) {
	t.Helper()
	_, err := fx.v.Verify(t.Context(), secret)
	require.NoError(t, err)
}

// fromCache verifies secret and checks that no keystore call was made.
func (fx *fixture) fromCache(t *testing.T, secret string) {
	t.Helper()
	before := fx.ks.calls.Load()
	fx.verifyOK(t, secret)
	require.Equal(t, before, fx.ks.calls.Load(), "answered from the cache")
}

func (fx *fixture) requireUnavailable(t *testing.T, secret string) {
	t.Helper()
	_, err := fx.v.Verify(t.Context(), secret)
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrInvalidKey, "fails closed, as unavailable")
}

func (fx *fixture) rejected(secret string) func() bool {
	return func() bool {
		_, err := fx.v.Verify(context.Background(), secret)
		return errors.Is(err, ErrInvalidKey)
	}
}

// recorder is a slog handler that keeps the records' messages.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	if rec.Level < slog.LevelInfo {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// count is how many records have a message starting with prefix.
func (r *recorder) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if len(m) >= len(prefix) && m[:len(prefix)] == prefix {
			n++
		}
	}
	return n
}

const (
	logUp        = "key change stream up"
	logLost      = "key change stream lost"
	logResumed   = "key change stream resumed"
	logResynced  = "key change stream resynced"
	logUnconfirm = "key cache unconfirmed"
)

func TestCacheHitMakesNoCall(t *testing.T) {
	fx := start(t)
	id, secret := fx.key(t, nil)
	k, err := fx.v.Verify(t.Context(), secret)
	require.NoError(t, err)
	require.Equal(t, id, k.Levels.Key.GetId())
	require.EqualValues(t, 1, fx.ks.calls.Load())
	for range 10 {
		fx.verifyOK(t, secret)
	}
	require.EqualValues(t, 1, fx.ks.calls.Load())
	require.Equal(t, 1, fx.v.Len())
	allocs := testing.AllocsPerRun(100, func() { _, _ = fx.v.Verify(context.Background(), secret) })
	require.Zero(t, allocs)
}

func TestInvalidKeys(t *testing.T) {
	fx := start(t)
	unknown, _ := keyformat.New(keyformat.Standard, keyformat.NewID())
	_, valid := fx.key(t, nil)
	cases := []struct {
		name  string
		text  string
		calls int64
	}{
		{"empty", "", 0},
		{"malformed", "kg_nothing", 0},
		{"typo", valid[:len(valid)-1] + "!", 0},
		{"too long", valid + valid, 0},
		{"unknown", unknown, 1},
		{"unknown again: the keystore is asked", unknown, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := fx.ks.calls.Load()
			_, err := fx.v.Verify(t.Context(), c.text)
			require.ErrorIs(t, err, ErrInvalidKey)
			require.Equal(t, c.calls, fx.ks.calls.Load()-before)
		})
	}
	require.Zero(t, fx.v.Len(), "failures are not cached as verifications")
}

func TestUnreachableIsNotInvalid(t *testing.T) {
	fx := start(t)
	_, secret := fx.key(t, nil)
	fx.ks.broken.Store(true)
	fx.requireUnavailable(t, secret)
}

func TestChangesDropEntries(t *testing.T) {
	fx := start(t)
	id, secret := fx.key(t, nil)
	_, other := fx.key(t, nil)
	fx.verifyOK(t, secret)
	fx.verifyOK(t, other)
	require.Equal(t, 2, fx.v.Len())

	for _, typ := range []keystorev1.WatchKeyChangesResponse_Type{
		keystorev1.WatchKeyChangesResponse_TYPE_UPDATED, keystorev1.WatchKeyChangesResponse_TYPE_DELETED,
	} {
		t.Run(typ.String(), func(t *testing.T) {
			fx.verifyOK(t, secret)
			fx.ks.set(secret, nil) // the keystore now rejects it
			rev := fx.ks.change(typ, id)
			require.Eventually(t, func() bool { return fx.v.Len() == 1 }, 5*time.Second, time.Millisecond)
			require.Equal(t, rev-1, fx.revision(), "resumes before the change's revision")
			_, err := fx.v.Verify(t.Context(), secret)
			require.ErrorIs(t, err, ErrInvalidKey)
			fx.ks.set(secret, &keystorev1.VerifyKeyResponse{Key: &keystorev1.Key{Id: id}})
		})
	}
	// The other key stayed cached throughout.
	fx.fromCache(t, other)
}

// A broken stream keeps the cache and resumes from its revision: nothing
// is dropped, nothing asked again.
func TestStreamBreakKeepsCacheAndResumes(t *testing.T) {
	fx := start(t)
	_, secret := fx.key(t, nil)
	fx.verifyOK(t, secret)
	fx.ks.change(keystorev1.WatchKeyChangesResponse_TYPE_UPDATED, keyformat.NewID())
	fx.ks.progress()
	require.Eventually(t, func() bool { return fx.revision() == 101 }, 5*time.Second, time.Millisecond)

	fx.cutOff(t)
	require.Equal(t, 1, fx.v.Len(), "kept")
	fx.fromCache(t, secret)
	fx.restore(t)
	starts := fx.ks.streams()
	require.Equal(t, int64(0), starts[0], "the first stream starts with a RESET")
	require.Equal(t, int64(101), starts[len(starts)-1], "the last resumes from the revision applied")
	fx.fromCache(t, secret)
	require.Equal(t, 1, fx.logs.count(logUp))
	require.Equal(t, 1, fx.logs.count(logLost))
	require.Equal(t, 1, fx.logs.count(logResumed))
	require.Zero(t, fx.logs.count(logResynced))
}

// A key disabled while the stream was down answers from the cache until
// the stream resumes, then is rejected; the other keys stay cached.
func TestKeyRevokedWhileCutOffIsRejectedOnResume(t *testing.T) {
	fx := start(t)
	idA, a := fx.key(t, nil)
	_, b := fx.key(t, nil)
	fx.verifyOK(t, a)
	fx.verifyOK(t, b)

	fx.cutOff(t)
	fx.ks.set(a, nil)
	fx.ks.change(keystorev1.WatchKeyChangesResponse_TYPE_UPDATED, idA)
	fx.fromCache(t, a) // the cache cannot know yet
	fx.restore(t)
	require.Eventually(t, fx.rejected(a), 5*time.Second, time.Millisecond)
	fx.fromCache(t, b)
	require.Equal(t, 1, fx.v.Len())
	require.Zero(t, fx.logs.count(logResynced))
}

// When the changes since the cache's revision were compacted away, the
// stream resumes with a RESET: the cache is kept until then, dropped there
// and rebuilt from the keystore.
func TestCompactionWhileCutOffResyncs(t *testing.T) {
	fx := start(t)
	idA, a := fx.key(t, nil)
	_, b := fx.key(t, nil)
	fx.verifyOK(t, a)
	fx.verifyOK(t, b)

	fx.cutOff(t)
	fx.ks.set(a, nil)
	fx.ks.change(keystorev1.WatchKeyChangesResponse_TYPE_DELETED, idA)
	fx.ks.compact()
	require.Equal(t, 2, fx.v.Len(), "kept while cut off")
	fx.fromCache(t, b)

	fx.restore(t)
	require.Eventually(t, func() bool { return fx.v.Len() == 0 }, 5*time.Second, time.Millisecond, "dropped at the RESET")
	require.Equal(t, 1, fx.logs.count(logResynced))
	require.Equal(t, int64(101), fx.revision())
	before := fx.ks.calls.Load()
	fx.verifyOK(t, b)
	require.Equal(t, before+1, fx.ks.calls.Load())
	fx.fromCache(t, b)
	_, err := fx.v.Verify(t.Context(), a)
	require.ErrorIs(t, err, ErrInvalidKey)
	require.Equal(t, 1, fx.v.Len(), "rebuilt")
}

// Past MaxUnconfirmed without the stream, the cache stops answering: every
// Verify asks the keystore and fails closed when it is down. The stream's
// return makes it answer again, without a restart.
func TestUnconfirmedBound(t *testing.T) {
	fx := start(t)
	_, secret := fx.key(t, nil)
	fx.verifyOK(t, secret)
	fx.cutOff(t)
	fx.clock.Advance(testMaxUnconfirmed)
	fx.fromCache(t, secret)
	require.Zero(t, fx.logs.count(logUnconfirm))

	fx.clock.Advance(time.Nanosecond)
	before := fx.ks.calls.Load()
	fx.verifyOK(t, secret)
	require.Equal(t, before+1, fx.ks.calls.Load(), "past the bound: asked the keystore")
	fx.ks.broken.Store(true)
	for range 10 {
		fx.requireUnavailable(t, secret)
	}
	require.Equal(t, 1, fx.logs.count(logUnconfirm), "logged once")

	// Recovery: the stream resumes, the cache answers again.
	fx.ks.broken.Store(false)
	fx.restore(t)
	fx.fromCache(t, secret)
	require.Equal(t, 1, fx.logs.count(logResumed))
	require.Equal(t, 1, fx.logs.count(logUnconfirm))
}

// Cache misses always ask the keystore: a key never seen fails closed
// while it is down, even within the bound.
func TestUnknownKeyFailsClosed(t *testing.T) {
	fx := start(t)
	_, known := fx.key(t, nil)
	_, unseen := fx.key(t, nil)
	fx.verifyOK(t, known)
	fx.cutOff(t)
	fx.ks.broken.Store(true)
	fx.fromCache(t, known)
	fx.requireUnavailable(t, unseen)
	unknown, _ := keyformat.New(keyformat.Standard, keyformat.NewID())
	fx.requireUnavailable(t, unknown)
}

// A key the keystore rejected stays rejected while the keystore cannot
// answer, within the bound; a change of the key forgets the rejection.
func TestRejectionAnswersWhenKeystoreDown(t *testing.T) {
	fx := start(t)
	id, secret := fx.key(t, nil)
	fx.verifyOK(t, secret)
	fx.ks.set(secret, nil)
	fx.ks.change(keystorev1.WatchKeyChangesResponse_TYPE_UPDATED, id)
	require.Eventually(t, fx.rejected(secret), 5*time.Second, time.Millisecond)

	fx.ks.broken.Store(true)
	_, err := fx.v.Verify(t.Context(), secret)
	require.ErrorIs(t, err, ErrInvalidKey, "stream up, keystore down")
	fx.cutOff(t)
	_, err = fx.v.Verify(t.Context(), secret)
	require.ErrorIs(t, err, ErrInvalidKey, "both down, within the bound")
	fx.clock.Advance(testMaxUnconfirmed + time.Nanosecond)
	fx.requireUnavailable(t, secret)

	// The key is enabled again while nothing answers: once the stream
	// resumes, the rejection is forgotten.
	fx.ks.change(keystorev1.WatchKeyChangesResponse_TYPE_UPDATED, id)
	fx.restore(t)
	require.Eventually(t, func() bool {
		_, err := fx.v.Verify(context.Background(), secret)
		return err != nil && !errors.Is(err, ErrInvalidKey)
	}, 5*time.Second, time.Millisecond)
}

// An open stream that stays silent for MaxStaleness is reopened from its
// revision; the cache keeps answering.
func TestSilentStreamIsReopened(t *testing.T) {
	fx := start(t)
	_, secret := fx.key(t, nil)
	fx.verifyOK(t, secret)
	fx.clock.Advance(testMaxStale + time.Nanosecond)
	require.Eventually(t, func() bool { return len(fx.ks.streams()) == 2 }, 5*time.Second, time.Millisecond)
	require.Equal(t, []int64{0, 100}, fx.ks.streams())
	fx.waitStreaming(t)
	fx.fromCache(t, secret)
	require.Equal(t, 1, fx.logs.count(logLost))
	require.Equal(t, 1, fx.logs.count(logResumed))
}

func TestExpiryCheckedOnHit(t *testing.T) {
	fx := start(t)
	now := fx.clock.Now()
	_, expiring := fx.key(t, func(r *keystorev1.VerifyKeyResponse) {
		r.Key.ExpireTime = timestamppb.New(now.Add(2 * time.Second))
	})
	_, graced := fx.key(t, func(r *keystorev1.VerifyKeyResponse) {
		r.SecretExpireTime = timestamppb.New(now.Add(3 * time.Second))
	})
	fx.verifyOK(t, expiring)
	fx.verifyOK(t, graced)
	calls := fx.ks.calls.Load()

	fx.clock.Advance(2 * time.Second)
	_, err := fx.v.Verify(t.Context(), expiring)
	require.ErrorIs(t, err, ErrInvalidKey)
	fx.verifyOK(t, graced)
	fx.clock.Advance(time.Second)
	_, err = fx.v.Verify(t.Context(), graced)
	require.ErrorIs(t, err, ErrInvalidKey)
	require.Equal(t, calls, fx.ks.calls.Load(), "decided from the cache")
}

// Expiry is checked on the clock while the stream is down too.
func TestExpiryCheckedWhileCutOff(t *testing.T) {
	fx := start(t)
	_, secret := fx.key(t, func(r *keystorev1.VerifyKeyResponse) {
		r.Key.ExpireTime = timestamppb.New(fx.clock.Now().Add(time.Minute))
	})
	fx.verifyOK(t, secret)
	fx.cutOff(t)
	fx.fromCache(t, secret)
	fx.clock.Advance(time.Minute)
	_, err := fx.v.Verify(t.Context(), secret)
	require.ErrorIs(t, err, ErrInvalidKey)
}

func TestUnconfirmedGauge(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	fx := start(t, func(o *Options) { o.Meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)) })
	gauge := func() float64 {
		var rm metricdata.ResourceMetrics
		require.NoError(t, reader.Collect(t.Context(), &rm))
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if m.Name == "keygate.keycache.unconfirmed_seconds" {
					return m.Data.(metricdata.Gauge[float64]).DataPoints[0].Value
				}
			}
		}
		t.Fatal("no keygate.keycache.unconfirmed_seconds")
		return 0
	}
	require.Zero(t, gauge())
	fx.clock.Advance(time.Second)
	require.Zero(t, gauge(), "within the stream's silence bound")
	fx.cutOff(t)
	require.Equal(t, 1.0, gauge())
	fx.clock.Advance(10 * time.Second)
	require.Equal(t, 11.0, gauge())
	fx.restore(t)
	require.Zero(t, gauge())
}

func BenchmarkVerifyHit(b *testing.B) {
	fx := start(b)
	_, secret := fx.key(b, nil)
	ctx := context.Background()
	if _, err := fx.v.Verify(ctx, secret); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := fx.v.Verify(ctx, secret); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if fx.ks.calls.Load() != 1 {
		b.Fatalf("%d keystore calls, want 1", fx.ks.calls.Load())
	}
}
