package usage

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/auth"
)

// TestPlainMemberSeesOwnKeysOnly: workspace listings narrow to the caller's
// own keys for a plain member; owners and admins see the whole workspace.
func TestPlainMemberSeesOwnKeysOnly(t *testing.T) {
	e := newEnv(t, 0)
	e.record(t, recs("a", 2, "k1", "mock-small", t0)...)
	e.record(t, recs("b", 3, "k2", "mock-small", t0)...)
	plain := auth.WithBearer(t.Context(), plainToken)

	rows, err := e.cli.ListUsage(plain, &usagev1.ListUsageRequest{Workspace: "acme", GroupBy: usagev1.GroupBy_GROUP_BY_KEY, StartDate: "2026-03-01", EndDate: "2026-03-31"})
	require.NoError(t, err)
	require.Len(t, rows.GetRows(), 1)
	require.Equal(t, "k2", rows.GetRows()[0].GetGroup())
	require.EqualValues(t, 3, rows.GetRows()[0].GetRequests())

	all, err := e.cli.ListUsage(member(t.Context()), &usagev1.ListUsageRequest{Workspace: "acme", GroupBy: usagev1.GroupBy_GROUP_BY_KEY, StartDate: "2026-03-01", EndDate: "2026-03-31"})
	require.NoError(t, err)
	require.Len(t, all.GetRows(), 2, "an admin sees every key")

	reqs, err := e.cli.ListRequests(plain, &usagev1.ListRequestsRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Len(t, reqs.GetRequests(), 3)
	for _, r := range reqs.GetRequests() {
		require.Equal(t, "owner-k2", r.GetOwner())
	}
	_, err = e.cli.ListRequests(plain, &usagev1.ListRequestsRequest{Workspace: "acme", Owner: "owner-k1"})
	requireCode(t, err, codes.PermissionDenied)
}
