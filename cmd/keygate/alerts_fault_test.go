package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/alertbox"
	"github.com/keygate/keygate/internal/etcdtest"
)

// ackReceiver is a webhook receiver that counts, per webhook-id, the
// deliveries it acknowledged (answered while the sender was still there).
// The request numbered holdAt is held open until its sender goes away:
// the dispatcher is then killed in the middle of that delivery.
type ackReceiver struct {
	mu      sync.Mutex
	n       int
	holdAt  int
	held    chan string
	acked   map[string]int
	aborted []string
}

func (r *ackReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	_, _ = io.Copy(io.Discard, req.Body)
	id := req.Header.Get("webhook-id")
	r.mu.Lock()
	r.n++
	hold := r.n == r.holdAt
	r.mu.Unlock()
	if hold {
		r.held <- id
		<-req.Context().Done() // the sender died: never acknowledged
		r.mu.Lock()
		r.aborted = append(r.aborted, id)
		r.mu.Unlock()
		return
	}
	r.mu.Lock()
	r.acked[id]++
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (r *ackReceiver) snapshot() (map[string]int, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	acked := make(map[string]int, len(r.acked))
	for k, v := range r.acked {
		acked[k] = v
	}
	return acked, append([]string(nil), r.aborted...)
}

// TestAlertDeliverySurvivesDispatcherKill: two keystore processes share
// the alert outbox; the one dispatching is killed (SIGKILL) while a
// receiver holds one of its deliveries open. The other takes the lead
// when the lease lapses and finishes: every alert is acknowledged by the
// receiver exactly once (0 lost, 0 duplicated by webhook-id), the one cut
// off mid-delivery included, and the outbox ends empty.
func TestAlertDeliverySurvivesDispatcherKill(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	c := newCluster(t)
	endpoints := c.startEtcd(1)
	cli := etcdtest.NewClient(t, endpoints)
	procs := map[string]*proc{}
	for _, name := range []string{"keystore-a", "keystore-b"} {
		p, a := c.serveProc(name, "keystore", "--grpc-addr", anyPort, "--alert-backoff", "100ms", "--alert-max-backoff", "1s")
		procs[a["grpc"]] = p
	}
	gw := c.serve("gateway", "gateway", "--http-addr", anyPort, "--keystore-addr", firstKey(procs))["http"]
	c.waitHealthy()
	api := "http://" + gw

	rcv := &ackReceiver{holdAt: 8, held: make(chan string, 1), acked: map[string]int{}}
	srv := httptest.NewServer(rcv)
	t.Cleanup(srv.Close)
	code, _, body := rest(t, "POST", api+"/v1/workspaces", c.root, map[string]any{"id": "acme"})
	require.Equal(t, http.StatusOK, code, body)
	code, _, body = rest(t, "POST", api+"/v1/workspaces/acme/webhooks", c.root, map[string]any{"url": srv.URL + "/hook"})
	require.Equal(t, http.StatusOK, code, body)

	const n = 20
	ids := map[string]bool{}
	now := time.Now()
	for i := range n {
		a := &keystorev1.Alert{Workspace: "acme", Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, LevelId: "acme", Limit: "budget",
			ThresholdPercent: int32(i + 1), LimitValue: "100.00", Used: fmt.Sprintf("%d.00", i+1), Period: "month",
			Time: timestamppb.New(now.Add(time.Duration(i) * time.Millisecond))}
		created, err := alertbox.Raise(t.Context(), cli, a)
		require.NoError(t, err)
		require.True(t, created)
		ids[alertbox.ID(a)] = true
	}

	var cut string
	select {
	case cut = <-rcv.held:
	case <-time.After(60 * time.Second):
		t.Fatal("no delivery reached the receiver")
	}
	leader := dispatcherLeader(t, cli)
	p := procs[leader]
	require.NotNil(t, p, "leader %q is one of %v", leader, procs)
	p.kill(t)
	t.Logf("killed the dispatching keystore %s while it delivered %s", p.name, cut)

	require.Eventually(t, func() bool {
		acked, _ := rcv.snapshot()
		pending, err := alertbox.Pending(t.Context(), cli)
		return err == nil && len(acked) == n && len(pending) == 0
	}, 90*time.Second, 50*time.Millisecond, "every alert delivered after the kill")

	acked, aborted := rcv.snapshot()
	require.Equal(t, []string{cut}, aborted, "one delivery was cut off by the kill")
	for id, times := range acked {
		require.True(t, ids[id], "unknown webhook-id %s", id)
		require.Equal(t, 1, times, "alert %s acknowledged %d times", id, times)
	}
	require.Equal(t, 1, acked[cut], "the cut-off delivery was sent again by the next dispatcher")
	t.Logf("%d alerts: 0 lost, 0 duplicated; new leader %s", n, dispatcherLeader(t, cli))
}

func firstKey(m map[string]*proc) string {
	for k := range m {
		return k
	}
	return ""
}

// dispatcherLeader is the name (gRPC address) of the keystore that leads
// the alert dispatch election.
func dispatcherLeader(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, alertbox.LeaderPrefix, clientv3.WithFirstCreate()...)
	require.NoError(t, err)
	require.NotEmpty(t, resp.Kvs, "no dispatcher leads")
	return string(resp.Kvs[0].Value)
}
