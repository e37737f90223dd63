package keystore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/alertbox"
)

// DispatchConfig tunes the alert dispatcher (runDispatcher). Zero values
// take the defaults.
type DispatchConfig struct {
	// Attempts per alert and webhook before FAILED; default 8.
	Attempts int
	// Backoff is the wait after the first failed attempt, doubling after
	// each one up to MaxBackoff; defaults 1 s and 5 min. Each wait is
	// jittered to between half and all of it.
	Backoff, MaxBackoff time.Duration
	// Rand draws the jitter in [0, 1); default math/rand/v2.
	Rand func() float64
	// HTTPClient sends deliveries; default one with a 10 s timeout that
	// follows no redirect.
	HTTPClient *http.Client
	// LeaseTTL is how long a crashed dispatcher keeps the lead before
	// another keystore takes over; default 5 s.
	LeaseTTL time.Duration
	// Poll bounds how long the dispatcher waits before it looks at the
	// outbox again; default 1 s. New alerts wake it at once (a watch).
	Poll time.Duration
	// Name identifies this replica in the election; default host-pid.
	Name string
}

func (c *DispatchConfig) defaults() error {
	if c.Attempts < 0 || c.Backoff < 0 || c.MaxBackoff < 0 || c.LeaseTTL < 0 || c.Poll < 0 {
		return errors.New("keystore: alert dispatch settings must not be negative")
	}
	c.Attempts = cmpOr(c.Attempts, 8)
	c.Backoff = cmpOr(c.Backoff, time.Second)
	c.MaxBackoff = cmpOr(c.MaxBackoff, 5*time.Minute)
	c.LeaseTTL = cmpOr(c.LeaseTTL, 5*time.Second)
	c.Poll = cmpOr(c.Poll, time.Second)
	if c.MaxBackoff < c.Backoff {
		return errors.New("keystore: the alert max backoff must not be below the backoff")
	}
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	if c.HTTPClient == nil {
		// A redirect is an answer, not a delivery: following it would
		// send the signed alert to a URL nobody registered.
		c.HTTPClient = &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}}
	}
	return nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// backoff is the wait after the n-th failed attempt (n >= 1).
func (c *DispatchConfig) backoff(n int32) time.Duration {
	d := c.Backoff
	for i := int32(1); i < n && d < c.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.MaxBackoff)
	return d/2 + time.Duration(c.Rand()*float64(d/2))
}

// dispatcher is the audit identity of deliveries.
var dispatcherPrincipal = &principal{subject: "keygate", credential: "dispatcher"}

var (
	outcomeDelivered = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "delivered")))
	outcomeRetry     = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "retry")))
	outcomeFailed    = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "failed")))
	outcomeNoWebhook = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "no_webhook")))
)

// errLostLead means another keystore dispatches now.
var errLostLead = errors.New("dispatcher: lost the lead")

// runDispatcher delivers the alerts of the outbox (internal/alertbox) to
// the workspaces' webhooks until ctx ends. Every keystore replica runs
// it; one at a time leads (an etcd election under a lease) and sends.
// Every write about an alert is conditional on still leading and on the
// alert still pending, so a deposed dispatcher records nothing.
func (s *Server) runDispatcher(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := s.lead(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("keystore: alert dispatcher stepped down; it campaigns again", slog.Any("error", err))
			select {
			case <-ctx.Done():
			case <-time.After(s.dispatch.Poll):
			}
		}
	}
	return nil
}

// lead campaigns, then dispatches while it leads.
func (s *Server) lead(ctx context.Context) error {
	// The lease is granted within the storage timeout, so that a keystore
	// without etcd quorum still stops; the session outlives ctx so that
	// Close can revoke the lease: the lead passes to another keystore at
	// once, not after the lease's TTL.
	gctx, cancelGrant := context.WithTimeout(ctx, s.storageTimeout)
	lease, err := s.etcd.Grant(gctx, int64(max(1, s.dispatch.LeaseTTL/time.Second)))
	cancelGrant()
	if err != nil {
		return fmt.Errorf("dispatcher lease: %w", err)
	}
	sess, err := concurrency.NewSession(s.etcd, concurrency.WithLease(lease.ID), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return fmt.Errorf("dispatcher session: %w", err)
	}
	defer s.resign(ctx, sess)
	el := concurrency.NewElection(sess, alertbox.LeaderPrefix)
	if err := s.campaign(ctx, el); err != nil {
		return fmt.Errorf("dispatcher campaign: %w", err)
	}
	s.log.Info("keystore: this replica dispatches alerts", slog.String("name", s.dispatch.Name))
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	leading := clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())
	wake := s.etcd.Watch(clientv3.WithRequireLeader(lctx), alertbox.PendingRoot, clientv3.WithPrefix())
	for lctx.Err() == nil {
		next, err := s.dispatchPass(lctx, leading)
		if err != nil {
			return err
		}
		wait := s.dispatch.Poll
		if !next.IsZero() {
			wait = min(wait, max(0, next.Sub(s.clock.Now())))
		}
		select {
		case <-lctx.Done():
		case _, ok := <-wake:
			if !ok {
				wake = nil // the watch ended; polling goes on
			}
		case <-time.After(wait):
		}
	}
	return nil
}

// campaign waits until el leads or ctx ends. Campaign, stopped while it
// waits, resigns with the client's own context, which etcd without quorum
// never answers; so campaign returns at ctx's end and leaves that cleanup
// to finish when etcd answers or the client closes. The lease the caller
// revokes removes the candidacy anyway.
func (s *Server) campaign(ctx context.Context, el *concurrency.Election) error {
	done := make(chan error, 1)
	go func() { done <- el.Campaign(ctx, s.dispatch.Name) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// resign revokes the session's lease within the storage timeout, so that
// the lead passes at once when etcd answers and the keystore still stops
// when it does not (the session's own Close waits up to the lease's TTL).
func (s *Server) resign(ctx context.Context, sess *concurrency.Session) {
	sess.Orphan()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.storageTimeout)
	defer cancel()
	if _, err := s.etcd.Revoke(rctx, sess.Lease()); err != nil {
		s.log.Warn("keystore: revoking the dispatcher lease failed; it expires with its TTL", slog.Any("error", err))
	}
}

// dispatchPass sends every delivery that is due and returns when the next
// one falls due (zero: none waits).
func (s *Server) dispatchPass(ctx context.Context, leading clientv3.Cmp) (time.Time, error) {
	refs, err := alertbox.Pending(ctx, s.etcd)
	if err != nil {
		return time.Time{}, err
	}
	var next time.Time
	for _, r := range refs {
		due, err := s.dispatchAlert(ctx, leading, r)
		if err != nil {
			return time.Time{}, err
		}
		if !due.IsZero() && (next.IsZero() || due.Before(next)) {
			next = due
		}
	}
	return next, nil
}

// dispatchAlert sends one alert to the webhooks still owed it, records
// each outcome, and settles the alert once none is owed.
func (s *Server) dispatchAlert(ctx context.Context, leading clientv3.Cmp, r alertbox.Ref) (time.Time, error) {
	a, ds, err := alertbox.Get(ctx, s.etcd, r.Workspace, r.ID)
	if err != nil || a == nil {
		return time.Time{}, err
	}
	hooks, err := s.webhooks(ctx, r.Workspace)
	if err != nil {
		return time.Time{}, err
	}
	if len(hooks) == 0 && len(ds) == 0 {
		s.alertsDelivered.Add(ctx, 1, outcomeNoWebhook)
		return time.Time{}, s.settle(ctx, leading, a, keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_NO_WEBHOOK, 0)
	}
	var next time.Time
	state := keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_DELIVERED
	for _, h := range hooks {
		d := ds[h.GetId()]
		if !d.Done() && !d.Next.After(s.clock.Now()) {
			if d, err = s.attempt(ctx, leading, a, h, d); err != nil {
				return time.Time{}, err
			}
		}
		switch {
		case !d.Done() && d.Next.IsZero():
			continue // deleted meanwhile
		case d.State == keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_FAILED:
			state = d.State
		case !d.Done():
			if next.IsZero() || d.Next.Before(next) {
				next = d.Next
			}
		}
		ds[h.GetId()] = d
	}
	if !next.IsZero() {
		return next, nil
	}
	return time.Time{}, s.settle(ctx, leading, a, state, alertbox.Attempts(ds))
}

// attempt sends the alert to one webhook and records the outcome at once:
// a delivered alert is marked so right after the receiver's 2xx.
func (s *Server) attempt(ctx context.Context, leading clientv3.Cmp, a *keystorev1.Alert, h *keystorev1.Webhook, d alertbox.Delivery) (alertbox.Delivery, error) {
	_, secret, _, err := s.webhook(ctx, h.GetWorkspace(), h.GetId())
	if errors.Is(err, ErrNotFound) {
		return d, nil // deleted meanwhile; the next pass no longer lists it
	}
	if err != nil {
		return d, err
	}
	now := s.clock.Now()
	code, perr := s.post(ctx, h.GetUrl(), secret, a, now)
	if perr != nil && ctx.Err() != nil {
		// Cut short by a shutdown or a lost lead: not the receiver's
		// failure, and no attempt to count.
		return d, ctx.Err()
	}
	d.Attempts++
	d.LastStatus, d.LastError = code, ""
	switch {
	case perr == nil:
		d.State, d.Next = keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_DELIVERED, time.Time{}
		s.alertsDelivered.Add(ctx, 1, outcomeDelivered)
	case d.Attempts >= int32(s.dispatch.Attempts):
		d.State, d.Next, d.LastError = keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_FAILED, time.Time{}, perr.Error()
		s.alertsDelivered.Add(ctx, 1, outcomeFailed)
	default:
		d.State, d.Next, d.LastError = keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_PENDING, now.Add(s.dispatch.backoff(d.Attempts)), perr.Error()
		s.alertsDelivered.Add(ctx, 1, outcomeRetry)
	}
	op, err := alertbox.DeliveryOp(a.GetId(), h.GetId(), d)
	if err != nil {
		return d, err
	}
	// Recorded even if ctx ended meanwhile: the receiver has it.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.storageTimeout)
	defer cancel()
	return d, s.commit(wctx, leading, a.GetId(), op)
}

// settle ends an alert's delivery, with its audit event.
func (s *Server) settle(ctx context.Context, leading clientv3.Cmp, a *keystorev1.Alert, state keystorev1.AlertDeliveryState, attempts int32) error {
	a.DeliveryState, a.Attempts = state, attempts
	ops, err := alertbox.SettleOps(a)
	if err != nil {
		return err
	}
	audit, err := s.alertAuditOps(a, "alert."+strings.ToLower(strings.TrimPrefix(state.String(), "ALERT_DELIVERY_STATE_")), s.clock.Now())
	if err != nil {
		return err
	}
	return s.commit(ctx, leading, a.GetId(), append(ops, audit...)...)
}

// commit writes ops if this replica still leads and the alert is still
// pending.
func (s *Server) commit(ctx context.Context, leading clientv3.Cmp, id string, ops ...clientv3.Op) error {
	tx, err := s.etcd.Txn(ctx).If(leading, alertbox.StillPending(id)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("dispatcher: record %s: %w", id, err)
	}
	if !tx.Succeeded {
		return errLostLead
	}
	return nil
}

// alertAuditOps are the audit events of an alert: when it was raised
// (written with its settlement, dated at its raise) and how its delivery
// ended. Their ids derive from the alert, so no event is written twice.
func (s *Server) alertAuditOps(a *keystorev1.Alert, action string, now time.Time) ([]clientv3.Op, error) {
	var out []clientv3.Op
	for _, ev := range []struct {
		action string
		at     time.Time
	}{{"alert.raise", a.GetTime().AsTime()}, {action, now}} {
		h := sha256.Sum256([]byte(a.GetId() + ev.action))
		e := &keystorev1.AuditEvent{
			Id:        fmt.Sprintf("%016x%08x", ^uint64(ev.at.UnixNano()), binary.BigEndian.Uint32(h[:4])),
			Workspace: a.GetWorkspace(), Actor: dispatcherPrincipal.subject, Credential: dispatcherPrincipal.credential,
			Action: ev.action, Time: timestamppb.New(ev.at), NewValue: auditJSON(a),
		}
		v, err := marshal(e)
		if err != nil {
			return nil, err
		}
		out = append(out, clientv3.OpPut(auditPrefix(a.GetWorkspace(), "")+e.Id, v))
	}
	return out, nil
}

// payload is the JSON a webhook receives: the alert as the Alert message
// documents it, plus its type.
func payload(a *keystorev1.Alert) ([]byte, error) {
	ts := func(t *timestamppb.Timestamp) string {
		if t == nil {
			return ""
		}
		return t.AsTime().UTC().Format(time.RFC3339)
	}
	return json.Marshal(struct {
		ID               string `json:"id"`
		Type             string `json:"type"`
		Workspace        string `json:"workspace"`
		Level            string `json:"level"`
		LevelID          string `json:"level_id"`
		Limit            string `json:"limit"`
		Model            string `json:"model,omitempty"`
		ThresholdPercent int32  `json:"threshold_percent"`
		LimitValue       string `json:"limit_value"`
		Used             string `json:"used"`
		Period           string `json:"period"`
		PeriodStart      string `json:"period_start,omitempty"`
		ResetTime        string `json:"reset_time,omitempty"`
		Time             string `json:"time"`
		Test             bool   `json:"test"`
	}{
		ID: a.GetId(), Type: "limit.threshold", Workspace: a.GetWorkspace(), Level: levelName(a.GetLevel()), LevelID: a.GetLevelId(),
		Limit: a.GetLimit(), Model: a.GetModel(), ThresholdPercent: a.GetThresholdPercent(), LimitValue: a.GetLimitValue(),
		Used: a.GetUsed(), Period: a.GetPeriod(), PeriodStart: ts(a.GetPeriodStart()), ResetTime: ts(a.GetResetTime()),
		Time: ts(a.GetTime()), Test: a.GetTest(),
	})
}

// levelName is the level as the payload names it: "key", "member" or
// "workspace".
func levelName(l typev1.LimitLevel) string {
	if l == typev1.LimitLevel_LIMIT_LEVEL_UNSPECIFIED {
		l = typev1.LimitLevel_LIMIT_LEVEL_KEY
	}
	return strings.ToLower(strings.TrimPrefix(l.String(), "LIMIT_LEVEL_"))
}

func (s *Server) listAlerts(ctx context.Context, p *principal, req *keystorev1.ListAlertsRequest) (*keystorev1.ListAlertsResponse, error) {
	ws := req.GetWorkspace()
	if err := canManageWebhooks(p, ws); err != nil {
		return nil, err
	}
	if _, _, err := s.getWorkspace(ctx, ws); err != nil {
		return nil, err
	}
	size, after, err := listPage(req.GetPageSize(), req.GetPageToken(), alertbox.ValidPosition)
	if err != nil {
		return nil, err
	}
	alerts, next, err := alertbox.List(ctx, s.etcd, ws, after, size)
	if err != nil {
		return nil, err
	}
	out := &keystorev1.ListAlertsResponse{Alerts: alerts}
	if next != "" {
		out.NextPageToken = pageToken(next)
	}
	return out, nil
}

func (s *Server) ListAlerts(ctx context.Context, req *keystorev1.ListAlertsRequest) (*keystorev1.ListAlertsResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ListAlertsResponse, error) {
		return s.listAlerts(ctx, p, req)
	})
}
