package edge_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/limitpolicy"
)

const levelsKey = "kg_levels"

// governed sets levelsKey: a key of bob in workspace acme, whose
// workspace holds credits and has an rpm override in force for an hour,
// and whose member has a tpd limit.
func governed(h *harness) {
	now := h.clock.Now()
	h.verifier.setLevels(levelsKey, limitpolicy.Levels{
		Key: &keystorev1.Key{Id: "k20", Workspace: "acme", Owner: "bob", State: keystorev1.KeyState_KEY_STATE_ACTIVE,
			GlobalLimits: &typev1.Limits{Rpm: 7}},
		Workspace: &keystorev1.Workspace{Id: "acme", RequestLogCap: 500, CreditsGrantedUsd: "12.5",
			Limits: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 10}},
			LimitOverride: &typev1.Override{ExpireTime: timestamppb.New(now.Add(time.Hour)),
				Policy: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 100}}},
			AlertThresholds: []int32{50, 100}},
		Member: &keystorev1.Member{Workspace: "acme", Member: "bob",
			Limits: &typev1.Policy{GlobalLimits: &typev1.Limits{Tpd: 5000}}},
	})
}

func (h *harness) lastItem() *limiterv1.CheckItem {
	h.limiter.mu.Lock()
	defer h.limiter.mu.Unlock()
	return h.limiter.items[len(h.limiter.items)-1]
}

// levelRpm is the enforced rpm of level lv in item.
func levelRpm(item *limiterv1.CheckItem, lv typev1.LimitLevel) int64 {
	for _, l := range item.GetLevels() {
		if l.GetLevel() == lv {
			return l.GetPolicy().GetGlobalLimits().GetRpm()
		}
	}
	return -1
}

// TestCheckItemCarriesLevels: the Check item names the workspace and
// member and carries their limits, credits and thresholds; an override is
// applied while in force and reverts on the clock with nothing to undo;
// settlements name the levels; the usage record says credits and the
// workspace's request-log cap.
func TestCheckItemCarriesLevels(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	governed(h)

	a := h.post(t, "/v1/chat/completions", levelsKey, chatBody)
	require.Equal(t, http.StatusOK, a.status, "%s", a.body)
	item := h.lastItem()
	require.Equal(t, "acme", item.GetWorkspace())
	require.Equal(t, "bob", item.GetMember())
	require.EqualValues(t, 7, item.GetPolicy().GetGlobalLimits().GetRpm())
	require.EqualValues(t, 100, levelRpm(item, typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE), "override in force")
	require.EqualValues(t, 12_500_000, item.GetCredits().GetGrantedMicros())
	require.Equal(t, []int32{50, 100}, item.GetAlertThresholds())
	require.Equal(t, a.header.Get("X-Request-Id"), item.GetReservationId())
	require.Positive(t, item.GetEstimatedTokens())

	id := a.header.Get("X-Request-Id")
	require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
	rec := h.usage.record(id)
	require.True(t, rec.GetCredits(), "drawn from credits")
	require.EqualValues(t, 500, rec.GetRequestLogCap())
	require.Equal(t, "acme", rec.GetWorkspace())
	require.Equal(t, "bob", rec.GetOwner())
	require.Empty(t, rec.GetReported())
	require.Eventually(t, func() bool {
		s, _ := h.limiter.settled()
		for _, st := range s {
			if st.GetReservationId() == id {
				return st.GetWorkspace() == "acme" && st.GetMember() == "bob"
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond, "the settlement names where the reservation was made")

	// The override ends: the next item has the workspace's own limit.
	h.clock.Advance(time.Hour)
	require.Equal(t, http.StatusOK, h.post(t, "/v1/chat/completions", levelsKey, chatBody).status)
	require.EqualValues(t, 10, levelRpm(h.lastItem(), typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE), "reverted")
}

// denyAt answers every Check with a denial by kind at level (model for a
// per-model limit).
func denyAt(lv typev1.LimitLevel, kind limiterv1.LimitKind, model string) func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
	return func(*limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
		res := &limiterv1.CheckResult{DeniedBy: kind, DeniedLevel: lv, DeniedModel: model,
			Quotas: []*limiterv1.Quota{{Kind: kind, Model: model, Level: lv, Limit: 3, ResetAfter: durationpb.New(20 * time.Second)}}}
		if kind == limiterv1.LimitKind_LIMIT_KIND_RPM || kind == limiterv1.LimitKind_LIMIT_KIND_TPM {
			res.RetryAfter = durationpb.New(20 * time.Second)
		}
		return res, nil
	}
}

// TestDenialNamesLevel: a 429 says which level's limit refused, in
// x-keygate-limited-by and in its message.
func TestDenialNamesLevel(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	governed(h)
	for _, tc := range []struct {
		lv     typev1.LimitLevel
		kind   limiterv1.LimitKind
		model  string
		header string
		msg    string
	}{
		{typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, limiterv1.LimitKind_LIMIT_KIND_RPM, "", "workspace/rpm", "for all the keys of this workspace"},
		{typev1.LimitLevel_LIMIT_LEVEL_MEMBER, limiterv1.LimitKind_LIMIT_KIND_TPD, "", "member/tpd", "for all the keys of this key's owner"},
		{typev1.LimitLevel_LIMIT_LEVEL_KEY, limiterv1.LimitKind_LIMIT_KIND_RPM, "mock-small", "key/rpm:mock-small", "for this key on model mock-small"},
		{typev1.LimitLevel_LIMIT_LEVEL_UNSPECIFIED, limiterv1.LimitKind_LIMIT_KIND_RPM, "", "key/rpm", "for this key"},
		{typev1.LimitLevel_LIMIT_LEVEL_MEMBER, limiterv1.LimitKind_LIMIT_KIND_BUDGET, "", "member/budget", "for all the keys of this key's owner"},
	} {
		t.Run(tc.header, func(t *testing.T) {
			h.limiter.setDecide(denyAt(tc.lv, tc.kind, tc.model))
			a := h.post(t, "/v1/chat/completions", levelsKey, chatBody)
			require.Equal(t, http.StatusTooManyRequests, a.status, "%s", a.body)
			require.Equal(t, tc.header, a.header.Get("X-Keygate-Limited-By"))
			require.Contains(t, string(a.body), tc.msg)
			require.Contains(t, string(a.body), "(limit ", "the denying level's quota is quoted")
		})
	}
}

// TestCreditsDenial: a request the workspace's credits cannot cover is a
// 402 in each dialect's shape that clients must not retry.
func TestCreditsDenial(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	governed(h)
	h.limiter.setDecide(denyAt(typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, limiterv1.LimitKind_LIMIT_KIND_CREDITS, ""))
	requireCredits402 := func(t *testing.T, a answer) {
		t.Helper()
		require.Equal(t, http.StatusPaymentRequired, a.status, "%s", a.body)
		require.Equal(t, "false", a.header.Get("X-Should-Retry"))
		require.Empty(t, a.header.Values("Retry-After"))
		require.Equal(t, "workspace/credits", a.header.Get("X-Keygate-Limited-By"))
	}
	t.Run("openai", func(t *testing.T) {
		a := h.post(t, "/v1/chat/completions", levelsKey, chatBody)
		requireCredits402(t, a)
		var e struct {
			Error struct{ Type, Code, Message string } `json:"error"`
		}
		require.NoError(t, json.Unmarshal(a.body, &e))
		require.Equal(t, "insufficient_credits", e.Error.Type)
		require.Equal(t, "insufficient_credits", e.Error.Code)
		require.Contains(t, e.Error.Message, "credits")
	})
	t.Run("anthropic", func(t *testing.T) {
		a := h.do(t, http.MethodPost, "/v1/messages", anthropicHeaders(levelsKey), messagesBody)
		requireCredits402(t, a)
		require.Equal(t, "billing_error", anthropicErrorType(t, a))
	})
	require.EqualValues(t, 2, h.requests(t, "insufficient_credits"))
}

// requests is keygate.edge.requests for reason.
func (h *harness) requests(tb testing.TB, reason string) int64 {
	tb.Helper()
	return h.sumWhere(tb, "keygate.edge.requests", attribute.String("reason", reason))
}

// sumWhere sums the points of an Int64 sum metric that carry every kv.
func (h *harness) sumWhere(tb testing.TB, name string, kvs ...attribute.KeyValue) int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(tb, h.reader.Collect(tb.Context(), &rm))
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			s, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != name || !ok {
				continue
			}
		points:
			for _, p := range s.DataPoints {
				for _, kv := range kvs {
					if v, ok := p.Attributes.Value(kv.Key); !ok || v != kv.Value {
						continue points
					}
				}
				n += p.Value
			}
		}
	}
	return n
}

// TestReportModeCounts: a report-mode limit that would deny never denies;
// it is counted by level and limit, marked in the request's usage record
// and sent with the key's use.
func TestReportModeCounts(t *testing.T) {
	t.Parallel()
	h, ks := startKeyUseEdge(t, 10*time.Millisecond)
	governed(h)
	h.limiter.setDecide(func(it *limiterv1.CheckItem) (*limiterv1.CheckResult, error) {
		res, _ := allow(it)
		res.Reported = []*limiterv1.Reported{
			{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, Kind: limiterv1.LimitKind_LIMIT_KIND_TPD},
			{Level: typev1.LimitLevel_LIMIT_LEVEL_KEY, Kind: limiterv1.LimitKind_LIMIT_KIND_RPM, Model: "mock-small"},
		}
		return res, nil
	})
	var ids []string
	for range 3 {
		a := h.post(t, "/v1/chat/completions", levelsKey, chatBody)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		require.Empty(t, a.header.Values("X-Keygate-Limited-By"))
		ids = append(ids, a.header.Get("X-Request-Id"))
	}
	require.EqualValues(t, 3, h.sumWhere(t, "keygate.edge.report_denials",
		attribute.String("level", "workspace"), attribute.String("limit", "tpd")))
	require.EqualValues(t, 3, h.sumWhere(t, "keygate.edge.report_denials",
		attribute.String("level", "key"), attribute.String("limit", "rpm")))
	require.EqualValues(t, 6, h.counter(t, "keygate.edge.report_denials"))
	for _, id := range ids {
		require.Eventually(t, func() bool { return h.usage.record(id) != nil }, 5*time.Second, 5*time.Millisecond)
		require.Equal(t, []string{"workspace/tpd", "key/rpm:mock-small"}, h.usage.record(id).GetReported())
	}
	require.Eventually(t, func() bool {
		for _, call := range ks.accepted() {
			for _, u := range call.GetUses() {
				if u.GetKey() == "k20" {
					require.ElementsMatch(t, []string{"workspace/tpd", "key/rpm:mock-small"}, u.GetReported())
					return true
				}
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond)
}

// TestUnreadableLevels: levels the edge cannot build an item from (a
// workspace's credits it cannot parse) are the server's fault: a 503,
// never a decision on partial limits.
func TestUnreadableLevels(t *testing.T) {
	t.Parallel()
	h := startEdge(t, options{})
	h.verifier.setLevels("kg_bad", limitpolicy.Levels{
		Key:       &keystorev1.Key{Id: "k21", Workspace: "acme", Owner: "bob", State: keystorev1.KeyState_KEY_STATE_ACTIVE},
		Workspace: &keystorev1.Workspace{Id: "acme", CreditsGrantedUsd: "lots"}})
	a := h.post(t, "/v1/chat/completions", "kg_bad", chatBody)
	require.Equal(t, http.StatusServiceUnavailable, a.status, "%s", a.body)
	require.Equal(t, "limits_unavailable", a.errorCode())
	require.Zero(t, h.limiter.checks())
	require.EqualValues(t, 1, h.requests(t, "limits_unavailable"))
}
