package limiter

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
)

// crash stops a replica as kill -9 would: it stops answering at once,
// hands nothing over, and its lease ends (as it would after its TTL).
func (r *replica) crash() {
	r.closed = true
	r.gs.Stop()
	r.srv.cancel()
	r.srv.wg.Wait()
	_ = r.srv.reg.Close()
	_ = r.srv.watcher.Close()
	_ = r.srv.peers.Close()
}

// TestCrashStartsFromReplica: the holder of a key crashes. Its next owner
// had a replica of the key's state, so it starts from the replica: the
// rolling window, the day counter and an open reservation survive, and
// the key admits only what is left of its limits. The ledger knows
// nothing, so a key started from it would admit its whole limit again.
func TestCrashStartsFromReplica(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a, b := c.start(t), c.start(t)
	waitMembers(t, 2, a, b)
	const key = "crash-key"
	m, _ := a.srv.watcher.Ring().Owner(key)
	holder, next := a, b
	if m.Addr == b.addr {
		holder, next = b, a
	}
	p := &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 10, Rpd: 20, Tpm: 1000}}
	admit := func(via *replica, id string) bool {
		resp, err := via.client.Check(t.Context(), &limiterv1.CheckRequest{Items: []*limiterv1.CheckItem{item(key, id, p)}})
		require.NoError(t, err)
		return resp.GetResults()[0].GetAllowed()
	}
	for i := range 7 {
		require.True(t, admit(holder, "r"+string(rune('a'+i))))
	}
	// The next owner has the latest state: 7 requests, 7 reservations.
	require.Eventually(t, func() bool {
		st := next.srv.replicas.Peek(key)
		return st != nil && st.GetGlobal().GetDayRequests() == 7 && len(st.GetReservations()) == 7
	}, 10*time.Second, 5*time.Millisecond)

	holder.crash()
	waitMembers(t, 1, next)
	got := 0
	for i := range 10 {
		if admit(next, "after"+string(rune('a'+i))) {
			got++
		}
	}
	require.Equal(t, 3, got, "the rolling window survived the crash: 3 of rpm 10 left")
	// A reservation opened before the crash settles at the new holder.
	resp, err := next.client.Settle(t.Context(), &limiterv1.SettleRequest{Settlements: []*limiterv1.Settlement{
		{Key: key, ReservationId: "ra", ActualTokens: 4},
	}})
	require.NoError(t, err)
	require.Zero(t, resp.GetUnknown(), "the reservation moved with the replica")

	// After the minute, only the day is left: 20 - 10 admitted.
	c.clock.Advance(61 * time.Second)
	got = 0
	for i := range 20 {
		if admit(next, "later"+string(rune('a'+i))) {
			got++
		}
	}
	require.Equal(t, 10, got, "the day counter survived the crash")
}
