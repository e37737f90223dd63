package usage

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

const (
	levelKey       = typev1.LimitLevel_LIMIT_LEVEL_KEY
	levelMember    = typev1.LimitLevel_LIMIT_LEVEL_MEMBER
	levelWorkspace = typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE
)

// levelKeys are the keys of the level tests: key -> workspace and owner.
// alice owns two keys in acme and one in beta, bob one in acme.
var levelKeys = []struct{ key, ws, owner string }{
	{"ka1", "acme", "alice"},
	{"ka2", "acme", "alice"},
	{"kb1", "acme", "bob"},
	{"kx1", "beta", "alice"},
}

// levelRecords spreads records of every level key over the days around
// t0 (Wednesday 2026-03-11): the month before, the first of the month (a
// Sunday), the Monday starting t0's week, the day before and t0 itself,
// in two models, with token counts that differ per record.
func levelRecords() []*usagev1.UsageRecord {
	days := []time.Time{
		t0.AddDate(0, 0, -13), // 2026-02-26
		t0.AddDate(0, 0, -10), // 2026-03-01, a Sunday
		t0.AddDate(0, 0, -2),  // 2026-03-09, a Monday
		t0.AddDate(0, 0, -1),
		t0.Add(-time.Hour),
	}
	var out []*usagev1.UsageRecord
	n := 0
	for _, d := range days {
		for ki, k := range levelKeys {
			for j := range 1 + ki%3 {
				n++
				r := rec(fmt.Sprintf("lv-%d", n), k.key, []string{"mock-small", "mock-large"}[(n+j)%2],
					int64(100*(1+n%7)), int64(50*(1+n%5)), d.Add(time.Duration(j)*time.Minute))
				r.Workspace, r.Owner = k.ws, k.owner
				out = append(out, r)
			}
		}
	}
	return out
}

// sumTotals adds totals row by row (same order of models).
func sumTotals(rows ...[]*usagev1.Totals) []*usagev1.Totals {
	var out []*usagev1.Totals
	for _, rs := range rows {
		for i, r := range rs {
			if i == len(out) {
				out = append(out, &usagev1.Totals{Model: r.GetModel()})
			}
			o := out[i]
			o.RequestsToday += r.GetRequestsToday()
			o.TokensToday += r.GetTokensToday()
			o.PeriodTokens += r.GetPeriodTokens()
			o.PeriodCostMicros += r.GetPeriodCostMicros()
		}
	}
	return out
}

// counts strips a Totals of what names it, for comparing sums.
func counts(rows []*usagev1.Totals) [][5]any {
	out := make([][5]any, len(rows))
	for i, r := range rows {
		out[i] = [5]any{r.GetModel(), r.GetRequestsToday(), r.GetTokensToday(), r.GetPeriodTokens(), r.GetPeriodCostMicros()}
	}
	return out
}

// getTotals asks for one query's rows on day ("" = today).
func (e *env) getTotals(tb testing.TB, day string, q *usagev1.TotalsQuery) []*usagev1.Totals {
	tb.Helper()
	resp, err := e.cli.GetTotals(svc(tb.Context()), &usagev1.GetTotalsRequest{Day: day, Queries: []*usagev1.TotalsQuery{q}})
	require.NoError(tb, err)
	return resp.GetTotals()
}

// TestLevelTotals: the member and workspace totals, read from their own
// aggregates, equal the sums of their keys' totals for every reset period
// around day, week and month boundaries, before and after old days are
// rolled up into months; a member counts only their keys in that
// workspace, and a batch sent again changes no level.
func TestLevelTotals(t *testing.T) {
	e := newEnv(t, MaxRetention)
	all := levelRecords()
	r := e.record(t, all...)
	require.EqualValues(t, len(all), r.GetAccepted())
	again := e.recordAs(t, testProducer, 1, all...)
	require.EqualValues(t, len(all), again.GetDuplicates(), "a retried batch counts once at every level")

	levels := []struct {
		name string
		q    *usagev1.TotalsQuery
		keys []string
	}{
		{"acme", &usagev1.TotalsQuery{Level: levelWorkspace, Workspace: "acme"}, []string{"ka1", "ka2", "kb1"}},
		{"beta", &usagev1.TotalsQuery{Level: levelWorkspace, Workspace: "beta"}, []string{"kx1"}},
		{"acme/alice", &usagev1.TotalsQuery{Level: levelMember, Workspace: "acme", Member: "alice"}, []string{"ka1", "ka2"}},
		{"acme/bob", &usagev1.TotalsQuery{Level: levelMember, Workspace: "acme", Member: "bob"}, []string{"kb1"}},
		{"beta/alice", &usagev1.TotalsQuery{Level: levelMember, Workspace: "beta", Member: "alice"}, []string{"kx1"}},
	}
	check := func(t *testing.T, now time.Time, day string) {
		for _, p := range []typev1.ResetPeriod{
			typev1.ResetPeriod_RESET_PERIOD_DAILY, typev1.ResetPeriod_RESET_PERIOD_WEEKLY,
			typev1.ResetPeriod_RESET_PERIOD_MONTHLY, typev1.ResetPeriod_RESET_PERIOD_NEVER,
		} {
			start, _ := periodBounds(p, now)
			for _, lv := range levels {
				q := &usagev1.TotalsQuery{
					Level: lv.q.GetLevel(), Workspace: lv.q.GetWorkspace(), Member: lv.q.GetMember(),
					Models:           []string{"mock-small", "mock-large", "unused"},
					TokenPeriodStart: timestamppb.New(start), BudgetPeriodStart: timestamppb.New(start),
				}
				got := e.getTotals(t, day, q)
				var keys [][]*usagev1.Totals
				for _, k := range lv.keys {
					keys = append(keys, e.getTotals(t, day, &usagev1.TotalsQuery{Key: k, Models: q.GetModels(),
						TokenPeriodStart: q.GetTokenPeriodStart(), BudgetPeriodStart: q.GetBudgetPeriodStart()}))
				}
				require.Equal(t, counts(sumTotals(keys...)), counts(got), "%s, period %v", lv.name, p)
				for _, row := range got {
					require.Equal(t, lv.q.GetLevel(), row.GetLevel())
					require.Equal(t, lv.q.GetWorkspace(), row.GetWorkspace())
					require.Equal(t, lv.q.GetMember(), row.GetMember())
					require.Empty(t, row.GetKey())
				}
				if p == typev1.ResetPeriod_RESET_PERIOD_NEVER {
					require.Positive(t, got[0].GetPeriodTokens())
				}
			}
		}
	}
	t.Run("as days", func(t *testing.T) { check(t, t0, "") })

	// The usage report by owner shows each member's keys, as the member
	// level totals them, and no level as a key.
	monthStart, _ := periodBounds(typev1.ResetPeriod_RESET_PERIOD_MONTHLY, t0)
	for _, by := range []usagev1.GroupBy{usagev1.GroupBy_GROUP_BY_OWNER, usagev1.GroupBy_GROUP_BY_KEY} {
		resp, err := e.cli.ListUsage(member(t.Context()), &usagev1.ListUsageRequest{
			Workspace: "acme", GroupBy: by, StartDate: monthStart.Format(dayLayout), EndDate: t0.Format(dayLayout),
		})
		require.NoError(t, err)
		groups := map[string]int64{}
		for _, row := range resp.GetRows() {
			groups[row.GetGroup()] = row.GetPromptTokens() + row.GetCompletionTokens()
		}
		if by == usagev1.GroupBy_GROUP_BY_KEY {
			require.ElementsMatch(t, []string{"ka1", "ka2", "kb1"}, slices.Collect(maps.Keys(groups)))
			continue
		}
		require.Len(t, groups, 2)
		for _, m := range []string{"alice", "bob"} {
			lv := e.getTotals(t, "", &usagev1.TotalsQuery{Level: levelMember, Workspace: "acme", Member: m,
				TokenPeriodStart: timestamppb.New(monthStart)})
			require.Equal(t, lv[0].GetPeriodTokens(), groups[m], m)
		}
	}

	// Every level's all-time totals are those of the records sent.
	var tokens int64
	for _, r := range all {
		if r.GetWorkspace() == "acme" {
			tokens += r.GetPromptTokens() + r.GetCompletionTokens()
		}
	}
	never := timestamppb.New(time.Unix(0, 0))
	got := e.getTotals(t, "", &usagev1.TotalsQuery{Level: levelWorkspace, Workspace: "acme", TokenPeriodStart: never})
	require.Equal(t, tokens, got[0].GetPeriodTokens())

	// Two months on, February and March are rolled up into months at
	// every level alike.
	e.clk.Set(t0.AddDate(0, 2, 0))
	require.NoError(t, e.srv.maintain(t.Context()))
	require.Zero(t, count(t, e.etcd, "agg/"+workspaceID("acme")+"/d/"))
	require.Positive(t, count(t, e.etcd, "agg/"+workspaceID("acme")+"/m/"))
	t.Run("as months", func(t *testing.T) { check(t, t0, t0.Format(dayLayout)) })
	got = e.getTotals(t, "", &usagev1.TotalsQuery{Level: levelWorkspace, Workspace: "acme", TokenPeriodStart: never})
	require.Equal(t, tokens, got[0].GetPeriodTokens())
}

// TestCreditSpend: the workspace's credit spend counts, all time, the cost
// of the records drawn from credits and of no others, once.
func TestCreditSpend(t *testing.T) {
	e := newEnv(t, MaxRetention)
	// mock-small, 100 prompt and 50 completion tokens: 15 + 30 micros.
	const each = 45
	var rs []*usagev1.UsageRecord
	for i, at := range []time.Time{t0.AddDate(0, 0, -20), t0.AddDate(0, 0, -1), t0} {
		for j := range 4 {
			r := rec(fmt.Sprintf("cr-%d-%d", i, j), fmt.Sprintf("k%d", j%2), "mock-small", 100, 50, at)
			r.Credits = j%2 == 0
			rs = append(rs, r)
		}
	}
	other := rec("cr-beta", "kz", "mock-small", 100, 50, t0)
	other.Workspace, other.Credits = "beta", true
	e.record(t, append(rs, other)...)
	e.recordAs(t, testProducer, 1, rs...) // a retry counts nothing

	spent := func(t *testing.T, ws string) int64 {
		t.Helper()
		got := e.getTotals(t, "", &usagev1.TotalsQuery{Level: levelWorkspace, Workspace: ws, Credits: true, Models: []string{"mock-small"}})
		require.Len(t, got, 2)
		require.Zero(t, got[1].GetCreditSpentMicros(), "the spend is the workspace's, on its total row")
		return got[0].GetCreditSpentMicros()
	}
	require.EqualValues(t, 6*each, spent(t, "acme"))
	require.EqualValues(t, each, spent(t, "beta"))
	require.EqualValues(t, 0, spent(t, "gamma"))
	noCredits := e.getTotals(t, "", &usagev1.TotalsQuery{Level: levelWorkspace, Workspace: "acme"})
	require.Zero(t, noCredits[0].GetCreditSpentMicros(), "answered only when asked")

	// All time: days rolled up into months still count.
	e.clk.Set(t0.AddDate(0, 3, 0))
	require.NoError(t, e.srv.maintain(t.Context()))
	require.Zero(t, count(t, e.etcd, "agg/"+creditID("acme")+"/d/"))
	require.EqualValues(t, 6*each, spent(t, "acme"))
}

func TestTotalsBadLevelQueries(t *testing.T) {
	e := newEnv(t, 0)
	for _, tc := range []struct {
		name string
		q    *usagev1.TotalsQuery
	}{
		{"no key", &usagev1.TotalsQuery{}},
		{"key level without a key", &usagev1.TotalsQuery{Level: levelKey, Workspace: "acme"}},
		{"a level's id as a key", &usagev1.TotalsQuery{Key: workspaceID("acme")}},
		{"member level without the member", &usagev1.TotalsQuery{Level: levelMember, Workspace: "acme"}},
		{"member level without the workspace", &usagev1.TotalsQuery{Level: levelMember, Member: "alice"}},
		{"workspace level without the workspace", &usagev1.TotalsQuery{Level: levelWorkspace}},
		{"unknown level", &usagev1.TotalsQuery{Level: 99, Workspace: "acme"}},
		{"credits of a key", &usagev1.TotalsQuery{Key: "k1", Credits: true}},
		{"credits of a member", &usagev1.TotalsQuery{Level: levelMember, Workspace: "acme", Member: "alice", Credits: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.cli.GetTotals(svc(t.Context()), &usagev1.GetTotalsRequest{Queries: []*usagev1.TotalsQuery{
				{Key: "k1"}, tc.q,
			}})
			requireCode(t, err, codes.InvalidArgument)
		})
	}
	t.Run("a record whose key looks like a level", func(t *testing.T) {
		_, err := send(t.Context(), e.cli, "edge-x", 1, []*usagev1.UsageRecord{rec("lv", "@w:acme", "mock-small", 1, 1, t0)})
		requireCode(t, err, codes.InvalidArgument)
	})
	t.Run("a negative request-log cap", func(t *testing.T) {
		r := rec("neg", "k1", "mock-small", 1, 1, t0)
		r.RequestLogCap = -1
		_, err := send(t.Context(), e.cli, "edge-x", 1, []*usagev1.UsageRecord{r})
		requireCode(t, err, codes.InvalidArgument)
	})
}

// TestLevelIDsDoNotCollide: workspaces and members whose ids hold the
// separators of level ids get levels of their own.
func TestLevelIDsDoNotCollide(t *testing.T) {
	e := newEnv(t, 0)
	a := rec("c-1", "k1", "mock-small", 100, 0, t0)
	a.Workspace, a.Owner = "a:b", "c"
	b := rec("c-2", "k2", "mock-small", 200, 0, t0)
	b.Workspace, b.Owner = "a", "b:c"
	e.record(t, a, b)
	for _, tc := range []struct {
		ws, member string
		want       int64
	}{{"a:b", "c", 100}, {"a", "b:c", 200}} {
		got := e.getTotals(t, "", &usagev1.TotalsQuery{Level: levelMember, Workspace: tc.ws, Member: tc.member})
		require.Equal(t, tc.want, got[0].GetTokensToday(), "%s/%s", tc.ws, tc.member)
	}
}

// TestRequestLogCap: a workspace whose records carry a request-log cap
// keeps its newest entries up to the cap after a trim; another workspace
// keeps every entry; the reported limits are listed with each request.
func TestRequestLogCap(t *testing.T) {
	e := newEnv(t, 0)
	var capped, free []*usagev1.UsageRecord
	for i := range 12 {
		r := rec(fmt.Sprintf("cap-%d", i), "k1", "mock-small", 1, 1, t0.Add(time.Duration(i)*time.Second))
		r.RequestLogCap = 5
		if i == 11 {
			r.Reported = []string{"workspace/tpd", "key/rpm:mock-small"}
		}
		capped = append(capped, r)
		o := rec(fmt.Sprintf("free-%d", i), "kz", "mock-small", 1, 1, t0.Add(time.Duration(i)*time.Second))
		o.Workspace = "beta"
		free = append(free, o)
	}
	e.record(t, capped...)
	e.record(t, free...)
	require.Equal(t, 12, logCount(t, e.rlog), "a cap applies at the trim")
	require.NoError(t, e.srv.trimLog(t.Context()))
	got := logEntries(t, e.rlog, "acme")
	require.Len(t, got, 5)
	for i, en := range got {
		require.Equal(t, t0.Add(time.Duration(11-i)*time.Second), en.At, "the newest are kept")
	}
	require.Len(t, logEntries(t, e.rlog, "beta"), 12)
	require.EqualValues(t, 12, e.totals(t, "k1")[0].GetRequestsToday(), "the ledger keeps counting")

	resp, err := e.cli.ListRequests(member(t.Context()), &usagev1.ListRequestsRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Len(t, resp.GetRequests(), 5)
	require.Equal(t, []string{"workspace/tpd", "key/rpm:mock-small"}, resp.GetRequests()[0].GetReported())
	require.EqualValues(t, 5, resp.GetRequests()[0].GetRequestLogCap())

	// Records without a cap put the workspace back under the store's
	// bounds alone.
	more := recs("uncapped", 3, "k1", "mock-small", t0.Add(time.Minute))
	e.record(t, more...)
	require.NoError(t, e.srv.trimLog(t.Context()))
	require.Len(t, logEntries(t, e.rlog, "acme"), 8)
}
