package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/internal/keycache"
	"github.com/keygate/keygate/internal/limitpolicy"
	"github.com/keygate/keygate/services/edge"
	"github.com/keygate/keygate/services/limiter"
)

// The tests of this file decide governance (#14) with a real limiter
// replica behind a real edge, both on one injected clock. The keys' levels
// are handed to the edge as the keystore's VerifyKey will answer them
// (levelVerifier); governance_test.go drives the same through the whole
// binary once the keystore's side is merged.

var errLevelKey = errors.New("invalid API key")

// levelVerifier answers the levels of each secret as VerifyKey would.
type levelVerifier struct {
	mu   sync.Mutex
	keys map[string]*keycache.Verified
}

func (v *levelVerifier) Verify(_ context.Context, secret string) (*keycache.Verified, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if k, ok := v.keys[secret]; ok {
		return k, nil
	}
	return nil, errLevelKey
}

// localLimiter calls the replica in-process, as the edge's limiter client
// does for a replica in its own process.
type localLimiter struct{ s *limiter.Server }

func (l localLimiter) Check(ctx context.Context, items []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error) {
	resp, err := l.s.Check(ctx, &limiterv1.CheckRequest{Items: items})
	return resp.GetResults(), err
}

func (l localLimiter) Settle(ctx context.Context, s []*limiterv1.Settlement) error {
	_, err := l.s.Settle(ctx, &limiterv1.SettleRequest{Settlements: s})
	return err
}

func (l localLimiter) Release(ctx context.Context, r []*limiterv1.Release) error {
	_, err := l.s.Release(ctx, &limiterv1.ReleaseRequest{Releases: r})
	return err
}

// levelRegistry serves the built-in mock provider and its models.
type levelRegistry struct {
	keystorev1.UnimplementedKeystoreServiceServer
}

func (levelRegistry) ListModels(context.Context, *keystorev1.ListModelsRequest) (*keystorev1.ListModelsResponse, error) {
	return &keystorev1.ListModelsResponse{Models: []*keystorev1.Model{
		{Id: "mock-small", Provider: "mock", InputPricePerMillionUsd: "0.15", OutputPricePerMillionUsd: "0.60"}}}, nil
}

func (levelRegistry) ListProviders(context.Context, *keystorev1.ListProvidersRequest) (*keystorev1.ListProvidersResponse, error) {
	return &keystorev1.ListProvidersResponse{Providers: []*keystorev1.Provider{{Id: "mock", BaseUrl: "mock"}}}, nil
}

// levelUsage takes usage records and forgets them.
type levelUsage struct {
	usagev1.UnimplementedUsageServiceServer
}

func (levelUsage) RecordUsage(_ context.Context, in *usagev1.RecordUsageRequest) (*usagev1.RecordUsageResponse, error) {
	return &usagev1.RecordUsageResponse{Accepted: int32(len(in.GetRecords()))}, nil
}

type levelEdge struct {
	url      string
	clock    *clock.Fake
	verifier *levelVerifier
	reader   *sdkmetric.ManualReader
}

func startLevelEdge(t *testing.T) *levelEdge {
	t.Helper()
	le := &levelEdge{clock: clock.NewFake(time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)),
		verifier: &levelVerifier{keys: map[string]*keycache.Verified{}}, reader: sdkmetric.NewManualReader()}
	lim, err := limiter.New(t.Context(), limiter.Config{Clock: le.clock})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lim.Close() })
	gs := grpctest.Serve(t, func(r grpc.ServiceRegistrar) {
		keystorev1.RegisterKeystoreServiceServer(r, levelRegistry{})
		usagev1.RegisterUsageServiceServer(r, levelUsage{})
	})
	conn := grpctest.Dial(t, gs.Addr)
	es, err := edge.New(edge.Config{Verifier: le.verifier, ErrInvalidKey: errLevelKey, Limiter: localLimiter{lim},
		Usage: usagev1.NewUsageServiceClient(conn), Registry: keystorev1.NewKeystoreServiceClient(conn),
		Clock: le.clock, Meter: sdkmetric.NewMeterProvider(sdkmetric.WithReader(le.reader)), ModelRefresh: time.Hour})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	le.url = "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = lim.Run(ctx) })
	wg.Go(func() { _ = es.Run(ctx) })
	hs := &http.Server{Handler: es.Handler()}
	wg.Go(func() { _ = hs.Serve(ln) })
	t.Cleanup(func() { cancel(); _ = hs.Close(); wg.Wait() })
	require.Eventually(t, func() bool {
		resp, err := http.Get(le.url + "/healthz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 5*time.Millisecond)
	return le
}

// key sets secret as key id of owner in ws with those levels.
func (le *levelEdge) key(secret, id, owner string, ws *keystorev1.Workspace, m *keystorev1.Member) {
	le.verifier.mu.Lock()
	defer le.verifier.mu.Unlock()
	le.verifier.keys[secret] = &keycache.Verified{Levels: limitpolicy.Levels{
		Key:       &keystorev1.Key{Id: id, Workspace: "acme", Owner: owner, State: keystorev1.KeyState_KEY_STATE_ACTIVE},
		Workspace: ws, Member: m}}
}

func (le *levelEdge) chat(t *testing.T, secret string, maxTokens int) (int, http.Header, map[string]any) {
	t.Helper()
	return rest(t, "POST", le.url+"/v1/chat/completions", secret, map[string]any{"model": "mock-small", "max_tokens": maxTokens,
		"messages": []any{map[string]any{"role": "user", "content": "hi"}}})
}

// requireLimitedBy requires a 429 naming limit.
func requireLimitedBy(t *testing.T, limit string, code int, hdr http.Header, body map[string]any) {
	t.Helper()
	require.Equal(t, http.StatusTooManyRequests, code, body)
	require.Equal(t, limit, hdr.Get("X-Keygate-Limited-By"))
}

func rpmPolicy(n int64) *typev1.Policy {
	return &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: n}}
}

func TestEdgeLevelsWorkspaceShared(t *testing.T) {
	t.Parallel()
	le := startLevelEdge(t)
	ws := &keystorev1.Workspace{Id: "acme", Limits: rpmPolicy(2)}
	le.key("kg_a", "ka", "alice", ws, nil)
	le.key("kg_b", "kb", "bob", ws, nil)
	for _, s := range []string{"kg_a", "kg_b"} {
		code, _, body := le.chat(t, s, 8)
		require.Equal(t, http.StatusOK, code, body)
	}
	code, hdr, body := le.chat(t, "kg_a", 8)
	requireLimitedBy(t, "workspace/rpm", code, hdr, body)
	require.NotEmpty(t, hdr.Get("Retry-After"))
}

func TestEdgeLevelsMember(t *testing.T) {
	t.Parallel()
	le := startLevelEdge(t)
	ws := &keystorev1.Workspace{Id: "acme"}
	alice := &keystorev1.Member{Workspace: "acme", Member: "alice", Limits: rpmPolicy(1)}
	le.key("kg_a1", "ka1", "alice", ws, alice)
	le.key("kg_a2", "ka2", "alice", ws, alice)
	le.key("kg_b", "kb", "bob", ws, &keystorev1.Member{Workspace: "acme", Member: "bob"})
	code, _, body := le.chat(t, "kg_a1", 8)
	require.Equal(t, http.StatusOK, code, body)
	code, hdr, body := le.chat(t, "kg_a2", 8)
	requireLimitedBy(t, "member/rpm", code, hdr, body)
	for range 3 {
		code, _, body := le.chat(t, "kg_b", 8)
		require.Equal(t, http.StatusOK, code, body, "another member's keys are not limited")
	}
}

func TestEdgeLevelsCredits(t *testing.T) {
	t.Parallel()
	le := startLevelEdge(t)
	// One cent: a request reserving 100k output tokens ($0.06) is refused.
	le.key("kg_c", "kc", "alice", &keystorev1.Workspace{Id: "acme", CreditsGrantedUsd: "0.01"}, nil)
	code, _, body := le.chat(t, "kg_c", 8)
	require.Equal(t, http.StatusOK, code, body, "a small request is covered")
	code, hdr, body := le.chat(t, "kg_c", 100_000)
	require.Equal(t, http.StatusPaymentRequired, code, body)
	require.Equal(t, "insufficient_credits", body["error"].(map[string]any)["code"])
	require.Equal(t, "insufficient_credits", body["error"].(map[string]any)["type"])
	require.Equal(t, "false", hdr.Get("X-Should-Retry"))
	require.Empty(t, hdr.Values("Retry-After"))
	require.Equal(t, "workspace/credits", hdr.Get("X-Keygate-Limited-By"))

	req, err := http.NewRequestWithContext(t.Context(), "POST", le.url+"/v1/messages",
		strings.NewReader(`{"model":"mock-small","max_tokens":100000,"messages":[{"role":"user","content":"hi"}]}`))
	require.NoError(t, err)
	req.Header.Set("x-api-key", "kg_c")
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var ant map[string]any
	require.NoError(t, jsonDecode(resp.Body, &ant))
	require.Equal(t, http.StatusPaymentRequired, resp.StatusCode, ant)
	require.Equal(t, "error", ant["type"])
	require.Equal(t, "billing_error", ant["error"].(map[string]any)["type"])
	require.Equal(t, "false", resp.Header.Get("X-Should-Retry"))
	require.Empty(t, resp.Header.Values("Retry-After"))
}

// reportDenials sums keygate.edge.report_denials at level and limit.
func (le *levelEdge) reportDenials(t *testing.T, level, limit string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, le.reader.Collect(t.Context(), &rm))
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			s, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != "keygate.edge.report_denials" || !ok {
				continue
			}
			for _, p := range s.DataPoints {
				lv, _ := p.Attributes.Value("level")
				lim, _ := p.Attributes.Value("limit")
				if lv.AsString() == level && lim.AsString() == limit {
					n += p.Value
				}
			}
		}
	}
	return n
}

func TestEdgeLevelsReportMode(t *testing.T) {
	t.Parallel()
	le := startLevelEdge(t)
	le.key("kg_r", "kr", "alice", &keystorev1.Workspace{Id: "acme", ReportLimits: rpmPolicy(1)}, nil)
	for range 4 {
		code, hdr, body := le.chat(t, "kg_r", 8)
		require.Equal(t, http.StatusOK, code, body, "a report-mode limit never denies")
		require.Empty(t, hdr.Values("X-Keygate-Limited-By"))
	}
	require.EqualValues(t, 3, le.reportDenials(t, "workspace", "rpm"), "every request past the limit is counted")
}

func TestEdgeLevelsOverrideReverts(t *testing.T) {
	t.Parallel()
	le := startLevelEdge(t)
	ws := &keystorev1.Workspace{Id: "acme", Limits: rpmPolicy(1),
		LimitOverride: &typev1.Override{Policy: rpmPolicy(100), ExpireTime: timestamppb.New(le.clock.Now().Add(time.Hour))}}
	le.key("kg_o", "ko", "alice", ws, nil)
	for range 3 {
		code, _, body := le.chat(t, "kg_o", 8)
		require.Equal(t, http.StatusOK, code, body, "the override is in force")
	}
	le.clock.Advance(time.Hour)
	code, _, body := le.chat(t, "kg_o", 8)
	require.Equal(t, http.StatusOK, code, body)
	code, hdr, body := le.chat(t, "kg_o", 8)
	requireLimitedBy(t, "workspace/rpm", code, hdr, body)
}
