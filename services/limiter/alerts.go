package limiter

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/alertbox"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/limitkey"
	"github.com/keygate/keygate/pkg/money"
	"github.com/keygate/keygate/services/limiter/internal/window"
)

// alertEvery is how often queued threshold crossings are raised: off the
// request path, and soon enough for an alert meant to come before the
// wall.
const alertEvery = 100 * time.Millisecond

// raiseLoop raises the crossings the table queues into the alert outbox
// in etcd (internal/alertbox), where the keystore delivers them. A raise
// that fails is unmarked, so the next request that still finds the limit
// crossed queues it again.
func (s *Server) raiseLoop(ctx context.Context) {
	clock.Every(ctx, alertEvery, func() { s.raise(ctx) })
}

func (s *Server) raise(ctx context.Context) {
	s.raiseMu.Lock()
	defer s.raiseMu.Unlock()
	for _, c := range s.table.Crossings() {
		a := alertOf(s.clock.Now(), c)
		if a == nil {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		created, err := alertbox.Raise(rctx, s.cfg.Etcd, a)
		cancel()
		switch {
		case err != nil:
			s.table.Unmark(c)
			s.log.Warn("limiter: raising an alert failed; it is raised again on the next request over the threshold",
				slog.String("workspace", a.GetWorkspace()), slog.String("limit", a.GetLimit()), slog.Any("error", err))
		case created:
			s.alerts.Add(ctx, 1)
		}
	}
}

// alertOf describes a crossing as the alert's payload; nil for an entity
// without a workspace (nothing to deliver to).
func alertOf(now time.Time, c window.Crossing) *keystorev1.Alert {
	e := limitkey.Parse(c.Entity)
	if e.Workspace == "" {
		return nil
	}
	a := &keystorev1.Alert{
		Workspace: e.Workspace, Level: e.Level, LevelId: e.ID, Limit: limitkey.KindName(limiterv1.LimitKind(c.Kind)), Model: c.Model,
		ThresholdPercent: c.Threshold, Period: periodName(c.Period.Kind), Time: timestamppb.New(now),
		LimitValue: amount(c.Kind, c.Limit), Used: amount(c.Kind, c.Used),
	}
	if st := c.Period.Start(); !st.IsZero() {
		a.PeriodStart = timestamppb.New(st)
	}
	if end := c.Period.End(); !end.IsZero() {
		a.ResetTime = timestamppb.New(end)
	}
	if e.Level == typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE {
		a.LevelId = e.Workspace
	}
	return a
}

// amount renders a limit's value: money for budgets and credits.
func amount(k window.Kind, v int64) string {
	if k == window.KindBudget || k == window.KindCredits {
		return money.FromMicros(v).String()
	}
	return strconv.FormatInt(v, 10)
}
