package limiter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/services/limiter/internal/window"
)

// Explain implements LimiterService.Explain: the live state of an item's
// limits at every level, read where they are decided (the owner), and
// what a Check would answer now. Nothing is charged.
func (s *Server) Explain(ctx context.Context, req *limiterv1.ExplainRequest) (*limiterv1.ExplainResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	resp, err := s.explain(ctx, req.GetItem(), isHop(ctx))
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return resp, nil
}

func (s *Server) explain(ctx context.Context, it *limiterv1.CheckItem, hop bool) (*limiterv1.ExplainResponse, error) {
	if it == nil {
		return nil, fmt.Errorf("%w: item is required", ErrInvalid)
	}
	reqs := make([]itemReqs, 1)
	if err := toRequests(it, &reqs[0], &s.names); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	for i := range reqs[0].n {
		reqs[0].r[i].ReservationID = ""
	}
	if !s.local(entityKey(it), hop) {
		return s.explainAt(ctx, s.awayOwner(entityKey(it)), it)
	}
	for attempt := 1; ; attempt++ {
		var d window.Decision
		states, j, err := s.table.Explain(s.clock.Now(), reqs[0].all(), &d, nil)
		switch {
		case err == nil:
			return explanation(s.clock.Now(), it.GetModel(), states, &d), nil
		case errors.Is(err, window.ErrMoved):
			return s.explainAt(ctx, s.table.MovedTo(reqs[0].r[j].Key), it)
		case attempt > 3:
			return nil, fmt.Errorf("%w: key kept changing owner", ErrSeed)
		}
		if err := s.seed(ctx, reqs, []int{0}); err != nil {
			return nil, err
		}
	}
}

// explainAt asks the replica at addr ("" = the ring's owner).
func (s *Server) explainAt(ctx context.Context, addr string, it *limiterv1.CheckItem) (*limiterv1.ExplainResponse, error) {
	if s.peers == nil {
		return nil, fmt.Errorf("%w: no other limiter replica", ErrSeed)
	}
	if addr == "" {
		return s.peers.Explain(s.hopContext(ctx), it)
	}
	cl, err := s.peers.Replica(addr)
	if err != nil {
		return nil, err
	}
	return cl.Explain(s.hopContextN(ctx, hops(ctx)+1), &limiterv1.ExplainRequest{Item: it})
}

func explanation(now time.Time, model string, states []window.State, d *window.Decision) *limiterv1.ExplainResponse {
	var sl slab
	sl.reset(1)
	out := &limiterv1.ExplainResponse{Decision: sl.fill(0, model, d)}
	for _, st := range states {
		ls := &limiterv1.LimitState{
			Level: typev1.LimitLevel(st.Level), Kind: limiterv1.LimitKind(st.Kind),
			Mode: typev1.LimitMode_LIMIT_MODE_ENFORCE, Window: windowName(st),
			Limit: st.Limit, Used: st.Used, Reserved: st.Reserved, Remaining: st.Remaining,
		}
		if st.Model {
			ls.Model = model
		}
		if st.Report {
			ls.Mode = typev1.LimitMode_LIMIT_MODE_REPORT
		}
		if st.ResetAfter > 0 {
			ls.ResetTime = timestamppb.New(now.Add(st.ResetAfter))
		}
		out.Limits = append(out.Limits, ls)
	}
	return out
}

// windowName names a limit's window as LimitState.window documents.
func windowName(st window.State) string {
	if st.Rolling {
		return "60s"
	}
	return periodName(st.Period.Kind)
}

func periodName(k window.Period) string {
	switch k {
	case window.PeriodDaily:
		return "day"
	case window.PeriodWeekly:
		return "week"
	case window.PeriodMonthly:
		return "month"
	default:
		return "never"
	}
}
