package usage

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

// BenchmarkWorkspaceTotals answers a workspace's day and period totals as
// a seeding limiter asks them: from the workspace's own aggregates (one
// query) against summing the totals of its N keys (N queries), on real
// etcd, in the same run. Each key has used two models today.
func BenchmarkWorkspaceTotals(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		e := newEnv(b, 0)
		var rs []*usagev1.UsageRecord
		for k := range n {
			for _, m := range []string{"mock-small", "mock-large"} {
				rs = append(rs, rec(fmt.Sprintf("b-%d-%s", k, m), fmt.Sprintf("k%d", k), m, 100, 50, t0))
			}
		}
		for i := 0; i < len(rs); i += maxBatch {
			e.record(b, rs[i:min(i+maxBatch, len(rs))]...)
		}
		start := timestamppb.New(t0.AddDate(0, 0, -10))
		level := &usagev1.GetTotalsRequest{Queries: []*usagev1.TotalsQuery{{
			Level: levelWorkspace, Workspace: "acme", TokenPeriodStart: start, BudgetPeriodStart: start,
		}}}
		keys := &usagev1.GetTotalsRequest{}
		for k := range n {
			keys.Queries = append(keys.Queries, &usagev1.TotalsQuery{Key: fmt.Sprintf("k%d", k), TokenPeriodStart: start, BudgetPeriodStart: start})
		}
		want := int64(n) * 2 * 150
		b.Run(fmt.Sprintf("keys=%d/aggregate", n), func(b *testing.B) {
			for b.Loop() {
				t, err := e.srv.totals(b.Context(), level)
				require.NoError(b, err)
				require.Equal(b, want, t[0].GetTokensToday())
			}
		})
		b.Run(fmt.Sprintf("keys=%d/sum-keys", n), func(b *testing.B) {
			for b.Loop() {
				t, err := e.srv.totals(b.Context(), keys)
				require.NoError(b, err)
				var sum int64
				for _, r := range t {
					sum += r.GetTokensToday()
				}
				require.Equal(b, want, sum)
			}
		})
	}
}
