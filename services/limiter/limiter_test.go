package limiter

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/internal/limitclient"
	"github.com/keygate/keygate/internal/ring"
	"github.com/keygate/keygate/pkg/auth"
)

var t0 = time.Date(2024, 3, 14, 12, 0, 0, 0, time.UTC)

// ledger is a small usage service: totals per key that tests set, as if
// the edge had recorded the usage.
type ledger struct {
	usagev1.UnimplementedUsageServiceServer
	mu     sync.Mutex
	totals map[string]*usagev1.Totals
	calls  atomic.Int64
	fail   atomic.Bool
}

func (l *ledger) GetTotals(_ context.Context, req *usagev1.GetTotalsRequest) (*usagev1.GetTotalsResponse, error) {
	l.calls.Add(1)
	if l.fail.Load() {
		return nil, status.Error(codes.Unavailable, "ledger down")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	resp := &usagev1.GetTotalsResponse{}
	for _, q := range req.GetQueries() {
		if t := l.totals[ledgerName(q.GetLevel(), q.GetWorkspace(), q.GetKey(), q.GetMember())]; t != nil {
			resp.Totals = append(resp.Totals, t)
		}
	}
	return resp, nil
}

// ledgerName is where the fake ledger keeps a key's or a level's totals.
func ledgerName(level typev1.LimitLevel, workspace, key, member string) string {
	switch level {
	case typev1.LimitLevel_LIMIT_LEVEL_MEMBER:
		return "member:" + workspace + ":" + member
	case typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE:
		return "workspace:" + workspace
	}
	return key
}

func (l *ledger) setTotals(t *usagev1.Totals) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.totals[ledgerName(t.GetLevel(), t.GetWorkspace(), t.GetKey(), t.GetMember())] = t
}

func (l *ledger) set(key string, requests int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.totals[key] = &usagev1.Totals{Key: key, RequestsToday: requests}
}

// dial returns a limiter client of addr, closed at the end of the test.
func dial(t testing.TB, addr string, opts ...grpc.DialOption) limiterv1.LimiterServiceClient {
	t.Helper()
	return limiterv1.NewLimiterServiceClient(grpctest.Dial(t, addr, opts...))
}

type cluster struct {
	etcd   *etcdtest.Cluster
	clock  *clock.Fake
	ledger *ledger
	usage  usagev1.UsageServiceClient
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{etcd: etcdtest.Start(t), clock: clock.NewFake(t0), ledger: &ledger{totals: map[string]*usagev1.Totals{}}}
	s := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { usagev1.RegisterUsageServiceServer(r, c.ledger) })
	c.usage = usagev1.NewUsageServiceClient(grpctest.Dial(t, s.Addr))
	return c
}

type replica struct {
	srv    *Server
	gs     *grpctest.Server
	addr   string
	client limiterv1.LimiterServiceClient
	closed bool
}

func (c *cluster) start(t *testing.T) *replica {
	t.Helper()
	return c.startAt(t, "127.0.0.1:0")
}

// startAt starts a replica listening on addr (a restarted replica comes
// back on its address).
func (c *cluster) startAt(t *testing.T, addr string) *replica {
	t.Helper()
	lis := grpctest.Listen(t, addr)
	r := &replica{addr: lis.Addr().String()}
	var err error
	r.srv, err = New(t.Context(), Config{Etcd: c.etcd.Client, Clock: c.clock, Usage: c.usage, AdvertiseAddr: r.addr, Logger: testLogger(t)})
	require.NoError(t, err)
	go func() { _ = r.srv.Run(context.WithoutCancel(t.Context())) }()
	r.gs = grpctest.Serve(t, r.srv.Register, grpctest.WithListener(lis))
	t.Cleanup(r.stop)
	r.client = dial(t, r.addr)
	return r
}

func (r *replica) stop() {
	if r.closed {
		return
	}
	r.closed = true
	_ = r.srv.Close()
	// As the app stops: in-flight calls (handovers) finish; streams of
	// clients that have not left yet are cut after a grace period.
	r.gs.GracefulStop(time.Second)
}

func waitMembers(t *testing.T, n int, rs ...*replica) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, r := range rs {
			if r.srv.watcher.Ring().Len() != n {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond)
}

func item(key, id string, p *typev1.Policy) *limiterv1.CheckItem {
	return &limiterv1.CheckItem{Key: key, ReservationId: id, Model: "mock-small", Policy: p, EstimatedTokens: 10, EstimatedCostMicros: 5}
}

func rpd(n int64) *typev1.Policy {
	return &typev1.Policy{GlobalLimits: &typev1.Limits{Rpd: n}}
}

func standalone(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Clock == nil {
		cfg.Clock = clock.NewFake(t0)
	}
	s, err := New(t.Context(), cfg)
	require.NoError(t, err)
	go func() { _ = s.Run(context.WithoutCancel(t.Context())) }()
	t.Cleanup(func() { _ = s.Close() })
	return s, grpctest.Serve(t, s.Register).Addr
}

func TestCheckSettleRelease(t *testing.T) {
	t.Parallel()
	_, addr := standalone(t, Config{})
	cl := dial(t, addr)
	ctx := t.Context()
	p := &typev1.Policy{
		GlobalLimits: &typev1.Limits{Rpm: 2, Tpm: 100},
		ModelLimits:  []*typev1.ModelLimits{{Model: "mock-small", Limits: &typev1.Limits{Rpd: 10}}},
		Budget:       &typev1.Budget{AmountUsd: "0.00002", ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_MONTHLY},
	}
	resp, err := cl.Check(ctx, &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{item("k", "a", p), item("k", "b", p), item("k", "c", p)}})
	require.NoError(t, err)
	require.Len(t, resp.Results, 3)
	require.True(t, resp.Results[0].Allowed)
	require.True(t, resp.Results[1].Allowed)
	denied := resp.Results[2]
	require.False(t, denied.Allowed)
	require.Equal(t, limiterv1.LimitKind_LIMIT_KIND_RPM, denied.DeniedBy)
	require.Equal(t, 60*time.Second, denied.RetryAfter.AsDuration())
	require.Equal(t, limiterv1.LimitKind_LIMIT_KIND_RPM, denied.Requests.Kind)
	require.Zero(t, denied.Requests.Remaining)
	require.Equal(t, int64(80), denied.Tokens.Remaining)
	require.Len(t, denied.Quotas, 4)
	require.Equal(t, "mock-small", denied.Quotas[2].Model)

	settled, err := cl.Settle(ctx, &limiterv1.SettleRequest{Settlements: []*limiterv1.Settlement{
		{ReservationId: "a", Key: "k", ActualTokens: 3}, {ReservationId: "zzz", Key: "k"},
	}})
	require.NoError(t, err)
	require.EqualValues(t, 1, settled.Unknown)
	rel, err := cl.Release(ctx, &limiterv1.ReleaseRequest{Releases: []*limiterv1.Release{{ReservationId: "b", Key: "k"}}})
	require.NoError(t, err)
	require.Zero(t, rel.Unknown)
	// b's request is freed: one more fits.
	resp, err = cl.Check(ctx, &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{item("k", "d", p)}})
	require.NoError(t, err)
	require.True(t, resp.Results[0].Allowed)
	require.Equal(t, int64(100-3-10), resp.Results[0].Tokens.Remaining)
	// Budget: 20 micros; a, d spent 5 each after a settled at 0.
	require.Equal(t, limiterv1.LimitKind_LIMIT_KIND_BUDGET, resp.Results[0].Quotas[3].Kind)
	require.Equal(t, int64(15), resp.Results[0].Quotas[3].Remaining)
}

func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	_, addr := standalone(t, Config{})
	cl := dial(t, addr)
	good := item("k", "ok", rpd(1))
	tests := []struct {
		name string
		bad  *limiterv1.CheckItem
	}{
		{"no key", &limiterv1.CheckItem{}},
		{"negative tokens", &limiterv1.CheckItem{Key: "k", EstimatedTokens: -1}},
		{"negative cost", &limiterv1.CheckItem{Key: "k", EstimatedCostMicros: -1}},
		{"negative limit", &limiterv1.CheckItem{Key: "k", Policy: rpd(-1)}},
		{"bad budget", &limiterv1.CheckItem{Key: "k", Policy: &typev1.Policy{Budget: &typev1.Budget{AmountUsd: "5.0000001"}}}},
		{"budget not a number", &limiterv1.CheckItem{Key: "k", Policy: &typev1.Policy{Budget: &typev1.Budget{AmountUsd: "$5"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cl.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{good, tt.bad}})
			require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		})
	}
	_, err := cl.Settle(t.Context(), &limiterv1.SettleRequest{Settlements: []*limiterv1.Settlement{{Key: "k"}}})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	_, err = cl.Release(t.Context(), &limiterv1.ReleaseRequest{Releases: []*limiterv1.Release{{ReservationId: "x"}}})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	// The good item of every refused batch was never counted.
	resp, err := cl.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{good}})
	require.NoError(t, err)
	require.True(t, resp.Results[0].Allowed)
}

func TestServiceToken(t *testing.T) {
	t.Parallel()
	_, addr := standalone(t, Config{ServiceToken: "s3cret"})
	tests := []struct {
		name  string
		token string
		code  codes.Code
	}{
		{"none", "", codes.Unauthenticated},
		{"wrong", "nope", codes.Unauthenticated},
		{"right", "s3cret", codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts []grpc.DialOption
			if tt.token != "" {
				opts = append(opts, grpc.WithPerRPCCredentials(auth.Token{Value: tt.token}))
			}
			_, err := dial(t, addr, opts...).Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{item("k", "", nil)}})
			require.Equal(t, tt.code, status.Code(err))
			if err != nil {
				require.NotContains(t, err.Error(), "s3cret")
			}
		})
	}
}

func TestCheckStreamInOrder(t *testing.T) {
	t.Parallel()
	_, addr := standalone(t, Config{})
	stream, err := dial(t, addr).CheckStream(t.Context())
	require.NoError(t, err)
	const n = 20
	go func() {
		for i := range n {
			items := []*limiterv1.CheckItem{item("k", "r"+strconv.Itoa(i), rpd(10))}
			if i == 5 {
				items = []*limiterv1.CheckItem{{}} // invalid: answered with an error, stream goes on
			}
			_ = stream.Send(&limiterv1.CheckStreamRequest{Sequence: uint64(100 + i), Items: items})
		}
		_ = stream.CloseSend()
	}()
	allowed := 0
	for i := range n {
		resp, err := stream.Recv()
		require.NoError(t, err)
		require.EqualValues(t, 100+i, resp.Sequence)
		if i == 5 {
			require.Contains(t, resp.Error, "key is required")
			continue
		}
		require.Len(t, resp.Results, 1)
		if resp.Results[0].Allowed {
			allowed++
		}
	}
	require.Equal(t, 10, allowed)
}

func TestReplicasExact(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	rs := []*replica{c.start(t), c.start(t), c.start(t)}
	waitMembers(t, 3, rs...)
	lc, err := limitclient.New(t.Context(), limitclient.Config{Etcd: c.etcd.Client})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lc.Close() })

	const keys, limit, workers, each = 6, 25, 12, 30
	var admitted [keys]atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				var items []*limiterv1.CheckItem
				for k := range keys {
					items = append(items, item("key"+strconv.Itoa(k), strconv.Itoa(w)+"-"+strconv.Itoa(i), rpd(limit)))
				}
				var res []*limiterv1.CheckResult
				if w%2 == 0 {
					// Through any replica: it forwards what it does not own.
					resp, err := rs[(w+i)%len(rs)].client.Check(t.Context(), &limiterv1.CheckRequest{Items: items})
					if err != nil {
						t.Error(err)
						return
					}
					res = resp.Results
				} else {
					var err error
					if res, err = lc.Check(t.Context(), items); err != nil {
						t.Error(err)
						return
					}
				}
				for k, r := range res {
					if r.Allowed {
						admitted[k].Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	for k := range keys {
		require.EqualValues(t, limit, admitted[k].Load(), "key%d", k)
	}
	// Every key was seeded once, by its owner, in batched calls.
	require.LessOrEqual(t, c.ledger.calls.Load(), int64(keys))
}

func TestHandoffAndRestart(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a, b := c.start(t), c.start(t)
	waitMembers(t, 2, a, b)
	owner := map[string]*replica{a.addr: a, b.addr: b}
	const key = "handoff-key"
	m, _ := a.srv.watcher.Ring().Owner(key)
	first, other := owner[m.Addr], a
	if first == a {
		other = b
	}
	p := &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 5, Rpd: 8}}
	admit := func(via *replica, n int) int {
		got := 0
		for i := range n {
			resp, err := via.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{item(key, "", p)}})
			require.NoError(t, err, "%d", i)
			if resp.Results[0].Allowed {
				got++
			}
		}
		return got
	}
	// Through the non-owner: forwarded to the owner.
	require.Equal(t, 5, admit(other, 10))
	// The ledger has recorded those 5 requests.
	c.ledger.set(key, 5)

	// The owner leaves: it hands the key's state to the other replica,
	// whose rolling window is spent for the minute; after it, the day
	// (5 of 8 used) admits 3 more.
	first.stop()
	waitMembers(t, 1, other)
	require.Zero(t, admit(other, 10))
	c.clock.Advance(61 * time.Second)
	require.Equal(t, 3, admit(other, 10))

	// Everything restarts: the day is not fresh.
	c.ledger.set(key, 8)
	other.stop()
	c.clock.Advance(2 * time.Minute)
	n1, n2 := c.start(t), c.start(t)
	waitMembers(t, 2, n1, n2)
	require.Zero(t, admit(n1, 3))
	// The next UTC day is.
	c.clock.Set(time.Date(2024, 3, 15, 0, 0, 1, 0, time.UTC))
	c.ledger.set(key, 0)
	require.Equal(t, 5, admit(n2, 10))
}

func TestRollingBoundDuringHandoff(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a, b := c.start(t), c.start(t)
	waitMembers(t, 2, a, b)
	p := &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 4}}
	const key = "rolling-key"
	count := func(via *replica, n int) int {
		got := 0
		for range n {
			resp, err := via.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{item(key, "", p)}})
			require.NoError(t, err)
			if resp.Results[0].Allowed {
				got++
			}
		}
		return got
	}
	m, _ := a.srv.watcher.Ring().Owner(key)
	owner, other := a, b
	if m.Addr == b.addr {
		owner, other = b, a
	}
	before := count(owner, 10)
	owner.stop()
	waitMembers(t, 1, other)
	after := count(other, 10)
	// A graceful move hands the window over: nothing more within the
	// minute.
	require.Equal(t, 4, before)
	require.Zero(t, after)
}

func TestSeedFailureIsUnavailable(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	r := c.start(t)
	waitMembers(t, 1, r)
	c.ledger.fail.Store(true)
	_, err := r.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{item("k", "", rpd(5))}})
	require.Equal(t, codes.Unavailable, status.Code(err))
	c.ledger.fail.Store(false)
	resp, err := r.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{item("k", "", rpd(5))}})
	require.NoError(t, err)
	require.True(t, resp.Results[0].Allowed)
}

func TestConcurrentFirstRequestsShareOneSeed(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	r := c.start(t)
	waitMembers(t, 1, r)
	c.ledger.set("hot", 7)
	var wg sync.WaitGroup
	var admitted atomic.Int64
	for range 20 {
		wg.Go(func() {
			resp, err := r.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{item("hot", "", rpd(10))}})
			if err != nil {
				t.Error(err)
				return
			}
			if resp.Results[0].Allowed {
				admitted.Add(1)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 3, admitted.Load())
}

func TestClientFailsOver(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	r := c.start(t)
	// A member that registered but does not answer.
	deadAddr := etcdtest.FreeAddr(t)
	reg, err := ring.Register(t.Context(), c.etcd.Client, ring.DefaultPrefix, ring.Member{ID: deadAddr, Addr: deadAddr}, time.Second, nil)
	require.NoError(t, err)
	waitMembers(t, 2, r)
	lc, err := limitclient.New(t.Context(), limitclient.Config{Etcd: c.etcd.Client})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lc.Close() })

	var items []*limiterv1.CheckItem
	for k := range 20 {
		items = append(items, item("key"+strconv.Itoa(k), "", rpd(1)))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	res, err := lc.Check(ctx, items)
	require.NoError(t, err)
	for _, x := range res {
		require.True(t, x.Allowed)
	}
	require.NoError(t, lc.Settle(ctx, []*limiterv1.Settlement{{ReservationId: "x", Key: "key1"}}))
	require.NoError(t, lc.Release(ctx, []*limiterv1.Release{{ReservationId: "x", Key: "key1"}}))

	// No live replica at all.
	r.stop()
	_, err = lc.Check(ctx, items)
	require.ErrorIs(t, err, limitclient.ErrUnavailable)
	require.NoError(t, reg.Close())
	_, err = lc.Check(ctx, items)
	require.ErrorIs(t, err, limitclient.ErrUnavailable)
}

// TestForwardedUnknown checks that settlements and releases a replica
// forwards report the owner's unknown count back to the caller.
func TestForwardedUnknown(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	rs := []*replica{c.start(t), c.start(t)}
	waitMembers(t, 2, rs...)
	lc, err := limitclient.New(t.Context(), limitclient.Config{Etcd: c.etcd.Client})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lc.Close() })

	// Enough keys that both replicas own some; each gets one reservation.
	const keys = 16
	var items []*limiterv1.CheckItem
	for k := range keys {
		items = append(items, item("key"+strconv.Itoa(k), "r", rpd(100)))
	}
	_, err = rs[0].client.Check(t.Context(), &limiterv1.CheckRequest{Items: items})
	require.NoError(t, err)

	settle := func(id string) []*limiterv1.Settlement {
		var out []*limiterv1.Settlement
		for k := range keys {
			out = append(out, &limiterv1.Settlement{ReservationId: id, Key: "key" + strconv.Itoa(k), ActualTokens: 3})
		}
		return out
	}
	release := func(id string) []*limiterv1.Release {
		var out []*limiterv1.Release
		for k := range keys {
			out = append(out, &limiterv1.Release{ReservationId: id, Key: "key" + strconv.Itoa(k)})
		}
		return out
	}
	tests := []struct {
		name    string
		run     func() (int32, error)
		unknown int32
	}{
		{"settle through a replica, unknown ids", func() (int32, error) {
			resp, err := rs[0].client.Settle(t.Context(), &limiterv1.SettleRequest{Settlements: settle("nope")})
			return resp.GetUnknown(), err
		}, keys},
		{"settle through the client, unknown ids", func() (int32, error) { return lc.SettleUnknown(t.Context(), settle("nope")) }, keys},
		{"settle through the client, known ids", func() (int32, error) { return lc.SettleUnknown(t.Context(), settle("r")) }, 0},
		{"release through a replica, settled ids", func() (int32, error) {
			resp, err := rs[1].client.Release(t.Context(), &limiterv1.ReleaseRequest{Releases: release("r")})
			return resp.GetUnknown(), err
		}, keys},
		{"release through the client, unknown ids", func() (int32, error) { return lc.ReleaseUnknown(t.Context(), release("nope")) }, keys},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := tt.run()
			require.NoError(t, err)
			require.Equal(t, tt.unknown, n)
		})
	}
}

// TestCheckStreamReuse checks that a stream, which reuses its result
// storage from one message to the next, answers exactly what unary calls
// to an identical replica answer, whatever the previous message held.
func TestCheckStreamReuse(t *testing.T) {
	t.Parallel()
	_, streamAddr := standalone(t, Config{})
	_, unaryAddr := standalone(t, Config{})
	stream, err := dial(t, streamAddr).CheckStream(t.Context())
	require.NoError(t, err)
	unary := dial(t, unaryAddr)

	rpm1 := &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 1, Tpm: 1000}}
	model1 := &typev1.Policy{ModelLimits: []*typev1.ModelLimits{{Model: "mock-small", Limits: &typev1.Limits{Rpm: 1}}}}
	var many []*limiterv1.CheckItem
	for i := range 300 {
		many = append(many, item("m"+strconv.Itoa(i%7), "", rpd(100)))
	}
	batches := []struct {
		name  string
		items []*limiterv1.CheckItem
	}{
		{"allowed", []*limiterv1.CheckItem{item("a", "", rpm1), item("b", "", model1)}},
		{"denied with retry", []*limiterv1.CheckItem{item("a", "", rpm1), item("b", "", model1)}},
		{"no limits", []*limiterv1.CheckItem{item("c", "", nil), item("d", "", nil)}},
		{"larger than reused", many},
		{"denied after large", []*limiterv1.CheckItem{item("a", "", rpm1)}},
		{"allowed after denied", []*limiterv1.CheckItem{item("e", "", rpd(5))}},
	}
	for i, b := range batches {
		t.Run(b.name, func(t *testing.T) {
			require.NoError(t, stream.Send(&limiterv1.CheckStreamRequest{Sequence: uint64(i), Items: b.items}))
			got, err := stream.Recv()
			require.NoError(t, err)
			want, err := unary.Check(t.Context(), &limiterv1.CheckRequest{Items: b.items})
			require.NoError(t, err)
			require.Len(t, got.Results, len(want.Results))
			for j := range want.Results {
				require.True(t, proto.Equal(want.Results[j], got.Results[j]), "item %d: want %v, got %v", j, want.Results[j], got.Results[j])
			}
		})
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("LIMITER_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("t", t.Name())
}
