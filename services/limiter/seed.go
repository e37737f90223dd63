package limiter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/limitkey"
	"github.com/keygate/keygate/services/limiter/internal/window"
)

// Taking a key over. The first item for a key this replica holds no state
// for starts a takeover: the key is pulled from the replica that held it
// (handover.go), or, when nobody holds it, started from its replica
// (replicate.go) or from the ledger's totals. Concurrent first requests
// for the same key wait for one takeover.

// seedCall is one key's takeover in flight; concurrent first requests wait
// on it.
type seedCall struct {
	done chan struct{}
	err  error
}

// seedWant is what an entity's takeover reads from the ledger.
type seedWant struct {
	key       string
	tok, cost window.PeriodID
	models    []string
	credits   bool
}

// ledgerBatch is the most keys of one GetTotals call.
const ledgerBatch = 256

// seed takes over the entities of items[idx]; entities already being
// taken over by another call are waited for.
func (s *Server) seed(ctx context.Context, reqs []itemReqs, idx []int) error {
	if s.cfg.Usage == nil && s.peers == nil {
		return fmt.Errorf("%w: no usage service", ErrSeed)
	}
	if s.closing.Load() {
		return errClosing
	}
	now := s.clock.Now()
	mine, calls, wait := s.claim(now, reqs, idx)
	if len(mine) > 0 {
		if err := s.takeOver(ctx, now, mine, calls); err != nil {
			return err
		}
	}
	for _, c := range wait {
		select {
		case <-c.done:
			if c.err != nil {
				return c.err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// claim registers a takeover for each key of items[idx] nobody is taking
// over yet (mine), and returns the takeovers in flight to wait for.
func (s *Server) claim(now time.Time, reqs []itemReqs, idx []int) (mine []seedWant, calls map[string]*seedCall, wait []*seedCall) {
	calls = map[string]*seedCall{}
	s.seedMu.Lock()
	defer s.seedMu.Unlock()
	for _, i := range idx {
		for _, r := range reqs[i].all() {
			key := r.Key
			if _, seen := calls[key]; seen {
				continue
			}
			if c := s.seeding[key]; c != nil {
				calls[key] = c
				wait = append(wait, c)
				continue
			}
			c := &seedCall{done: make(chan struct{})}
			s.seeding[key], calls[key] = c, c
			mine = append(mine, wantOf(now, &r))
		}
	}
	return mine, calls, wait
}

// wantOf is what seeding r's entity reads: an entity already held here
// is pulled from nobody and its seeded parts stay as they are.
func wantOf(now time.Time, r *window.Request) seedWant {
	w := seedWant{
		key:     r.Key,
		tok:     window.PeriodOf(now, r.TokenPeriod),
		cost:    window.PeriodOf(now, r.BudgetPeriod),
		credits: r.Credits,
	}
	if r.Model != "" {
		w.models = []string{r.Model}
	}
	return w
}

// takeOver pulls the keys of mine from their previous holder, starts those
// nobody holds from the ledger (or a replica), and releases their waiters.
func (s *Server) takeOver(ctx context.Context, now time.Time, mine []seedWant, calls map[string]*seedCall) error {
	// One caller fetches for all waiters: its cancellation must not fail
	// them.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	pull := make([]string, 0, len(mine))
	for _, w := range mine {
		if !s.table.Held(w.key) {
			pull = append(pull, w.key)
		}
	}
	got, unsettled := s.pull(fctx, pull)
	rest := mine[:0:0]
	for _, w := range mine {
		if got[w.key] {
			s.endTakeover(w.key, calls[w.key], nil) // pulled: its waiters go on at once
		} else {
			rest = append(rest, w)
		}
	}
	err := s.startFresh(ctx, fctx, now, rest, len(unsettled))
	for _, w := range rest {
		s.endTakeover(w.key, calls[w.key], err)
	}
	if err != nil && !errors.Is(err, errClosing) {
		s.log.Warn("limiter seeding failed", slog.Int("keys", len(rest)), slog.Any("error", err))
	}
	return err
}

// endTakeover ends a key's takeover with err.
func (s *Server) endTakeover(key string, c *seedCall, err error) {
	s.seedMu.Lock()
	defer s.seedMu.Unlock()
	c.err = err
	delete(s.seeding, key)
	close(c.done)
}

// startFresh starts keys nobody holds: from a replica of their crashed
// holder's state, else from the ledger's totals. unsettled counts keys a
// replica that may hold them did not answer for: starting those could
// start a second window.
func (s *Server) startFresh(ctx, fctx context.Context, now time.Time, keys []seedWant, unsettled int) error {
	switch {
	case len(keys) == 0:
		return nil
	case s.closing.Load():
		// Leaving: whoever owns these keys now takes them over.
		return errClosing
	case unsettled > 0:
		return fmt.Errorf("%w: %d keys: a limiter replica that may hold them did not answer", ErrSeed, unsettled)
	case s.cfg.Usage == nil:
		return fmt.Errorf("%w: no usage service", ErrSeed)
	}
	dayID := window.DayOf(now)
	for start := 0; start < len(keys); start += ledgerBatch {
		chunk := keys[start:min(start+ledgerBatch, len(keys))]
		totals, err := s.ledgerTotals(ctx, fctx, now, chunk)
		if err != nil {
			return err
		}
		for _, w := range chunk {
			if st := s.takeReplica(w.key); st != nil {
				s.table.Restore(st, dayID, w.tok, w.cost, totals[w.key])
				s.restores.Add(ctx, 1)
				continue
			}
			s.table.Seed(w.key, dayID, w.tok, w.cost, totals[w.key])
		}
		s.seeds.Add(ctx, int64(len(chunk)))
	}
	return nil
}

// ledgerTotals reads the day and period totals of keys in one GetTotals
// call. Each key's list ends with zero rows for itself and its models:
// whatever the ledger does not know counts as unused.
func (s *Server) ledgerTotals(ctx, fctx context.Context, now time.Time, keys []seedWant) (map[string][]window.Totals, error) {
	req := &usagev1.GetTotalsRequest{Day: now.UTC().Format(time.DateOnly)}
	names := map[string]string{}
	for _, w := range keys {
		q := totalsQuery(w)
		names[totalsName(q.GetLevel(), q.GetWorkspace(), q.GetKey(), q.GetMember())] = w.key
		if st := w.tok.Start(); !st.IsZero() {
			q.TokenPeriodStart = timestamppb.New(st)
		}
		if st := w.cost.Start(); !st.IsZero() {
			q.BudgetPeriodStart = timestamppb.New(st)
		}
		req.Queries = append(req.Queries, q)
	}
	s.log.DebugContext(ctx, "limiter seeding from the ledger", slog.String("self", s.id), slog.Int("keys", len(keys)))
	resp, err := s.cfg.Usage.GetTotals(fctx, req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSeed, err)
	}
	out := map[string][]window.Totals{}
	for _, t := range resp.GetTotals() {
		name, ok := names[totalsName(t.GetLevel(), t.GetWorkspace(), t.GetKey(), t.GetMember())]
		if !ok {
			continue
		}
		out[name] = append(out[name], window.Totals{
			Model: t.GetModel(), RequestsToday: t.GetRequestsToday(), TokensToday: t.GetTokensToday(),
			PeriodTokens: t.GetPeriodTokens(), PeriodCostMicros: t.GetPeriodCostMicros(),
			CreditSpentMicros: t.GetCreditSpentMicros(),
		})
	}
	for _, w := range keys {
		out[w.key] = append(out[w.key], window.Totals{})
		for _, m := range w.models {
			out[w.key] = append(out[w.key], window.Totals{Model: m})
		}
	}
	return out, nil
}

// totalsQuery is the ledger query for an entity's totals.
func totalsQuery(w seedWant) *usagev1.TotalsQuery {
	e := limitkey.Parse(w.key)
	q := &usagev1.TotalsQuery{Models: w.models, Credits: w.credits}
	switch e.Level {
	case typev1.LimitLevel_LIMIT_LEVEL_MEMBER:
		q.Level, q.Workspace, q.Member = e.Level, e.Workspace, e.ID
	case typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE:
		q.Level, q.Workspace = e.Level, e.Workspace
	default:
		q.Key, q.Workspace = e.ID, e.Workspace
	}
	return q
}

// totalsName matches the ledger's rows to the queries: by key id for
// keys (unique across workspaces), by workspace and member for levels.
func totalsName(level typev1.LimitLevel, workspace, key, member string) string {
	switch level {
	case typev1.LimitLevel_LIMIT_LEVEL_MEMBER:
		return "m\x00" + workspace + "\x00" + member
	case typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE:
		return "w\x00" + workspace
	default:
		return "k\x00" + key
	}
}
