package limiter

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/pkg/ring"
)

const (
	// HandoverDeadline bounds how long a closing replica keeps serving
	// handovers of the keys it still holds.
	HandoverDeadline = 3 * time.Second
	// ringGrace is how long a replaced ring stays known: a member that
	// just left is asked for its keys' state for that long.
	ringGrace = 30 * time.Second
	// maxRings bounds the rings kept.
	maxRings = 4
	// pullTimeout bounds one Handover call: a previous owner that does not
	// answer in time is taken as gone.
	pullTimeout = time.Second
	// adoptWait is how long a key pushed to this replica may take to
	// arrive before it is seeded from the ledger instead.
	adoptWait = time.Second
	// handoverBatch is the most keys of one Handover or Adopt call.
	handoverBatch = 512
)

type pastRing struct {
	ring  *ring.Ring
	until time.Time
}

// membershipChanged remembers the ring being replaced for a grace period:
// the previous owners of keys this replica comes to own. State of keys
// this replica no longer owns is kept: their new owner pulls it
// (Handover), and until it does this replica's state is the key's only
// one. Sweep drops what nobody pulls.
func (s *Server) membershipChanged(r *ring.Ring) {
	now := time.Now()
	s.histMu.Lock()
	defer s.histMu.Unlock()
	prev := s.lastRing
	s.lastRing = r
	if prev == nil {
		return
	}
	keep := s.history[:0]
	for _, p := range s.history {
		if p.until.After(now) {
			keep = append(keep, p)
		}
	}
	s.history = append(keep, pastRing{ring: prev, until: now.Add(ringGrace)})
	if len(s.history) > maxRings {
		s.history = s.history[len(s.history)-maxRings:]
	}
}

// owns reports whether this replica owns key by its current ring.
func (s *Server) owns(key string) bool {
	if s.watcher == nil || s.closing.Load() {
		return s.watcher == nil
	}
	r := s.watcher.Ring()
	if r.Len() == 0 {
		return true
	}
	m, _ := r.Owner(key)
	return m.ID == s.id
}

// awayOwner is, while closing, the address of key's owner among the other
// replicas; "" otherwise.
func (s *Server) awayOwner(key string) string {
	if !s.closing.Load() || s.watcher == nil {
		return ""
	}
	m, ok := s.watcher.Ring().OwnerExcept(key, map[string]bool{s.id: true})
	if !ok {
		return ""
	}
	return m.Addr
}

// candidates lists, in order, the replicas that may hold key's state: the
// one this replica handed it to, its owners in the rings seen lately, and
// its owner among the other members of the current ring (the replica
// that held it while this one was away).
func (s *Server) candidates(key string) []string {
	var out []string
	add := func(addr string) {
		if addr == "" || addr == s.id {
			return
		}
		for _, a := range out {
			if a == addr {
				return
			}
		}
		out = append(out, addr)
	}
	add(s.table.MovedTo(key))
	now := time.Now()
	cur := s.watcher.Ring()
	s.histMu.Lock()
	defer s.histMu.Unlock()
	for i := len(s.history) - 1; i >= 0; i-- {
		if p := s.history[i]; p.until.After(now) {
			if m, ok := p.ring.Owner(key); ok {
				add(m.Addr)
			}
		}
	}
	if m, ok := cur.OwnerExcept(key, map[string]bool{s.id: true}); ok {
		add(m.Addr)
	}
	// Then every other replica known: only one can hold the key's state,
	// and asking all of them before the ledger is what keeps a key from
	// being started twice when it moved more than once lately.
	for _, m := range cur.Members() {
		add(m.Addr)
	}
	for i := len(s.history) - 1; i >= 0; i-- {
		if p := s.history[i]; p.until.After(now) {
			for _, m := range p.ring.Members() {
				add(m.Addr)
			}
		}
	}
	return out
}

// pull takes keys over from their previous holders (Handover) and
// returns those whose state it installed. Keys nobody holds, or whose
// holder does not answer, are left to the ledger.
func (s *Server) pull(ctx context.Context, keys []string) map[string]bool {
	if s.peers == nil || len(keys) == 0 || s.closing.Load() {
		return nil
	}
	got := map[string]bool{}
	next := map[string][]string{}
	tried := map[string]map[string]bool{}
	for _, k := range keys {
		next[k] = s.candidates(k)
		tried[k] = map[string]bool{}
	}
	var adopt []string
	pending := keys
	for round := 0; round < 16 && len(pending) > 0; round++ {
		if round > 0 && len(adopt) > 0 {
			pending = s.awaitAdopt(ctx, adopt, pending, got, next, tried)
			adopt = nil
		}
		groups := map[string][]string{}
		for _, k := range pending {
			for len(next[k]) > 0 {
				addr := next[k][0]
				next[k] = next[k][1:]
				if !tried[k][addr] {
					tried[k][addr] = true
					groups[addr] = append(groups[addr], k)
					break
				}
			}
		}
		var (
			mu   sync.Mutex
			wg   sync.WaitGroup
			more []string
		)
		for addr, ks := range groups {
			for start := 0; start < len(ks); start += handoverBatch {
				batch := ks[start:min(start+handoverBatch, len(ks))]
				wg.Go(func() {
					resp, err := s.handover(ctx, addr, batch)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						s.log.Info("limiter previous owner did not hand keys over; trying the next one",
							slog.String("member", addr), slog.Int("keys", len(batch)), slog.Any("error", err))
						more = append(more, batch...)
						return
					}
					s.table.Import(resp.GetStates())
					if s.log.Enabled(ctx, slog.LevelDebug) {
						s.log.Debug("limiter handover answered", slog.String("self", s.id), slog.String("member", addr),
							slog.Any("keys", batch), slog.Int("states", len(resp.GetStates())), slog.Any("moved", resp.GetMoved()))
					}
					for _, st := range resp.GetStates() {
						got[st.GetKey()] = true
					}
					s.handovers.Add(ctx, int64(len(resp.GetStates())))
					for _, m := range resp.GetMoved() {
						if m.GetOwner() == s.id {
							// Pushed here by a replica leaving: on its way.
							adopt = append(adopt, m.GetKey())
						} else if next[m.GetKey()] != nil {
							next[m.GetKey()] = append([]string{m.GetOwner()}, next[m.GetKey()]...)
							delete(tried[m.GetKey()], m.GetOwner())
						}
					}
					for _, k := range batch {
						if !got[k] {
							more = append(more, k)
						}
					}
				})
			}
		}
		wg.Wait()
		pending = pending[:0:0]
		for _, k := range more {
			if !got[k] && len(next[k]) > 0 && !contains(adopt, k) && !contains(pending, k) {
				pending = append(pending, k)
			}
		}
	}
	if len(adopt) > 0 {
		if again := s.awaitAdopt(ctx, adopt, nil, got, next, tried); len(again) > 0 {
			// Handed on by this replica meanwhile: one more pull.
			for k := range s.pull(ctx, again) {
				got[k] = true
			}
		}
	}
	return got
}

// awaitAdopt waits for keys pushed to this replica to arrive. Those that
// do are got; those that this replica meanwhile handed on are added to
// pending, to be pulled from their holder.
func (s *Server) awaitAdopt(ctx context.Context, adopt, pending []string, got map[string]bool, next map[string][]string, tried map[string]map[string]bool) []string {
	deadline := time.Now().Add(adoptWait)
	for _, k := range adopt {
		for {
			if s.table.Held(k) {
				got[k] = true
				break
			}
			if to := s.table.MovedTo(k); to != "" && to != s.id {
				next[k] = append([]string{to}, next[k]...)
				delete(tried[k], to)
				pending = append(pending, k)
				break
			}
			if !time.Now().Before(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return pending
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func (s *Server) handover(ctx context.Context, addr string, keys []string) (*limiterv1.HandoverResponse, error) {
	cl, err := s.peers.Replica(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	req := &limiterv1.HandoverRequest{Keys: keys, NewOwner: s.id, RequestId: rand.Text()}
	var opts []grpc.CallOption
	if _, member := s.watcher.Ring().Member(addr); member {
		// A member is up, or coming back on its address: its connection
		// may still be waiting out a reconnection backoff.
		opts = append(opts, grpc.WaitForReady(true))
	}
	resp, err := cl.Handover(s.hopContext(ctx), req, opts...)
	if c := status.Code(err); (c == codes.Canceled || c == codes.Unavailable) && ctx.Err() == nil {
		// The connection was closed under the call by a membership change
		// (the address left, or came back): once more on a fresh one.
		if cl, err = s.peers.Replica(addr); err != nil {
			return nil, err
		}
		resp, err = cl.Handover(s.hopContext(ctx), req, opts...)
	}
	return resp, err
}

// forwardMoved sends items[idx], whose keys this replica handed over, to
// their holders; the results go to out.
func (s *Server) forwardMoved(ctx context.Context, items []*limiterv1.CheckItem, idx []int, out []*limiterv1.CheckResult) error {
	groups := map[string][]int{}
	for _, i := range idx {
		to := s.table.MovedTo(items[i].GetKey())
		if to == "" {
			// Taken back meanwhile: its owner's ring decides again.
			to = s.awayOwner(items[i].GetKey())
		}
		if to == "" {
			return fmt.Errorf("%w: key %s was handed over and its holder is unknown", ErrSeed, items[i].GetKey())
		}
		groups[to] = append(groups[to], i)
	}
	return s.forwardDirect(ctx, items, groups, out)
}

// forwardAway sends items, while closing, to their owners among the other
// replicas.
func (s *Server) forwardAway(ctx context.Context, items []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error) {
	groups := map[string][]int{}
	for i, it := range items {
		to := s.awayOwner(it.GetKey())
		if to == "" {
			return nil, fmt.Errorf("%w: no other limiter replica", ErrSeed)
		}
		groups[to] = append(groups[to], i)
	}
	out := make([]*limiterv1.CheckResult, len(items))
	return out, s.forwardDirect(ctx, items, groups, out)
}

// forwardDirect sends items, grouped by replica address, with one more
// hop; a call already forwarded maxHops times is refused (rings disagree
// for longer than a handover takes).
func (s *Server) forwardDirect(ctx context.Context, items []*limiterv1.CheckItem, groups map[string][]int, out []*limiterv1.CheckResult) error {
	n := hops(ctx)
	if n >= maxHops {
		return fmt.Errorf("%w: forwarded %d times", ErrSeed, n)
	}
	hctx := s.hopContextN(ctx, n+1)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for addr, idx := range groups {
		wg.Go(func() {
			sub := make([]*limiterv1.CheckItem, len(idx))
			for j, i := range idx {
				sub[j] = items[i]
			}
			s.forwarded.Add(ctx, int64(len(sub)))
			cl, err := s.peers.Replica(addr)
			var resp *limiterv1.CheckResponse
			if err == nil {
				resp, err = cl.Check(hctx, &limiterv1.CheckRequest{Items: sub})
			}
			if err == nil && len(resp.GetResults()) != len(sub) {
				err = fmt.Errorf("limiter %s answered %d results for %d items", addr, len(resp.GetResults()), len(sub))
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			for j, i := range idx {
				out[i] = resp.Results[j]
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Shutdown takes the replica out of service without losing its keys'
// windows: it deregisters (the ring moves its keys to other replicas at
// once), pushes the state of every key it holds to the key's new owner
// (fencing it here) and serves handovers of whatever could not be pushed
// until every key is gone or HandoverDeadline passes. From then on it
// forwards every item to the key's owner among the other replicas.
// Close calls it; calling it first lets a server stop its streams in
// between.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		if s.reg == nil {
			return
		}
		s.closing.Store(true)
		start := time.Now()
		s.log.Debug("limiter shutting down", slog.String("self", s.id), slog.Int("held", s.table.HeldCount()), slog.Int("keys", s.table.Len()))
		s.shutdownErr = s.reg.Close()
		ctx, cancel := context.WithTimeout(ctx, HandoverDeadline)
		defer cancel()
		// Pushes that fail wait for their new owner to pull them, and a
		// pull this replica had in flight may still install a key: push
		// again until nothing is held (with no other replica there is
		// nobody to hand anything to).
		var pushed, failed int
		for {
			p, f := s.push(ctx)
			pushed, failed = pushed+p, failed+f
			if s.table.HeldCount() == 0 || !s.others() || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
		// A handover answered now must reach its caller before the server
		// stops.
		done := make(chan struct{})
		go func() { s.serving.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
		}
		s.log.Info("limiter handed its keys over", slog.Int("pushed", pushed), slog.Int("push_failed", failed),
			slog.Int("left", s.table.HeldCount()), slog.Duration("took", time.Since(start)))
	})
	return s.shutdownErr
}

// others reports whether any other replica is a member.
func (s *Server) others() bool {
	_, ok := s.watcher.Ring().OwnerExcept("", map[string]bool{s.id: true})
	return ok
}

// push sends every key this replica holds to its owner among the other
// replicas (Adopt); a push that fails is undone, so that the new owner
// can still pull the keys.
func (s *Server) push(ctx context.Context) (pushed, failed int) {
	byOwner := s.table.ExportAll(s.clock.Now(), s.awayOwner)
	for addr, st := range byOwner {
		s.log.Debug("limiter pushing keys", slog.String("self", s.id), slog.String("to", addr), slog.Int("keys", len(st)))
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for addr, states := range byOwner {
		for start := 0; start < len(states); start += handoverBatch {
			batch := states[start:min(start+handoverBatch, len(states))]
			wg.Go(func() {
				cl, err := s.peers.Replica(addr)
				if err == nil {
					_, err = cl.Adopt(s.hopContext(ctx), &limiterv1.AdoptRequest{States: batch})
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					s.log.Warn("limiter could not push keys to their new owner; waiting for it to pull them",
						slog.String("member", addr), slog.Int("keys", len(batch)), slog.Any("error", err))
					s.table.Import(batch)
					failed += len(batch)
					return
				}
				pushed += len(batch)
			})
		}
	}
	wg.Wait()
	return pushed, failed
}

// Handover implements LimiterService.Handover.
func (s *Server) Handover(ctx context.Context, req *limiterv1.HandoverRequest) (*limiterv1.HandoverResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, toStatus(err)
	}
	if req.GetNewOwner() == "" {
		return nil, toStatus(fmt.Errorf("%w: new_owner is required", ErrInvalid))
	}
	s.serving.Add(1)
	defer s.serving.Done()
	states, moved := s.table.Export(s.clock.Now(), req.GetKeys(), req.GetNewOwner(), req.GetRequestId())
	s.log.Debug("limiter handing over", slog.String("self", s.id), slog.String("to", req.GetNewOwner()), slog.Any("keys", req.GetKeys()), slog.Int("states", len(states)))
	return &limiterv1.HandoverResponse{States: states, Moved: moved}, nil
}

// Adopt implements LimiterService.Adopt.
func (s *Server) Adopt(ctx context.Context, req *limiterv1.AdoptRequest) (*limiterv1.AdoptResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, toStatus(err)
	}
	n := s.table.Import(req.GetStates())
	s.handovers.Add(ctx, int64(n))
	return &limiterv1.AdoptResponse{Adopted: int32(n)}, nil
}
