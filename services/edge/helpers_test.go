package edge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/internal/keycache"
	"github.com/keygate/keygate/internal/limitpolicy"
	"github.com/keygate/keygate/services/edge"
)

var errInvalidKey = errors.New("invalid API key")

const (
	goodKey  = "kg_good"
	adminKey = "kga_admin"
)

// fakeVerifier is an in-memory Verifier. Like the key cache, it answers
// with one Verified per key until the key is set again, so the edge's item
// templates are reused as they are in production.
type fakeVerifier struct {
	mu   sync.Mutex
	keys map[string]*keycache.Verified
	down bool
}

func (v *fakeVerifier) Verify(_ context.Context, secret string) (*keycache.Verified, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.down {
		return nil, errors.New("keystore unreachable")
	}
	k, ok := v.keys[secret]
	if !ok {
		return nil, errors.Join(errors.New("verify"), errInvalidKey)
	}
	return k, nil
}

func (v *fakeVerifier) set(secret string, k *keystorev1.Key) {
	v.setLevels(secret, limitpolicy.Levels{Key: k})
}

// setLevels sets a key with its workspace and member.
func (v *fakeVerifier) setLevels(secret string, l limitpolicy.Levels) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.keys[secret] = &keycache.Verified{Levels: l}
}

func (v *fakeVerifier) setDown() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.down = true
}

// fakeLimiter is an in-memory Limiter whose decisions the test chooses.
type fakeLimiter struct {
	mu       sync.Mutex
	decide   func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error)
	items    []*limiterv1.CheckItem
	settles  []*limiterv1.Settlement
	releases []*limiterv1.Release
}

func allow(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
	return &limiterv1.CheckResult{
		Allowed:  true,
		Requests: &limiterv1.Quota{Kind: limiterv1.LimitKind_LIMIT_KIND_RPM, Limit: 100, Remaining: 99, ResetAfter: durationpb.New(600 * time.Millisecond)},
		Tokens:   &limiterv1.Quota{Kind: limiterv1.LimitKind_LIMIT_KIND_TPD, Limit: 100000, Remaining: 90000, ResetAfter: durationpb.New(6 * time.Minute)},
	}, nil
}

func (l *fakeLimiter) Check(_ context.Context, items []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.items = append(l.items, items...)
	var out []*limiterv1.CheckResult
	for _, it := range items {
		r, err := l.decide(it)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (l *fakeLimiter) Settle(_ context.Context, s []*limiterv1.Settlement) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.settles = append(l.settles, s...)
	return nil
}

func (l *fakeLimiter) Release(_ context.Context, r []*limiterv1.Release) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.releases = append(l.releases, r...)
	return nil
}

func (l *fakeLimiter) setDecide(f func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.decide = f
}

func (l *fakeLimiter) checks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.items)
}

func (l *fakeLimiter) settled() ([]*limiterv1.Settlement, []*limiterv1.Release) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*limiterv1.Settlement(nil), l.settles...), append([]*limiterv1.Release(nil), l.releases...)
}

// usageServer is a UsageService served over loopback gRPC; down simulates
// an outage.
type usageServer struct {
	usagev1.UnimplementedUsageServiceServer
	mu    sync.Mutex
	down  bool
	got   map[string]*usagev1.UsageRecord
	order []string
	// refuse lists request ids answered InvalidArgument.
	refuse map[string]bool
	// next is, per producer, the sequence number after the last record
	// acknowledged: a batch starting beyond it would leave a gap, which
	// the ledger's exactly-once forbids.
	next map[string]uint64
}

func (u *usageServer) RecordUsage(_ context.Context, in *usagev1.RecordUsageRequest) (*usagev1.RecordUsageResponse, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.down {
		return nil, status.Error(codes.Unavailable, "usage outage")
	}
	if u.next == nil {
		u.next = map[string]uint64{}
	}
	p, first := in.GetProducer(), in.GetFirstSequence()
	if want := max(u.next[p], 1); p == "" || first == 0 || first > want {
		return nil, status.Errorf(codes.FailedPrecondition, "producer %q sent first_sequence %d, want at most %d", p, first, want)
	}
	for _, r := range in.GetRecords() {
		if u.refuse[r.GetRequestId()] {
			if len(in.GetRecords()) == 1 {
				// The sender drops a record refused alone: no gap.
				u.next[p] = max(u.next[p], first+1)
			}
			return nil, status.Errorf(codes.InvalidArgument, "record %q refused", r.GetRequestId())
		}
	}
	u.next[p] = max(u.next[p], first+uint64(len(in.GetRecords())))
	var resp usagev1.RecordUsageResponse
	for _, r := range in.GetRecords() {
		if _, dup := u.got[r.GetRequestId()]; dup {
			resp.Duplicates++
			continue
		}
		u.got[r.GetRequestId()] = r
		u.order = append(u.order, r.GetRequestId())
		resp.Accepted++
	}
	return &resp, nil
}

func (u *usageServer) setDown(down bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.down = down
}

func (u *usageServer) record(id string) *usagev1.UsageRecord {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.got[id]
}

func (u *usageServer) ids() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.order...)
}

// registryServer serves ListModels and ListProviders over loopback gRPC.
type registryServer struct {
	keystorev1.UnimplementedKeystoreServiceServer
	providers []*keystorev1.Provider
	models    []*keystorev1.Model
}

func (r *registryServer) ListModels(context.Context, *keystorev1.ListModelsRequest) (*keystorev1.ListModelsResponse, error) {
	return &keystorev1.ListModelsResponse{Models: r.models}, nil
}

func (r *registryServer) ListProviders(context.Context, *keystorev1.ListProvidersRequest) (*keystorev1.ListProvidersResponse, error) {
	return &keystorev1.ListProvidersResponse{Providers: r.providers}, nil
}

type options struct {
	providers []*keystorev1.Provider
	models    []*keystorev1.Model
	config    func(*edge.Config)
	// usage is the ledger to record to; nil = a new one. An edge
	// restarted against the same ledger shares it.
	usage *usageServer
}

type harness struct {
	url      string
	srv      *edge.Server
	verifier *fakeVerifier
	limiter  *fakeLimiter
	usage    *usageServer
	reader   *sdkmetric.ManualReader
	logs     *syncBuffer
	clock    *clock.Fake
	stop     func()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startEdge runs an edge on a loopback listener with a loopback gRPC usage
// ledger and model registry. The registry has a "mock" provider with
// mock-small and mock-large, plus what o adds.
func startEdge(tb testing.TB, o options) *harness {
	tb.Helper()
	h := &harness{
		verifier: &fakeVerifier{keys: map[string]*keycache.Verified{}},
		limiter:  &fakeLimiter{decide: allow},
		usage:    &usageServer{got: map[string]*usagev1.UsageRecord{}},
		reader:   sdkmetric.NewManualReader(),
		logs:     &syncBuffer{},
		clock:    clock.NewFake(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)),
	}
	h.verifier.set(goodKey, &keystorev1.Key{Id: "key1", Workspace: "acme", Owner: "alice", Kind: keystorev1.KeyKind_KEY_KIND_STANDARD, State: keystorev1.KeyState_KEY_STATE_ACTIVE})
	h.verifier.set(adminKey, &keystorev1.Key{Id: "key2", Workspace: "acme", Owner: "alice", Kind: keystorev1.KeyKind_KEY_KIND_ADMIN, State: keystorev1.KeyState_KEY_STATE_ACTIVE})
	if o.usage != nil {
		h.usage = o.usage
	}
	reg := &registryServer{
		providers: append([]*keystorev1.Provider{{Id: "mock", BaseUrl: "mock"}}, o.providers...),
		models: append([]*keystorev1.Model{
			{Id: "mock-small", Provider: "mock", InputPricePerMillionUsd: "0.15", OutputPricePerMillionUsd: "0.60"},
			{Id: "mock-large", Provider: "mock", InputPricePerMillionUsd: "2.50", OutputPricePerMillionUsd: "10.00"},
		}, o.models...),
	}
	gs := grpctest.Serve(tb, func(r grpc.ServiceRegistrar) {
		usagev1.RegisterUsageServiceServer(r, h.usage)
		keystorev1.RegisterKeystoreServiceServer(r, reg)
	})
	conn := grpctest.Dial(tb, gs.Addr)

	cfg := edge.Config{
		Verifier:      h.verifier,
		ErrInvalidKey: errInvalidKey,
		Limiter:       h.limiter,
		Usage:         usagev1.NewUsageServiceClient(conn),
		Registry:      keystorev1.NewKeystoreServiceClient(conn),
		Clock:         h.clock,
		Logger:        slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Meter:         sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader)),
		ModelRefresh:  time.Hour,
		Getenv:        func(name string) string { return map[string]string{"UP_KEY": "provider-secret"}[name] },
	}
	if o.config != nil {
		o.config(&cfg)
	}
	var err error
	h.srv, err = edge.New(cfg)
	require.NoError(tb, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	h.url = "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = h.srv.Run(ctx) })
	hs := &http.Server{Handler: h.srv.Handler()}
	wg.Go(func() { _ = hs.Serve(ln) })
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			_ = hs.Close()
			wg.Wait()
			_ = conn.Close()
			gs.Stop()
		})
	}
	tb.Cleanup(h.stop)
	require.Eventually(tb, func() bool {
		resp, err := http.Get(h.url + "/healthz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 5*time.Second, 5*time.Millisecond)
	return h
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// errorCode is the OpenAI error code of the answer, "" if none.
func (a answer) errorCode() string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(a.body, &e)
	return e.Error.Code
}

func (h *harness) do(tb testing.TB, method, path string, header map[string]string, body string) answer {
	tb.Helper()
	req, err := http.NewRequestWithContext(tb.Context(), method, h.url+path, strings.NewReader(body))
	require.NoError(tb, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

func (h *harness) post(tb testing.TB, path, key, body string) answer {
	tb.Helper()
	hdr := map[string]string{"Content-Type": "application/json"}
	if key != "" {
		hdr["Authorization"] = "Bearer " + key
	}
	return h.do(tb, http.MethodPost, path, hdr, body)
}

// counter sums an Int64 sum metric over all its points.
func (h *harness) counter(tb testing.TB, name string) int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, h.reader.Collect(context.Background(), &rm))
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, p := range s.DataPoints {
					n += p.Value
				}
			}
		}
	}
	return n
}

var rateHeaders = []string{
	"X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests",
	"X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens",
}

func requireRateHeaders(tb testing.TB, h http.Header) {
	tb.Helper()
	for _, name := range rateHeaders {
		require.NotEmpty(tb, h.Get(name), "header %s", name)
	}
}

// requireNoRateHeaders: nothing is advertised for a request no limit
// decided (an unlimited dimension is absent, never 0).
func requireNoRateHeaders(tb testing.TB, h http.Header) {
	tb.Helper()
	for _, name := range rateHeaders {
		require.Empty(tb, h.Values(name), "header %s", name)
	}
}
