package keystore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/alertbox"
	"github.com/keygate/keygate/services/keystore"
)

// startDispatcher runs a keystore's dispatcher on the env's etcd and
// clock until the test ends or stop is called.
func startDispatcher(tb testing.TB, e *env, name string, tune func(*keystore.DispatchConfig)) (stop func()) {
	tb.Helper()
	cfg := keystore.Config{Etcd: e.etcd.Client, Clock: e.clock, RootToken: rootToken,
		Alerts: keystore.DispatchConfig{Name: name, Poll: 10 * time.Millisecond, LeaseTTL: time.Second, Rand: func() float64 { return 0.5 }}}
	if tune != nil {
		tune(&cfg.Alerts)
	}
	srv, err := keystore.New(tb.Context(), cfg)
	require.NoError(tb, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.RunDispatcher(ctx)
	}()
	stop = func() { cancel(); <-done }
	tb.Cleanup(stop)
	return stop
}

// raise puts an alert into the outbox as a limiter does.
func (e *env) raise(tb testing.TB, threshold int32) string {
	tb.Helper()
	a := &keystorev1.Alert{
		Workspace: "acme", Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, LevelId: "acme", Limit: "budget",
		ThresholdPercent: threshold, LimitValue: "100.00", Used: fmt.Sprintf("%d.00", threshold), Period: "month",
		PeriodStart: timestamppb.New(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)),
		ResetTime:   timestamppb.New(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)),
		Time:        timestamppb.New(e.clock.Now()),
	}
	created, err := alertbox.Raise(tb.Context(), e.etcd.Client, a)
	require.NoError(tb, err)
	require.True(tb, created)
	return alertbox.ID(a)
}

func (e *env) alerts(tb testing.TB) []*keystorev1.Alert {
	tb.Helper()
	l, err := e.client.ListAlerts(e.root(tb), &keystorev1.ListAlertsRequest{Workspace: "acme", PageSize: 1000})
	require.NoError(tb, err)
	return l.GetAlerts()
}

// settled waits until every alert listed has left PENDING.
func (e *env) settled(tb testing.TB, n int) []*keystorev1.Alert {
	tb.Helper()
	var got []*keystorev1.Alert
	require.Eventually(tb, func() bool {
		got = e.alerts(tb)
		for _, a := range got {
			if a.GetDeliveryState() == keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_PENDING {
				return false
			}
		}
		return len(got) == n
	}, 20*time.Second, 5*time.Millisecond)
	return got
}

func TestDispatcherDeliversOnce(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	rcv := newReceiver(t, nil)
	_, secret := e.createWebhook(t, rcv.url)
	startDispatcher(t, e, "a", nil)

	id := e.raise(t, 80)
	got := e.settled(t, 1)
	require.Equal(t, keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_DELIVERED, got[0].GetDeliveryState())
	require.Equal(t, int32(1), got[0].GetAttempts())
	ds := rcv.deliveries()
	require.Len(t, ds, 1)
	require.Equal(t, id, ds[0].id)
	require.True(t, ds[0].verifies(t, secret))
	var body map[string]any
	require.NoError(t, json.Unmarshal(ds[0].body, &body))
	require.Equal(t, map[string]any{
		"id": id, "type": "limit.threshold", "workspace": "acme", "level": "workspace", "level_id": "acme",
		"limit": "budget", "threshold_percent": 80.0, "limit_value": "100.00", "used": "80.00", "period": "month",
		"period_start": "2026-03-01T00:00:00Z", "reset_time": "2026-04-01T00:00:00Z", "time": "2026-03-01T12:00:00Z", "test": false,
	}, body)

	ev, err := e.client.ListAuditEvents(e.root(t), &keystorev1.ListAuditEventsRequest{Workspace: "acme"})
	require.NoError(t, err)
	var actions []string
	for _, a := range ev.GetEvents() {
		actions = append(actions, a.GetAction())
	}
	require.Contains(t, actions, "alert.raise")
	require.Contains(t, actions, "alert.delivered")

	// A raise seen again (another limiter, a retry) is not sent again.
	_, err = alertbox.Raise(t.Context(), e.etcd.Client, &keystorev1.Alert{Workspace: "acme", Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE,
		LevelId: "acme", Limit: "budget", ThresholdPercent: 80, Period: "month", PeriodStart: timestamppb.New(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))})
	require.NoError(t, err)
	e.raise(t, 90)
	e.settled(t, 2)
	require.Len(t, rcv.deliveries(), 2)
}

// TestDispatcherBackoff: a receiver answering 500 is retried after 1 s,
// 2 s, 4 s (each jittered to 3/4 by the injected draw) on the injected
// clock, then delivered.
func TestDispatcherBackoff(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	rcv := newReceiver(t, func(n int) int {
		if n <= 3 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	wh, _ := e.createWebhook(t, rcv.url)
	startDispatcher(t, e, "a", nil)
	id := e.raise(t, 50)

	for i, wait := range []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second} {
		require.Eventually(t, func() bool { return len(rcv.deliveries()) == i+1 }, 10*time.Second, time.Millisecond)
		var d alertbox.Delivery
		require.Eventually(t, func() bool {
			_, ds, err := alertbox.Get(t.Context(), e.etcd.Client, "acme", id)
			require.NoError(t, err)
			d = ds[wh.GetId()]
			return d.Attempts == int32(i+1)
		}, 10*time.Second, time.Millisecond)
		require.Equal(t, keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_PENDING, d.State)
		require.Equal(t, 500, d.LastStatus)
		require.Equal(t, e.clock.Now().Add(wait), d.Next, "attempt %d", i+1)
		require.Len(t, rcv.deliveries(), i+1, "nothing is sent before the wait")
		e.clock.Advance(wait)
	}
	got := e.settled(t, 1)
	require.Equal(t, keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_DELIVERED, got[0].GetDeliveryState())
	require.Equal(t, int32(4), got[0].GetAttempts())
	require.Len(t, rcv.deliveries(), 4)
	for _, d := range rcv.deliveries() {
		require.Equal(t, id, d.id, "every attempt carries the alert's id")
	}
}

func TestDispatcherGivesUp(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	rcv := newReceiver(t, func(int) int { return http.StatusBadGateway })
	e.createWebhook(t, rcv.url)
	startDispatcher(t, e, "a", func(c *keystore.DispatchConfig) { c.Attempts = 3; c.Backoff = time.Second; c.MaxBackoff = time.Second })
	e.raise(t, 50)
	for n := 1; n <= 3; n++ {
		require.Eventually(t, func() bool { return len(rcv.deliveries()) >= n }, 10*time.Second, time.Millisecond)
		e.clock.Advance(time.Second)
	}
	got := e.settled(t, 1)
	require.Equal(t, keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_FAILED, got[0].GetDeliveryState())
	require.Equal(t, int32(3), got[0].GetAttempts())
	require.Len(t, rcv.deliveries(), 3)
}

func TestDispatcherNoWebhook(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	startDispatcher(t, e, "a", nil)
	e.raise(t, 100)
	got := e.settled(t, 1)
	require.Equal(t, keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_NO_WEBHOOK, got[0].GetDeliveryState())
}

// TestTwoDispatchers: two keystores dispatch from one outbox; each alert
// reaches the receiver once, also after the leader stops.
func TestTwoDispatchers(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	rcv := newReceiver(t, nil)
	e.createWebhook(t, rcv.url)
	stopA := startDispatcher(t, e, "a", nil)
	startDispatcher(t, e, "b", nil)

	for i := range 20 {
		e.clock.Advance(time.Millisecond)
		e.raise(t, int32(i+1))
	}
	e.settled(t, 20)
	stopA()
	for i := range 10 {
		e.clock.Advance(time.Millisecond)
		e.raise(t, int32(50+i))
	}
	got := e.settled(t, 30)
	seen := map[string]int{}
	for _, d := range rcv.deliveries() {
		seen[d.id]++
	}
	require.Len(t, seen, 30)
	for id, n := range seen {
		require.Equal(t, 1, n, id)
	}
	for _, a := range got {
		require.Equal(t, keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_DELIVERED, a.GetDeliveryState())
	}
}

func TestListAlertsPages(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	var want []string
	for i := range 5 {
		e.clock.Advance(time.Second)
		want = append([]string{e.raise(t, int32(10*(i+1)))}, want...)
	}
	var got []string
	tok := ""
	for {
		l, err := e.client.ListAlerts(e.root(t), &keystorev1.ListAlertsRequest{Workspace: "acme", PageSize: 2, PageToken: tok})
		require.NoError(t, err)
		for _, a := range l.GetAlerts() {
			got = append(got, a.GetId())
			require.Equal(t, keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_PENDING, a.GetDeliveryState())
		}
		if tok = l.GetNextPageToken(); tok == "" {
			break
		}
	}
	require.Equal(t, want, got, "newest first")
}
