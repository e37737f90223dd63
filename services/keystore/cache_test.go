package keystore_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/internal/keycache"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/pkg/keyformat"
)

// startCache runs a keycache.Verifier against the env's keystore with the
// service (root) token, as the edge does.
func startCache(tb testing.TB, e *env) *keycache.Verifier {
	tb.Helper()
	return startCacheWith(tb, e, keycache.Options{Clock: e.clock}).v
}

// followed is a verifier with what the test watches of it.
type followed struct {
	v *keycache.Verifier
	// calls counts its VerifyKey calls.
	calls *atomic.Int64
	logs  *logRecorder
}

// startCacheWith is startCache with options (a nil Logger records the
// verifier's logs) and a count of the keystore calls. The connection
// redials a restarted keystore within milliseconds.
func startCacheWith(tb testing.TB, e *env, opts keycache.Options) followed {
	tb.Helper()
	f := followed{calls: &atomic.Int64{}, logs: &logRecorder{}}
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
		if method == keystorev1.KeystoreService_VerifyKey_FullMethodName {
			f.calls.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, o...)
	}
	conn := grpctest.Dial(tb, e.addr,
		grpc.WithPerRPCCredentials(auth.Token{Value: rootToken}), grpc.WithUnaryInterceptor(count),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 2, MaxDelay: 50 * time.Millisecond},
			// Else each attempt has only its backoff (5 ms) to connect.
			MinConnectTimeout: 20 * time.Second}))
	if opts.Logger == nil {
		opts.Logger = slog.New(f.logs)
	}
	f.v = keycache.New(keystorev1.NewKeystoreServiceClient(conn), opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.v.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	return f
}

// cached verifies secret until a verification no longer asks the
// keystore: secret itself is cached (an answer fetched while the stream
// moved is not cached, and the cache holding another key says nothing).
func (f followed) cached(tb testing.TB, secret string) {
	tb.Helper()
	require.Eventually(tb, func() bool {
		_, err := f.v.Verify(context.Background(), secret)
		require.NoError(tb, err)
		before := f.calls.Load()
		_, err = f.v.Verify(context.Background(), secret)
		require.NoError(tb, err)
		return f.calls.Load() == before
	}, 5*time.Second, time.Millisecond)
}

// fromCache verifies secret and checks that the keystore was not asked.
func (f followed) fromCache(tb testing.TB, secret string) {
	tb.Helper()
	before := f.calls.Load()
	_, err := f.v.Verify(context.Background(), secret)
	require.NoError(tb, err)
	require.Equal(tb, before, f.calls.Load(), "answered from the cache")
}

// waitLog waits until the verifier logged a message starting with prefix.
func (f followed) waitLog(tb testing.TB, prefix string) {
	tb.Helper()
	require.Eventually(tb, func() bool { return f.logs.count(prefix) > 0 }, 15*time.Second, time.Millisecond, "log %q", prefix)
}

func unavailable(tb testing.TB, v *keycache.Verifier, secret string) {
	tb.Helper()
	_, err := v.Verify(context.Background(), secret)
	require.Error(tb, err)
	require.NotErrorIs(tb, err, keycache.ErrInvalidKey, "unreachable is not invalid")
}

// logRecorder is a slog handler that keeps the records' messages.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// cached verifies secret until the answer comes from the cache.
func cached(tb testing.TB, v *keycache.Verifier, secret string) {
	tb.Helper()
	require.Eventually(tb, func() bool {
		_, err := v.Verify(context.Background(), secret)
		require.NoError(tb, err)
		return v.Len() > 0
	}, 5*time.Second, time.Millisecond)
}

func rejected(v *keycache.Verifier, secret string) func() bool {
	return func() bool {
		_, err := v.Verify(context.Background(), secret)
		return errors.Is(err, keycache.ErrInvalidKey)
	}
}

func TestCacheFollowsChanges(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 100, nil)
	v := startCache(t, e)
	ctx := e.root(t)
	cases := []struct {
		name   string
		change func(t *testing.T, id string) (newSecret string)
	}{
		{"disable", func(t *testing.T, id string) string {
			_, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: id,
				Patch: &keystorev1.Key{}, UpdateMask: mask("enabled")})
			require.NoError(t, err)
			return ""
		}},
		{"expire", func(t *testing.T, id string) string {
			_, err := e.client.ExpireKey(ctx, &keystorev1.ExpireKeyRequest{Workspace: "acme", Key: id})
			require.NoError(t, err)
			return ""
		}},
		{"rotate", func(t *testing.T, id string) string {
			r, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: id})
			require.NoError(t, err)
			return r.GetSecret()
		}},
		{"delete", func(t *testing.T, id string) string {
			_, err := e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: id})
			require.NoError(t, err)
			return ""
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, secret := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: c.name})
			cached(t, v, secret)
			newSecret := c.change(t, k.GetId())
			require.Eventually(t, rejected(v, secret), time.Second, time.Millisecond)
			if newSecret != "" {
				got, err := v.Verify(t.Context(), newSecret)
				require.NoError(t, err)
				require.Equal(t, k.GetId(), got.Levels.Key.GetId())
			}
		})
	}

	t.Run("expiry on the clock", func(t *testing.T) {
		_, secret := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "timed",
			ExpireTime: timestamppb.New(e.clock.Now().Add(time.Second))})
		cached(t, v, secret)
		e.clock.Advance(time.Second)
		_, err := v.Verify(t.Context(), secret)
		require.ErrorIs(t, err, keycache.ErrInvalidKey)
	})
}

// otherReplica serves a second keystore on the same etcd and returns a
// client of it: changes made there while the first is down reach the
// cache only through the resumed stream.
func otherReplica(t *testing.T, e *env) keystorev1.KeystoreServiceClient {
	t.Helper()
	other := &env{etcd: e.etcd, clock: e.clock}
	other.serve(t, "127.0.0.1:0")
	return keystorev1.NewKeystoreServiceClient(grpctest.Dial(t, other.addr))
}

func disable(t *testing.T, ctx context.Context, c keystorev1.KeystoreServiceClient, id string) {
	t.Helper()
	_, err := c.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: id,
		Patch: &keystorev1.Key{}, UpdateMask: mask("enabled")})
	require.NoError(t, err)
}

const (
	logLost     = "key change stream lost"
	logResumed  = "key change stream resumed"
	logResynced = "key change stream resynced"
)

// With the keystore gone, the keys the cache verified keep verifying, a
// key it saw rejected stays rejected, and a key it never saw fails closed.
func TestCacheServesThroughKeystoreOutage(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 100, nil)
	ctx := e.root(t)
	_, a := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "a"})
	kc, c := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "c"})
	_, d := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "d"})
	// Created before the cache starts, so that no creation reaches it
	// after its first verification (which would drop it, correctly).
	f := startCacheWith(t, e, keycache.Options{Clock: e.clock})
	f.cached(t, a)
	f.cached(t, c)
	disable(t, ctx, e.client, kc.GetId())
	require.Eventually(t, rejected(f.v, c), 5*time.Second, time.Millisecond)

	e.stop()
	f.waitLog(t, logLost)
	for range 20 {
		f.fromCache(t, a)
	}
	_, err := f.v.Verify(t.Context(), c)
	require.ErrorIs(t, err, keycache.ErrInvalidKey, "known rejected")
	unavailable(t, f.v, d)
	unknown, _ := keyformat.New(keyformat.Standard, keyformat.NewID())
	unavailable(t, f.v, unknown)
}

// A key disabled on another replica while the cache's keystore is down
// keeps answering from the cache (within the bound) until the stream
// resumes from its revision, then is rejected; the other keys stay cached,
// without a restart of anything but the keystore.
func TestCacheResumesAfterKeystoreRestart(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 100, nil)
	ctx := e.root(t)
	ka, a := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "a"})
	kb, b := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "b"})
	f := startCacheWith(t, e, keycache.Options{Clock: e.clock})
	f.cached(t, a)
	f.cached(t, b)

	addr := e.addr
	e.stop()
	f.waitLog(t, logLost)
	other := otherReplica(t, e)
	disable(t, ctx, other, ka.GetId())
	f.fromCache(t, a) // the cache cannot know yet

	e.serve(t, addr)
	require.Eventually(t, rejected(f.v, a), 15*time.Second, 5*time.Millisecond)
	f.fromCache(t, b)
	f.waitLog(t, logResumed)
	require.Equal(t, 1, f.logs.count(logResumed))
	require.Zero(t, f.logs.count(logResynced))

	// And it keeps following: a change after the resume lands too.
	disable(t, ctx, e.client, kb.GetId())
	require.Eventually(t, rejected(f.v, b), 5*time.Second, time.Millisecond)
}

// When the changes since the cache's revision are compacted while the
// stream is down, the resumed stream starts with a RESET: the cache keeps
// its keys until then, drops them there and fills again.
func TestCacheResyncsAfterCompaction(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 100, nil)
	ctx := e.root(t)
	ka, a := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "a"})
	_, b := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "b"})
	f := startCacheWith(t, e, keycache.Options{Clock: e.clock})
	f.cached(t, a)
	f.cached(t, b)

	addr := e.addr
	e.stop()
	f.waitLog(t, logLost)
	disable(t, ctx, otherReplica(t, e), ka.GetId())
	head, err := e.etcd.Client.Get(t.Context(), "/", clientv3.WithCountOnly())
	require.NoError(t, err)
	_, err = e.etcd.Client.Compact(t.Context(), head.Header.Revision)
	require.NoError(t, err)
	require.Equal(t, 2, f.v.Len(), "kept while cut off")
	f.fromCache(t, b)

	e.serve(t, addr)
	f.waitLog(t, logResynced)
	require.Zero(t, f.v.Len(), "dropped at the RESET")
	require.Zero(t, f.logs.count(logResumed))
	before := f.calls.Load()
	f.cached(t, b)
	require.Equal(t, before+1, f.calls.Load())
	f.fromCache(t, b)
	_, err = f.v.Verify(t.Context(), a)
	require.ErrorIs(t, err, keycache.ErrInvalidKey)
	require.Equal(t, 1, f.v.Len(), "filled again")
}

// Past MaxUnconfirmed without the stream, the cache stops answering and
// fails closed while the keystore is down; once the keystore is back, the
// stream resumes and the cache answers again.
func TestCacheFailsClosedPastMaxUnconfirmed(t *testing.T) {
	const bound = time.Minute
	e := newEnv(t)
	e.workspace(t, "acme", 100, nil)
	_, a := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "a"})
	f := startCacheWith(t, e, keycache.Options{Clock: e.clock, MaxUnconfirmed: bound})
	f.cached(t, a)

	addr := e.addr
	e.stop()
	f.waitLog(t, logLost)
	e.clock.Advance(bound)
	f.fromCache(t, a)
	e.clock.Advance(time.Nanosecond)
	for range 5 {
		unavailable(t, f.v, a)
	}
	require.Equal(t, 1, f.logs.count("key cache unconfirmed"), "logged once")

	e.serve(t, addr)
	f.waitLog(t, logResumed)
	f.fromCache(t, a)
}
