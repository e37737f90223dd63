package usage

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/services/usage/internal/reqlog"
)

const (
	serviceToken = "svc-token"
	// memberToken may read workspace "acme"; otherToken reads nothing.
	memberToken = "member-token"
	// plainToken is a plain member, "owner-k2": sees only its own keys.
	plainToken = "plain-member-token"
	otherToken = "other-token"
)

// testKeystore is a small keystore over real gRPC: workspace "acme" with
// the keys in keys, models with prices, and a caller check by token.
type testKeystore struct {
	keystorev1.UnimplementedKeystoreServiceServer
	mu     sync.Mutex
	keys   map[string]*keystorev1.Key
	models []*keystorev1.Model
}

func (k *testKeystore) caller(ctx context.Context, ws string) error {
	switch auth.BearerFromIncoming(ctx) {
	case "":
		return status.Error(codes.Unauthenticated, "no credential")
	case memberToken, plainToken:
		if ws == "acme" {
			return nil
		}
	}
	// Another workspace answers as if it did not exist.
	return status.Errorf(codes.NotFound, "workspace %q not found", ws)
}

func (k *testKeystore) GetKey(ctx context.Context, req *keystorev1.GetKeyRequest) (*keystorev1.GetKeyResponse, error) {
	if err := k.caller(ctx, req.GetWorkspace()); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	key, ok := k.keys[req.GetKey()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "key %q not found", req.GetKey())
	}
	return &keystorev1.GetKeyResponse{Key: proto.CloneOf(key)}, nil
}

func (k *testKeystore) GetWorkspace(ctx context.Context, req *keystorev1.GetWorkspaceRequest) (*keystorev1.GetWorkspaceResponse, error) {
	if err := k.caller(ctx, req.GetWorkspace()); err != nil {
		return nil, err
	}
	if auth.BearerFromIncoming(ctx) == plainToken {
		return &keystorev1.GetWorkspaceResponse{Workspace: &keystorev1.Workspace{Id: req.GetWorkspace()}, Caller: "owner-k2", CallerRole: keystorev1.Role_ROLE_MEMBER}, nil
	}
	return &keystorev1.GetWorkspaceResponse{Workspace: &keystorev1.Workspace{Id: req.GetWorkspace()}, Caller: "alice", CallerRole: keystorev1.Role_ROLE_ADMIN}, nil
}

func (k *testKeystore) ListModels(ctx context.Context, _ *keystorev1.ListModelsRequest) (*keystorev1.ListModelsResponse, error) {
	if auth.BearerFromIncoming(ctx) != serviceToken {
		return nil, status.Error(codes.Unauthenticated, "service token required")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return &keystorev1.ListModelsResponse{Models: k.models}, nil
}

func (k *testKeystore) setKey(key *keystorev1.Key) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys[key.GetId()] = key
}

func defaultModels() []*keystorev1.Model {
	return []*keystorev1.Model{
		{Id: "mock-small", InputPricePerMillionUsd: "0.15", OutputPricePerMillionUsd: "0.60"},
		{Id: "mock-large", InputPricePerMillionUsd: "2.50", OutputPricePerMillionUsd: "10.00"},
		// No price: records for it are refused.
		{Id: "unpriced"},
	}
}

// startKeystore serves a testKeystore on loopback and returns a client.
func startKeystore(tb testing.TB) (*testKeystore, keystorev1.KeystoreServiceClient, string) {
	tb.Helper()
	ks := &testKeystore{keys: map[string]*keystorev1.Key{}, models: defaultModels()}
	s := grpctest.Serve(tb, func(r grpc.ServiceRegistrar) { keystorev1.RegisterKeystoreServiceServer(r, ks) })
	return ks, keystorev1.NewKeystoreServiceClient(grpctest.Dial(tb, s.Addr)), s.Addr
}

// tbWriter sends the server's logs to the test log.
type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// env is one usage server over real etcd and real gRPC, with its own
// request log.
type env struct {
	etcd *clientv3.Client
	clk  *clock.Fake
	ks   *testKeystore
	ksc  keystorev1.KeystoreServiceClient
	set  func(*Config)
	srv  *Server
	cli  usagev1.UsageServiceClient // no credential
	rlog *reqlog.Pebble

	mu   sync.Mutex
	next uint64 // the next sequence number of producer testProducer
}

// testProducer numbers the records e.record sends.
const testProducer = "test"

// t0 is a Wednesday, 12:00 UTC: the start of a request log slice.
var t0 = time.Date(2026, 3, 11, 12, 0, 0, 0, time.UTC)

func newEnv(tb testing.TB, retention time.Duration) *env {
	tb.Helper()
	return newEnvWith(tb, func(c *Config) { c.Retention = retention })
}

// newEnvWith is newEnv with a Config edited by set.
func newEnvWith(tb testing.TB, set func(*Config)) *env {
	tb.Helper()
	return newEnvAt(tb, t0, set)
}

// newEnvAt starts the env with its clock at now: the janitor's first pass,
// at start, sees that time.
func newEnvAt(tb testing.TB, now time.Time, set func(*Config)) *env {
	tb.Helper()
	cluster := etcdtest.Start(tb)
	ks, ksc, _ := startKeystore(tb)
	e := &env{etcd: cluster.Client, clk: clock.NewFake(now), ks: ks, ksc: ksc, set: set, next: 1}
	r := e.replica(tb)
	e.srv, e.cli, e.rlog = r.srv, r.cli, r.rlog
	return e
}

// replica is one usage server of an env.
type replica struct {
	srv  *Server
	cli  usagev1.UsageServiceClient // no credential
	rlog *reqlog.Pebble             // its own request log
}

// replica starts another usage server on the same etcd, keystore and clock,
// with a request log of its own, served over its own loopback gRPC
// listener. edit changes its Config after the env's set.
func (e *env) replica(tb testing.TB, edit ...func(*Config)) replica {
	tb.Helper()
	logger := slog.New(slog.NewTextHandler(tbWriter{tb}, nil))
	rl, err := reqlog.OpenPebble(tb.TempDir(), 0, logger)
	require.NoError(tb, err)
	// Cleanups run last first: the server closes before its log.
	tb.Cleanup(func() { require.NoError(tb, rl.Close()) })
	cfg := Config{
		Etcd: e.etcd, Clock: e.clk, Logger: logger, ServiceToken: serviceToken, Keystore: e.ksc, RequestLog: rl,
	}
	if e.set != nil {
		e.set(&cfg)
	}
	for _, f := range edit {
		f(&cfg)
	}
	srv, err := New(tb.Context(), cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = srv.Close() })
	go func() { _ = srv.Run(tb.Context()) }()
	s := grpctest.Serve(tb, srv.Register)
	return replica{srv: srv, cli: usagev1.NewUsageServiceClient(grpctest.Dial(tb, s.Addr)), rlog: rl}
}

func svc(ctx context.Context) context.Context    { return auth.WithBearer(ctx, serviceToken) }
func member(ctx context.Context) context.Context { return auth.WithBearer(ctx, memberToken) }

// rec builds a record for workspace acme at time t.
func rec(id, key, model string, prompt, completion int64, t time.Time) *usagev1.UsageRecord {
	return &usagev1.UsageRecord{
		RequestId: id, Key: key, Workspace: "acme", Owner: "owner-" + key, Model: model,
		PromptTokens: prompt, CompletionTokens: completion, Status: usagev1.RequestStatus_REQUEST_STATUS_OK,
		Time: timestamppb.New(t),
	}
}

func recs(prefix string, n int, key, model string, t time.Time) []*usagev1.UsageRecord {
	out := make([]*usagev1.UsageRecord, n)
	for i := range out {
		out[i] = rec(fmt.Sprintf("%s-%d", prefix, i), key, model, 10, 5, t)
	}
	return out
}

// record sends rs as producer testProducer, numbered after every record
// e.record sent before: they are always new.
func (e *env) record(tb testing.TB, rs ...*usagev1.UsageRecord) *usagev1.RecordUsageResponse {
	tb.Helper()
	return e.recordAs(tb, testProducer, e.reserve(len(rs)), rs...)
}

// reserve takes n sequence numbers of testProducer and returns the first.
func (e *env) reserve(n int) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	first := e.next
	e.next += uint64(n)
	return first
}

// recordAs sends rs as producer, numbered from first.
func (e *env) recordAs(tb testing.TB, producer string, first uint64, rs ...*usagev1.UsageRecord) *usagev1.RecordUsageResponse {
	tb.Helper()
	resp, err := send(tb.Context(), e.cli, producer, first, rs)
	require.NoError(tb, err)
	return resp
}

// send is one RecordUsage call with the service token.
func send(ctx context.Context, c usagev1.UsageServiceClient, producer string, first uint64, rs []*usagev1.UsageRecord) (*usagev1.RecordUsageResponse, error) {
	return c.RecordUsage(svc(ctx), &usagev1.RecordUsageRequest{Producer: producer, FirstSequence: first, Records: rs})
}

// totals returns GetTotals for one key with both periods since epoch.
func (e *env) totals(tb testing.TB, key string, models ...string) []*usagev1.Totals {
	tb.Helper()
	resp, err := e.cli.GetTotals(svc(tb.Context()), &usagev1.GetTotalsRequest{Queries: []*usagev1.TotalsQuery{{
		Key: key, Models: models, TokenPeriodStart: timestamppb.New(time.Unix(0, 0)), BudgetPeriodStart: timestamppb.New(time.Unix(0, 0)),
	}}})
	require.NoError(tb, err)
	return resp.GetTotals()
}

// count is the number of etcd keys under a ledger prefix.
func count(tb testing.TB, cli *clientv3.Client, sub string) int64 {
	tb.Helper()
	resp, err := cli.Get(tb.Context(), Prefix+sub, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(tb, err)
	return resp.Count
}

// logEntries lists every request log entry of workspace ws, newest first,
// page by page.
func logEntries(tb testing.TB, rl RequestLog, ws string) []reqlog.Entry {
	tb.Helper()
	var out []reqlog.Entry
	q := reqlog.Query{Workspace: ws, Limit: 1000}
	for {
		page, err := rl.List(tb.Context(), q)
		require.NoError(tb, err)
		out = append(out, page.Entries...)
		if page.Next == nil {
			return out
		}
		q.Before = page.Next
	}
}

// logCount is the number of request log entries of workspace acme.
func logCount(tb testing.TB, rl RequestLog) int {
	tb.Helper()
	return len(logEntries(tb, rl, "acme"))
}

func requireCode(tb testing.TB, err error, want codes.Code) {
	tb.Helper()
	require.Error(tb, err)
	require.Equal(tb, want, status.Code(err), "error: %v", err)
}
