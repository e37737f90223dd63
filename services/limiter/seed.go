package limiter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
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

// seedWant is what a key's takeover reads from the ledger.
type seedWant struct {
	key       string
	tok, cost window.PeriodID
	models    []string
}

// ledgerBatch is the most keys of one GetTotals call.
const ledgerBatch = 256

// seed takes over the keys of items[idx]; keys already being taken over
// by another call are waited for.
func (s *Server) seed(ctx context.Context, items []*limiterv1.CheckItem, idx []int) error {
	if s.cfg.Usage == nil && s.peers == nil {
		return fmt.Errorf("%w: no usage service", ErrSeed)
	}
	if s.closing.Load() {
		return errClosing
	}
	now := s.clock.Now()
	mine, calls, wait := s.claim(now, items, idx)
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
func (s *Server) claim(now time.Time, items []*limiterv1.CheckItem, idx []int) (mine []seedWant, calls map[string]*seedCall, wait []*seedCall) {
	calls = map[string]*seedCall{}
	s.seedMu.Lock()
	defer s.seedMu.Unlock()
	for _, i := range idx {
		it := items[i]
		key := it.GetKey()
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
		mine = append(mine, wantOf(now, it))
	}
	return mine, calls, wait
}

func wantOf(now time.Time, it *limiterv1.CheckItem) seedWant {
	p := it.GetPolicy()
	w := seedWant{
		key:  it.GetKey(),
		tok:  window.PeriodOf(now, window.Period(p.GetTokenCap().GetResetPeriod())),
		cost: window.PeriodOf(now, window.Period(p.GetBudget().GetResetPeriod())),
	}
	for _, ml := range p.GetModelLimits() {
		w.models = append(w.models, ml.GetModel())
	}
	if it.GetModel() != "" {
		w.models = append(w.models, it.GetModel())
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
	for _, w := range keys {
		q := &usagev1.TotalsQuery{Key: w.key, Models: w.models}
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
		out[t.GetKey()] = append(out[t.GetKey()], window.Totals{
			Model: t.GetModel(), RequestsToday: t.GetRequestsToday(), TokensToday: t.GetTokensToday(),
			PeriodTokens: t.GetPeriodTokens(), PeriodCostMicros: t.GetPeriodCostMicros(),
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
