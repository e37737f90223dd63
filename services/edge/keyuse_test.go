package edge_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/services/edge"
)

// keyUseServer takes RecordKeyUse over loopback gRPC; down simulates an
// outage.
type keyUseServer struct {
	keystorev1.UnimplementedKeystoreServiceServer
	mu       sync.Mutex
	down     bool
	attempts int
	calls    []*keystorev1.RecordKeyUseRequest
}

func (k *keyUseServer) RecordKeyUse(_ context.Context, in *keystorev1.RecordKeyUseRequest) (*keystorev1.RecordKeyUseResponse, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.attempts++
	if k.down {
		return nil, status.Error(codes.Unavailable, "keystore outage")
	}
	k.calls = append(k.calls, proto.Clone(in).(*keystorev1.RecordKeyUseRequest))
	return &keystorev1.RecordKeyUseResponse{}, nil
}

func (k *keyUseServer) setDown(down bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.down = down
}

func (k *keyUseServer) accepted() []*keystorev1.RecordKeyUseRequest {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]*keystorev1.RecordKeyUseRequest(nil), k.calls...)
}

// startKeyUse serves a keyUseServer on loopback and returns a client of it.
func startKeyUse(tb testing.TB) (*keyUseServer, keystorev1.KeystoreServiceClient) {
	tb.Helper()
	k := &keyUseServer{}
	s := grpctest.Serve(tb, func(r grpc.ServiceRegistrar) { keystorev1.RegisterKeystoreServiceServer(r, k) })
	return k, keystorev1.NewKeystoreServiceClient(grpctest.Dial(tb, s.Addr))
}

type usedAt struct {
	ws, key string
	t       time.Time
}

func uses(req *keystorev1.RecordKeyUseRequest) []usedAt {
	var out []usedAt
	for _, u := range req.GetUses() {
		out = append(out, usedAt{u.GetWorkspace(), u.GetKey(), u.GetTime().AsTime()})
	}
	return out
}

const otherKey = "kg_other"

func startKeyUseEdge(t *testing.T, every time.Duration) (*harness, *keyUseServer) {
	t.Helper()
	ks, client := startKeyUse(t)
	h := startEdge(t, options{config: func(c *edge.Config) {
		c.KeyUse = client
		c.KeyUseInterval = every
	}})
	h.verifier.set(otherKey, &keystorev1.Key{Id: "key3", Workspace: "beta", Owner: "bob",
		Kind: keystorev1.KeyKind_KEY_KIND_STANDARD, State: keystorev1.KeyState_KEY_STATE_ACTIVE})
	return h, ks
}

// TestKeyUseAggregated: many requests on two keys make one RecordKeyUse
// call with each key once, at its latest admitted request; refused requests
// do not count.
func TestKeyUseAggregated(t *testing.T) {
	t.Parallel()
	h, ks := startKeyUseEdge(t, time.Hour)
	var last time.Time
	for range 5 {
		last = h.clock.Now()
		for _, key := range []string{goodKey, otherKey} {
			require.Equal(t, http.StatusOK, h.post(t, "/v1/chat/completions", key, chatBody).status)
		}
		h.clock.Advance(time.Second)
	}
	// Neither a denied request nor a bad key is a use.
	h.limiter.setDecide(func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
		return &limiterv1.CheckResult{Allowed: false}, nil
	})
	require.NotEqual(t, http.StatusOK, h.post(t, "/v1/chat/completions", goodKey, chatBody).status)
	require.Equal(t, http.StatusUnauthorized, h.post(t, "/v1/chat/completions", "kg_unknown", chatBody).status)
	require.Empty(t, ks.accepted(), "nothing is sent before the interval")

	require.NoError(t, h.srv.Close(t.Context()))
	calls := ks.accepted()
	require.Len(t, calls, 1)
	require.ElementsMatch(t, []usedAt{{"acme", "key1", last}, {"beta", "key3", last}}, uses(calls[0]))

	require.NoError(t, h.srv.Close(t.Context()))
	require.Len(t, ks.accepted(), 1, "nothing new to send")
}

// TestKeyUseRetried: uses a failed flush could not deliver go with the
// next one, merged with newer uses.
func TestKeyUseRetried(t *testing.T) {
	t.Parallel()
	h, ks := startKeyUseEdge(t, time.Hour)
	first := h.clock.Now()
	for _, key := range []string{goodKey, otherKey} {
		require.Equal(t, http.StatusOK, h.post(t, "/v1/chat/completions", key, chatBody).status)
	}
	ks.setDown(true)
	require.ErrorContains(t, h.srv.Close(t.Context()), "last-used times of 2 keys not recorded")
	require.Contains(t, h.logs.String(), "recording key use failed")

	h.clock.Advance(time.Minute)
	require.Equal(t, http.StatusOK, h.post(t, "/v1/chat/completions", goodKey, chatBody).status)
	ks.setDown(false)
	require.NoError(t, h.srv.Close(t.Context()))
	calls := ks.accepted()
	require.Len(t, calls, 1)
	require.ElementsMatch(t, []usedAt{{"acme", "key1", first.Add(time.Minute)}, {"beta", "key3", first}}, uses(calls[0]))
	require.Zero(t, h.counter(t, "keygate.edge.key_use.dropped"))
}

// TestKeyUseRun: Run flushes on its own every KeyUseInterval.
func TestKeyUseRun(t *testing.T) {
	t.Parallel()
	h, ks := startKeyUseEdge(t, 10*time.Millisecond)
	now := h.clock.Now()
	require.Equal(t, http.StatusOK, h.post(t, "/v1/chat/completions", goodKey, chatBody).status)
	require.Eventually(t, func() bool { return len(ks.accepted()) == 1 }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, []usedAt{{"acme", "key1", now}}, uses(ks.accepted()[0]))
}

func TestKeyUseIntervalMustNotBeNegative(t *testing.T) {
	t.Parallel()
	// New dials nothing, so a client of an unused address will do.
	conn := grpctest.Dial(t, "127.0.0.1:1")
	client := keystorev1.NewKeystoreServiceClient(conn)
	_, err := edge.New(edge.Config{
		Verifier: &fakeVerifier{}, ErrInvalidKey: errInvalidKey, Limiter: &fakeLimiter{},
		Usage: usagev1.NewUsageServiceClient(conn), Registry: client, KeyUse: client, KeyUseInterval: -time.Second,
	})
	require.ErrorContains(t, err, "must not be negative")
}
