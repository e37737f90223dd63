package keycache

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/clock"
	"github.com/keygate/keygate/pkg/keyformat"
)

// fakeKeystore is a keystore whose answers and change stream the test
// controls, served over real gRPC.
type fakeKeystore struct {
	keystorev1.UnimplementedKeystoreServiceServer
	calls  atomic.Int64
	mu     sync.Mutex
	keys   map[string]*keystorev1.VerifyKeyResponse
	events chan *keystorev1.WatchKeyChangesResponse
	// broken makes VerifyKey fail as if storage were down.
	broken atomic.Bool
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
	return nil, status.Error(codes.Unauthenticated, "invalid API key")
}

// WatchKeyChanges sends a RESET, then whatever the test queues; a nil
// message ends the stream with an error.
func (f *fakeKeystore) WatchKeyChanges(_ *keystorev1.WatchKeyChangesRequest, st grpc.ServerStreamingServer[keystorev1.WatchKeyChangesResponse]) error {
	if err := st.Send(&keystorev1.WatchKeyChangesResponse{Type: keystorev1.WatchKeyChangesResponse_TYPE_RESET}); err != nil {
		return err
	}
	for {
		select {
		case <-st.Context().Done():
			return nil
		case m := <-f.events:
			if m == nil {
				return status.Error(codes.Unavailable, "stream broken")
			}
			if err := st.Send(m); err != nil {
				return err
			}
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

type fixture struct {
	ks    *fakeKeystore
	v     *Verifier
	clock *clock.Fake
}

func start(t testing.TB) *fixture {
	t.Helper()
	f := &fakeKeystore{keys: map[string]*keystorev1.VerifyKeyResponse{}, events: make(chan *keystorev1.WatchKeyChangesResponse)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer()
	keystorev1.RegisterKeystoreServiceServer(gs, f)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	fx := &fixture{ks: f, clock: clock.NewFake(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))}
	fx.v = New(keystorev1.NewKeystoreServiceClient(conn), Options{Clock: fx.clock, MaxStaleness: 5 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fx.v.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
	})
	fx.waitHealthy(t)
	return fx
}

func (fx *fixture) waitHealthy(t testing.TB) {
	t.Helper()
	require.Eventually(t, func() bool {
		fx.v.mu.RLock()
		defer fx.v.mu.RUnlock()
		return fx.v.healthy
	}, 5*time.Second, time.Millisecond)
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

func TestCacheHitMakesNoCall(t *testing.T) {
	fx := start(t)
	id, secret := fx.key(t, nil)
	k, err := fx.v.Verify(t.Context(), secret)
	require.NoError(t, err)
	require.Equal(t, id, k.GetId())
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
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := fx.ks.calls.Load()
			_, err := fx.v.Verify(t.Context(), c.text)
			require.ErrorIs(t, err, ErrInvalidKey)
			require.Equal(t, c.calls, fx.ks.calls.Load()-before)
		})
	}
	require.Zero(t, fx.v.Len(), "failures are not cached")
}

func TestUnreachableIsNotInvalid(t *testing.T) {
	fx := start(t)
	_, secret := fx.key(t, nil)
	fx.ks.broken.Store(true)
	_, err := fx.v.Verify(t.Context(), secret)
	require.Error(t, err)
	require.False(t, errors.Is(err, ErrInvalidKey))
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
			fx.ks.events <- &keystorev1.WatchKeyChangesResponse{Type: typ, Key: id}
			require.Eventually(t, func() bool { return fx.v.Len() == 1 }, 5*time.Second, time.Millisecond)
			_, err := fx.v.Verify(t.Context(), secret)
			require.ErrorIs(t, err, ErrInvalidKey)
			fx.key(t, nil)
			fx.ks.set(secret, &keystorev1.VerifyKeyResponse{Key: &keystorev1.Key{Id: id}})
		})
	}
	// The other key stayed cached throughout.
	before := fx.ks.calls.Load()
	fx.verifyOK(t, other)
	require.Equal(t, before, fx.ks.calls.Load())
}

func TestStreamEndDropsAllAndReconnects(t *testing.T) {
	fx := start(t)
	_, secret := fx.key(t, nil)
	fx.verifyOK(t, secret)
	fx.ks.events <- nil
	// The verifier reconnects and resets; the old entry is gone.
	require.Eventually(t, func() bool { return fx.v.Len() == 0 }, 5*time.Second, time.Millisecond)
	fx.waitHealthy(t)
	before := fx.ks.calls.Load()
	fx.verifyOK(t, secret)
	fx.verifyOK(t, secret)
	require.Equal(t, before+1, fx.ks.calls.Load())
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

func TestStaleStreamBypassesCache(t *testing.T) {
	fx := start(t)
	_, secret := fx.key(t, nil)
	fx.verifyOK(t, secret)
	calls := fx.ks.calls.Load()
	fx.clock.Advance(5 * time.Second)
	fx.verifyOK(t, secret)
	require.Equal(t, calls, fx.ks.calls.Load(), "fresh enough")

	fx.clock.Advance(time.Nanosecond)
	fx.verifyOK(t, secret)
	require.Equal(t, calls+1, fx.ks.calls.Load(), "stale: asked the keystore")

	// A progress message makes the cache trusted again.
	fx.ks.events <- &keystorev1.WatchKeyChangesResponse{Type: keystorev1.WatchKeyChangesResponse_TYPE_PROGRESS}
	require.Eventually(t, func() bool {
		return fx.clock.Now().UnixNano()-fx.v.lastHeard.Load() == 0
	}, 5*time.Second, time.Millisecond)
	fx.verifyOK(t, secret)
	require.Equal(t, calls+1, fx.ks.calls.Load())
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
