package keystore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// reportEvents counts a key's "limit.report" audit events by limit.
func (e *env) reportEvents(tb testing.TB, ws, key string) map[string]int {
	tb.Helper()
	ev, err := e.client.ListAuditEvents(e.root(tb), &keystorev1.ListAuditEventsRequest{Workspace: ws, Key: key, PageSize: 1000})
	require.NoError(tb, err)
	n := map[string]int{}
	for _, a := range ev.GetEvents() {
		if a.GetAction() == "limit.report" {
			for _, l := range []string{"workspace/tpd", "key/rpm:mock-small"} {
				if strings.Contains(a.GetNewValue(), l) {
					n[l]++
				}
			}
		}
	}
	return n
}

// TestReportedLimitsAudited: report-mode limits that would have denied a
// key's requests are audited, sampled at one event per key and limit a
// minute, however many edges send them; a key that is gone gets none, and
// a malformed limit is refused with nothing written.
func TestReportedLimitsAudited(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	k, _ := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "one"})
	rep := func(limits ...string) *keystorev1.KeyUse {
		u := use("acme", k.GetId(), epoch)
		u.Reported = limits
		return u
	}
	e.recordUse(t, rep("workspace/tpd"), rep("workspace/tpd", "key/rpm:mock-small"))
	e.recordUse(t, rep("workspace/tpd"))
	require.Equal(t, map[string]int{"workspace/tpd": 1, "key/rpm:mock-small": 1}, e.reportEvents(t, "acme", k.GetId()))

	e.clock.Advance(time.Minute)
	e.recordUse(t, rep("workspace/tpd"))
	require.Equal(t, map[string]int{"workspace/tpd": 2, "key/rpm:mock-small": 1}, e.reportEvents(t, "acme", k.GetId()))

	for _, bad := range []string{"team/tpd", "workspace/TPD", "workspace/tpd;drop", ""} {
		_, err := e.client.RecordKeyUse(e.root(t), &keystorev1.RecordKeyUseRequest{Uses: []*keystorev1.KeyUse{rep(bad)}})
		requireCode(t, codes.InvalidArgument, err)
	}
	require.Equal(t, map[string]int{"workspace/tpd": 2, "key/rpm:mock-small": 1}, e.reportEvents(t, "acme", k.GetId()))

	_, err := e.client.DeleteKey(e.root(t), &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	e.clock.Advance(time.Minute)
	e.recordUse(t, rep("workspace/tpd"))
	require.Zero(t, e.reportEvents(t, "acme", k.GetId())["workspace/tpd"]-2, "a deleted key gets no event")
}
