package limiter

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/alertbox"
)

// wsItem is an item of key in workspace acme, owned by member, with the
// member's and the workspace's limits.
func wsItem(key, member, id string, memberP, wsP *typev1.Policy) *limiterv1.CheckItem {
	it := item(key, id, nil)
	it.Workspace, it.Member = "acme", member
	if memberP != nil {
		it.Levels = append(it.Levels, &limiterv1.LevelPolicy{Level: typev1.LimitLevel_LIMIT_LEVEL_MEMBER, Policy: memberP})
	}
	if wsP != nil {
		it.Levels = append(it.Levels, &limiterv1.LevelPolicy{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, Policy: wsP})
	}
	return it
}

func rpm(n int64) *typev1.Policy { return &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: n}} }

func TestLevelsExactAcrossReplicas(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	r1, r2 := c.start(t), c.start(t)
	waitMembers(t, 2, r1, r2)
	const limit = 20
	var admitted, byMember atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		cl := []limiterv1.LimiterServiceClient{r1.client, r2.client}[w%2]
		wg.Go(func() {
			for i := range 8 {
				member := []string{"alice", "bob"}[i%2]
				it := wsItem("key"+strconv.Itoa(w), member, strconv.Itoa(w*100+i), rpm(12), rpm(limit))
				resp, err := cl.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{it}})
				if !assertNoErr(t, err) {
					return
				}
				res := resp.GetResults()[0]
				if res.GetAllowed() {
					admitted.Add(1)
					if member == "alice" {
						byMember.Add(1)
					}
					continue
				}
				if res.GetDeniedLevel() != typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE && res.GetDeniedLevel() != typev1.LimitLevel_LIMIT_LEVEL_MEMBER {
					t.Errorf("denied at %v", res.GetDeniedLevel())
				}
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, limit, admitted.Load(), "every key of the workspace shares its rpm, whichever replica is asked")
	require.LessOrEqual(t, byMember.Load(), int64(12))
}

func assertNoErr(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}

func TestLevelsSeededFromLedger(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.ledger.setTotals(&usagev1.Totals{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, Workspace: "acme", RequestsToday: 5, CreditSpentMicros: 90})
	c.ledger.setTotals(&usagev1.Totals{Level: typev1.LimitLevel_LIMIT_LEVEL_MEMBER, Workspace: "acme", Member: "alice", RequestsToday: 2})
	r := c.start(t)
	check := func(it *limiterv1.CheckItem) *limiterv1.CheckResult {
		resp, err := r.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{it}})
		require.NoError(t, err)
		return resp.GetResults()[0]
	}
	require.True(t, check(wsItem("a", "alice", "1", rpd(3), rpd(6))).GetAllowed())
	res := check(wsItem("b", "alice", "2", rpd(3), rpd(10)))
	require.False(t, res.GetAllowed(), "alice's keys made 2 requests today before this replica started")
	require.Equal(t, typev1.LimitLevel_LIMIT_LEVEL_MEMBER, res.GetDeniedLevel())
	require.Equal(t, limiterv1.LimitKind_LIMIT_KIND_RPD, res.GetDeniedBy())
	res = check(wsItem("c", "bob", "3", nil, rpd(6)))
	require.False(t, res.GetAllowed())
	require.Equal(t, typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, res.GetDeniedLevel())

	it := wsItem("c", "bob", "4", nil, nil)
	it.Credits, it.EstimatedCostMicros = &limiterv1.Credits{GrantedMicros: 100}, 20
	res = check(it)
	require.False(t, res.GetAllowed(), "90 of 100 spent: 20 more does not fit")
	require.Equal(t, limiterv1.LimitKind_LIMIT_KIND_CREDITS, res.GetDeniedBy())
	it.EstimatedCostMicros, it.ReservationId = 10, "5"
	require.True(t, check(it).GetAllowed())
}

func TestExplainReadsLiveState(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	r1, r2 := c.start(t), c.start(t)
	waitMembers(t, 2, r1, r2)
	ws := &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 2}}
	for i := range 2 {
		_, err := r1.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{wsItem("a", "alice", strconv.Itoa(i), nil, ws)}})
		require.NoError(t, err)
	}
	probe := wsItem("b", "alice", "", nil, ws)
	probe.Report = rpm(1)
	for _, cl := range []limiterv1.LimiterServiceClient{r1.client, r2.client} {
		resp, err := cl.Explain(t.Context(), &limiterv1.ExplainRequest{Item: probe})
		require.NoError(t, err)
		require.False(t, resp.GetDecision().GetAllowed())
		require.Equal(t, typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, resp.GetDecision().GetDeniedLevel())
		var wsRPM, keyReport *limiterv1.LimitState
		for _, l := range resp.GetLimits() {
			switch {
			case l.GetLevel() == typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE && l.GetKind() == limiterv1.LimitKind_LIMIT_KIND_RPM:
				wsRPM = l
			case l.GetMode() == typev1.LimitMode_LIMIT_MODE_REPORT:
				keyReport = l
			}
		}
		require.NotNil(t, wsRPM)
		require.Equal(t, "60s", wsRPM.GetWindow())
		require.EqualValues(t, 2, wsRPM.GetUsed())
		require.EqualValues(t, 2, wsRPM.GetReserved(), "both reservations are open")
		require.Zero(t, wsRPM.GetRemaining())
		require.NotNil(t, keyReport, "the key's report-mode rpm is listed")
		require.Zero(t, keyReport.GetUsed(), "key b has made no request")
	}
	// Explaining charged nothing: settle one and a request fits again.
	_, err := r2.client.Release(t.Context(), &limiterv1.ReleaseRequest{Releases: []*limiterv1.Release{{ReservationId: "0", Key: "a", Workspace: "acme", Member: "alice"}}})
	require.NoError(t, err)
	resp, err := r2.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{wsItem("b", "alice", "9", nil, ws)}})
	require.NoError(t, err)
	require.True(t, resp.GetResults()[0].GetAllowed())
}

func TestLevelsBadInput(t *testing.T) {
	t.Parallel()
	_, addr := standalone(t, Config{})
	cl := dial(t, addr)
	bad := []*limiterv1.CheckItem{
		{Key: "k", Levels: []*limiterv1.LevelPolicy{{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE}}},
		{Key: "k", Workspace: "w", Levels: []*limiterv1.LevelPolicy{{Level: typev1.LimitLevel_LIMIT_LEVEL_MEMBER}}},
		{Key: "k", Workspace: "w", Levels: []*limiterv1.LevelPolicy{{Level: typev1.LimitLevel_LIMIT_LEVEL_KEY}}},
		{Key: "k", Workspace: "w", Levels: []*limiterv1.LevelPolicy{{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE}, {Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE}}},
		{Key: "k", Credits: &limiterv1.Credits{GrantedMicros: 1}},
		{Key: "k", Workspace: "w", Report: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: -1}}},
	}
	for i, it := range bad {
		_, err := cl.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{it}})
		require.Equal(t, codes.InvalidArgument, status.Code(err), "item %d: %v", i, err)
		_, err = cl.Explain(t.Context(), &limiterv1.ExplainRequest{Item: it})
		require.Equal(t, codes.InvalidArgument, status.Code(err), "item %d: %v", i, err)
	}
	_, err := cl.Explain(t.Context(), &limiterv1.ExplainRequest{})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
}

// alerts lists the alerts in the outbox.
func alerts(t *testing.T, cli *clientv3.Client) []*keystorev1.Alert {
	t.Helper()
	resp, err := cli.Get(t.Context(), alertbox.WorkspaceRoot, clientv3.WithPrefix())
	require.NoError(t, err)
	var out []*keystorev1.Alert
	for _, kv := range resp.Kvs {
		a := &keystorev1.Alert{}
		require.NoError(t, proto.Unmarshal(kv.Value, a))
		out = append(out, a)
	}
	return out
}

func TestAlertRaisedOnceAcrossRestart(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	r := c.start(t)
	budget := &typev1.Policy{Budget: &typev1.Budget{AmountUsd: "0.0001", ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_MONTHLY}}
	send := func(r *replica, id string) {
		it := wsItem("a", "alice", id, nil, budget)
		it.AlertThresholds, it.EstimatedCostMicros = []int32{50}, 30
		_, err := r.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{it}})
		require.NoError(t, err)
	}
	send(r, "1")
	send(r, "2") // 60 of 100 micro-USD: over 50%
	require.Eventually(t, func() bool { return len(alerts(t, c.etcd.Client)) == 1 }, 10*time.Second, 10*time.Millisecond)
	a := alerts(t, c.etcd.Client)[0]
	require.Equal(t, "acme", a.GetWorkspace())
	require.Equal(t, typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, a.GetLevel())
	require.Equal(t, "budget", a.GetLimit())
	require.Equal(t, "0.0001", a.GetLimitValue())
	require.Equal(t, "0.00006", a.GetUsed())
	require.Equal(t, "month", a.GetPeriod())
	require.Equal(t, time.Date(2024, 4, 1, 0, 0, 0, 0, time.UTC), a.GetResetTime().AsTime())

	// A new replica starts the workspace from the ledger, finds it over the
	// threshold again, and raises nothing new.
	c.ledger.setTotals(&usagev1.Totals{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, Workspace: "acme", PeriodCostMicros: 60})
	r.stop()
	r2 := c.start(t)
	send(r2, "3")
	r2.srv.raise(t.Context()) // after any raise in flight: the crossing is done with
	require.Len(t, alerts(t, c.etcd.Client), 1)
	pending, err := c.etcd.Client.Get(t.Context(), alertbox.PendingRoot, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.EqualValues(t, 1, pending.Count)
}
