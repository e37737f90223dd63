package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/services/limiter"
	"github.com/keygate/keygate/services/usage"
)

// TestLimiterSeedsLevelsFromLedger: a limiter that starts after another
// went away takes the member and workspace levels (day requests, budget
// period cost, credit spend) from the real ledger's level totals, exactly:
// it admits what the levels have left and not one request more.
func TestLimiterSeedsLevelsFromLedger(t *testing.T) {
	t.Parallel()
	const svcToken = "svc"
	now := time.Date(2026, 3, 11, 12, 0, 0, 0, time.UTC)
	clk := clock.NewFake(now)
	etcd := etcdtest.Start(t)
	ks := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { keystorev1.RegisterKeystoreServiceServer(r, priceList{}) })
	rl, err := usage.OpenRequestLog(t.Context(), "", t.TempDir(), 0, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = rl.Close() })
	led, err := usage.New(t.Context(), usage.Config{
		Etcd: etcd.Client, Clock: clk, ServiceToken: svcToken, RequestLog: rl,
		Keystore: keystorev1.NewKeystoreServiceClient(grpctest.Dial(t, ks.Addr)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = led.Close() })
	go func() { _ = led.Run(t.Context()) }()
	ledger := usagev1.NewUsageServiceClient(grpctest.Dial(t, grpctest.Serve(t, led.Register).Addr,
		grpc.WithPerRPCCredentials(auth.Token{Value: svcToken})))

	startLimiter := func(t *testing.T) (*limiter.Server, limiterv1.LimiterServiceClient) {
		s, err := limiter.New(t.Context(), limiter.Config{Clock: clk, Usage: ledger})
		require.NoError(t, err)
		go func() { _ = s.Run(context.WithoutCancel(t.Context())) }()
		return s, limiterv1.NewLimiterServiceClient(grpctest.Dial(t, grpctest.Serve(t, s.Register).Addr))
	}
	// alice has rpd 4 over her keys, the workspace rpd 8 and 500 micros
	// of credits.
	item := func(key, member, id string) *limiterv1.CheckItem {
		it := &limiterv1.CheckItem{
			Key: key, Workspace: "acme", Member: member, ReservationId: id, Model: "mock-small",
			EstimatedTokens: 10, EstimatedCostMicros: 45,
			Credits: &limiterv1.Credits{GrantedMicros: 500},
			Levels: []*limiterv1.LevelPolicy{{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE,
				Policy: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpd: 8}}}},
		}
		if member == "alice" {
			it.Levels = append(it.Levels, &limiterv1.LevelPolicy{Level: typev1.LimitLevel_LIMIT_LEVEL_MEMBER,
				Policy: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpd: 4}}})
		}
		return it
	}
	check := func(t *testing.T, c limiterv1.LimiterServiceClient, it *limiterv1.CheckItem) *limiterv1.CheckResult {
		t.Helper()
		resp, err := c.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{it}})
		require.NoError(t, err)
		return resp.GetResults()[0]
	}
	// record tells the ledger what an admitted request used, as the edge
	// does: 100 prompt and 50 completion tokens of mock-small, 45 micros,
	// drawn from credits.
	seq := uint64(1)
	record := func(t *testing.T, key, member, id string) {
		t.Helper()
		_, err := ledger.RecordUsage(t.Context(), &usagev1.RecordUsageRequest{Producer: "edge-1", FirstSequence: seq, Records: []*usagev1.UsageRecord{{
			RequestId: id, Key: key, Workspace: "acme", Owner: member, Model: "mock-small",
			PromptTokens: 100, CompletionTokens: 50, Status: usagev1.RequestStatus_REQUEST_STATUS_OK,
			Time: timestamppb.New(clk.Now()), InputPricePerMillionUsd: "0.15", OutputPricePerMillionUsd: "0.60",
			Credits: true,
		}}})
		require.NoError(t, err)
		seq++
	}

	// The first limiter admits 3 of alice's requests (two keys) and 2 of
	// bob's, and goes away.
	first, c1 := startLimiter(t)
	for i, u := range []struct{ key, member string }{{"ka", "alice"}, {"kb", "alice"}, {"ka", "alice"}, {"kc", "bob"}, {"kc", "bob"}} {
		id := fmt.Sprintf("r%d", i)
		require.True(t, check(t, c1, item(u.key, u.member, id)).GetAllowed(), "request %d", i)
		record(t, u.key, u.member, id)
	}
	require.NoError(t, first.Close())

	tot, err := ledger.GetTotals(t.Context(), &usagev1.GetTotalsRequest{Queries: []*usagev1.TotalsQuery{
		{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, Workspace: "acme", Credits: true},
		{Level: typev1.LimitLevel_LIMIT_LEVEL_MEMBER, Workspace: "acme", Member: "alice"},
	}})
	require.NoError(t, err)
	require.EqualValues(t, 5, tot.GetTotals()[0].GetRequestsToday())
	require.EqualValues(t, 5*45, tot.GetTotals()[0].GetCreditSpentMicros())
	require.EqualValues(t, 3, tot.GetTotals()[1].GetRequestsToday())

	// The second starts every level from the ledger.
	_, c2 := startLimiter(t)
	require.True(t, check(t, c2, item("kb", "alice", "s1")).GetAllowed(), "alice has one request left of 4")
	res := check(t, c2, item("ka", "alice", "s2"))
	require.False(t, res.GetAllowed())
	require.Equal(t, typev1.LimitLevel_LIMIT_LEVEL_MEMBER, res.GetDeniedLevel())
	require.Equal(t, limiterv1.LimitKind_LIMIT_KIND_RPD, res.GetDeniedBy())

	// 6 of the workspace's 8 requests and 270 of its 500 credit micros
	// are used: one more request of 45 fits; the credits then hold 185,
	// and an estimate of 200 does not fit them.
	require.True(t, check(t, c2, item("kc", "bob", "s3")).GetAllowed())
	big := item("kc", "bob", "s4")
	big.EstimatedCostMicros = 200
	res = check(t, c2, big)
	require.False(t, res.GetAllowed())
	require.Equal(t, limiterv1.LimitKind_LIMIT_KIND_CREDITS, res.GetDeniedBy())
	require.True(t, check(t, c2, item("kd", "bob", "s5")).GetAllowed(), "the eighth request")
	res = check(t, c2, item("kd", "bob", "s6"))
	require.False(t, res.GetAllowed())
	require.Equal(t, typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, res.GetDeniedLevel())
	require.Equal(t, limiterv1.LimitKind_LIMIT_KIND_RPD, res.GetDeniedBy())
}

// priceList is a keystore that only lists the models' prices.
type priceList struct {
	keystorev1.UnimplementedKeystoreServiceServer
}

func (priceList) ListModels(context.Context, *keystorev1.ListModelsRequest) (*keystorev1.ListModelsResponse, error) {
	return &keystorev1.ListModelsResponse{Models: []*keystorev1.Model{
		{Id: "mock-small", InputPricePerMillionUsd: "0.15", OutputPricePerMillionUsd: "0.60"},
	}}, nil
}
