package limiter

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/limitkey"
	"github.com/keygate/keygate/internal/ring"
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
	// arrive before the replica that pushed it is asked again.
	adoptWait = time.Second
	// followWait is how long a replica a fence names may say it does not
	// have the key (its pull is on the way) before its answer is believed.
	followWait = 2 * pullTimeout
	// goneProbe bounds the connection attempt that decides whether a
	// replica that does not answer is gone.
	goneProbe = 250 * time.Millisecond
	// seedWait bounds how long a Handover waits for a takeover of the same
	// key in flight here (less than pullTimeout, so the answer arrives).
	seedWait = pullTimeout / 2
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
	if s.remember(r) {
		// Some keys have a new next owner, which needs their replicas.
		s.table.ChangeAll()
	}
}

// remember records r as the latest ring and keeps the one it replaces;
// it reports whether there was one.
func (s *Server) remember(r *ring.Ring) bool {
	now := time.Now()
	s.histMu.Lock()
	defer s.histMu.Unlock()
	prev := s.lastRing
	s.lastRing = r
	if prev == nil {
		return false
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
	return true
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
	m, _ := r.Owner(limitkey.Shard(key))
	return m.ID == s.id
}

// awayOwner is, while closing, the address of key's owner among the other
// replicas; "" otherwise.
func (s *Server) awayOwner(key string) string {
	if !s.closing.Load() || s.watcher == nil {
		return ""
	}
	m, ok := s.watcher.Ring().OwnerExcept(limitkey.Shard(key), map[string]bool{s.id: true})
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
			if m, ok := p.ring.Owner(limitkey.Shard(key)); ok {
				add(m.Addr)
			}
		}
	}
	if m, ok := cur.OwnerExcept(limitkey.Shard(key), map[string]bool{s.id: true}); ok {
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

// pull takes keys over from the replicas that may hold them (Handover).
// It returns the keys whose state it installed (got) and the keys it
// could not settle (unsettled): a replica that may hold them neither
// answered nor is known to be gone before ctx ended. Every other key is
// held by nobody: in one round in which every replica that could hold it
// was asked at once, each said it does not (or was gone).
//
// The first round asks each key's expected previous holder only (the
// common case: it has the key). Every later round asks all of the key's
// candidates at once: the current members, the members of the rings seen
// in the last ringGrace, and every replica a fence named. A fence's
// answer (moved) is followed; a replica a fence names that says it does
// not have the key is installing it and is asked again (for up to
// followWait); a key pushed here (moved to this replica) is waited for
// (adoptWait), then its pusher is asked again, since a failed push is
// undone. A replica that does not answer is asked again, in a new full
// round, until it answers or is gone (left the membership and refuses
// connections).
func (s *Server) pull(ctx context.Context, keys []string) (got map[string]bool, unsettled []string) {
	if s.peers == nil || len(keys) == 0 {
		return nil, nil
	}
	p := s.newPuller(keys)
	for len(p.st) > 0 && ctx.Err() == nil {
		groups, waiting := p.plan()
		if len(groups) == 0 {
			if waiting == 0 {
				break
			}
			pause(ctx, 5*time.Millisecond)
			continue
		}
		open := p.absorb(ctx, p.ask(ctx, groups))
		if !p.advance(open) && len(p.st) > 0 {
			// Only replicas to ask again: do not spin.
			pause(ctx, 10*time.Millisecond)
		}
	}
	for k := range p.st {
		unsettled = append(unsettled, k)
	}
	return p.got, unsettled
}

// keyPull is where the pull of one key stands.
type keyPull struct {
	wide  bool
	extra []string             // replicas fences named
	since map[string]time.Time // when a replica a fence named first said no
	adopt string               // the replica that pushed the key here
	until time.Time            // how long to wait for the push
}

// puller is the state of one pull: the keys still open and those got.
type puller struct {
	s     *Server
	reqID string // one per pull: a repeated call gets a lost answer again
	st    map[string]*keyPull
	got   map[string]bool
}

func (s *Server) newPuller(keys []string) *puller {
	p := &puller{s: s, reqID: rand.Text(), st: make(map[string]*keyPull, len(keys)), got: map[string]bool{}}
	for _, k := range keys {
		kp := &keyPull{since: map[string]time.Time{}}
		if to := s.table.MovedTo(k); to != "" && to != s.id {
			kp.extra = []string{to} // this replica's own fence
		}
		p.st[k] = kp
	}
	return p
}

// plan groups the open keys by the replicas to ask this round; waiting
// counts the keys pushed here whose arrival is still awaited.
func (p *puller) plan() (groups map[string][]string, waiting int) {
	s := p.s
	groups = map[string][]string{}
	for k, kp := range p.st {
		if kp.adopt != "" {
			switch to := s.table.MovedTo(k); {
			case s.table.Held(k):
				p.got[k] = true
				delete(p.st, k)
				continue
			case to != "" && to != s.id:
				// Arrived and handed on meanwhile.
				kp.adopt, kp.extra = "", appendNew(kp.extra, to)
			case time.Now().Before(kp.until):
				waiting++
				continue
			default:
				kp.adopt = ""
			}
		}
		cands := s.candidates(k)
		if !kp.wide {
			if len(cands) == 0 {
				delete(p.st, k) // no other replica: nobody holds it
				continue
			}
			cands = cands[:1]
		} else {
			for _, a := range kp.extra {
				cands = appendNew(cands, a)
			}
		}
		for _, a := range cands {
			groups[a] = append(groups[a], k)
		}
	}
	return groups, waiting
}

// pullAnswer is one replica's answer to a Handover of some keys.
type pullAnswer struct {
	addr  string
	keys  []string
	resp  *limiterv1.HandoverResponse
	err   error
	gone  bool
	asked time.Time
}

// ask sends every group's Handover at once, in batches.
func (p *puller) ask(ctx context.Context, groups map[string][]string) []pullAnswer {
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		answers []pullAnswer
	)
	for addr, ks := range groups {
		for start := 0; start < len(ks); start += handoverBatch {
			batch := ks[start:min(start+handoverBatch, len(ks))]
			wg.Go(func() {
				a := pullAnswer{addr: addr, keys: batch, asked: time.Now()}
				a.resp, a.gone, a.err = p.s.handover(ctx, addr, batch, p.reqID)
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	return answers
}

// absorb installs the states answered and returns the keys that stay open
// (some replica must be asked again). Per key, this round: settled (state
// got, or pushed here), open, or else every replica asked said no.
func (p *puller) absorb(ctx context.Context, answers []pullAnswer) map[string]bool {
	open := map[string]bool{}
	for _, a := range answers {
		if a.err != nil {
			if !a.gone {
				p.s.log.Info("limiter replica did not answer a handover; asking again",
					slog.String("member", a.addr), slog.Int("keys", len(a.keys)), slog.Any("error", a.err))
				for _, k := range a.keys {
					open[k] = true
				}
			}
			continue
		}
		p.absorbAnswer(ctx, a, open)
	}
	return open
}

func (p *puller) absorbAnswer(ctx context.Context, a pullAnswer, open map[string]bool) {
	s := p.s
	if n := s.table.Import(a.resp.GetStates()); n > 0 {
		s.handovers.Add(ctx, int64(n))
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("limiter handover answered", slog.String("self", s.id), slog.String("member", a.addr),
			slog.Any("keys", a.keys), slog.Int("states", len(a.resp.GetStates())), slog.Any("moved", a.resp.GetMoved()))
	}
	answered := map[string]bool{}
	for _, x := range a.resp.GetStates() {
		answered[x.GetKey()] = true
		if p.st[x.GetKey()] != nil {
			p.got[x.GetKey()] = true
			delete(p.st, x.GetKey())
		}
	}
	for _, m := range a.resp.GetMoved() {
		k := m.GetKey()
		answered[k] = true
		kp := p.st[k]
		if kp == nil {
			continue
		}
		if m.GetOwner() == s.id {
			// Pushed here by a replica leaving: on its way.
			if kp.adopt == "" {
				kp.adopt, kp.until = a.addr, time.Now().Add(adoptWait)
			}
			continue
		}
		kp.extra = appendNew(kp.extra, m.GetOwner())
		open[k] = true
	}
	for _, k := range a.keys {
		kp := p.st[k]
		if answered[k] || kp == nil || !contains(kp.extra, a.addr) {
			continue
		}
		// A fence names this replica, and it says it does not have the
		// key: its pull of it is still on the way.
		first, ok := kp.since[a.addr]
		if !ok {
			first = a.asked
			kp.since[a.addr] = first
		}
		if time.Since(first) < followWait {
			open[k] = true
		}
	}
}

// advance widens the keys asked narrowly and drops those every replica
// that could hold them refused; it reports whether any key widened.
func (p *puller) advance(open map[string]bool) (progress bool) {
	for k, kp := range p.st {
		switch {
		case kp.adopt != "":
		case open[k]:
			if !kp.wide {
				kp.wide, progress = true, true
			}
		case kp.wide:
			delete(p.st, k) // every replica that could hold it said no
		default:
			kp.wide, progress = true, true
		}
	}
	return progress
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func appendNew(ss []string, s string) []string {
	if contains(ss, s) {
		return ss
	}
	return append(ss, s)
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// handover asks the replica at addr for keys. gone reports that the
// replica cannot be holding any of them: nothing accepts a connection on
// its address (it crashed or stopped; a process starting there holds
// nothing yet, and asks this replica before it seeds anything).
func (s *Server) handover(ctx context.Context, addr string, keys []string, reqID string) (resp *limiterv1.HandoverResponse, gone bool, err error) {
	s.seedMu.Lock()
	s.asking[addr]++
	s.seedMu.Unlock()
	defer func() {
		s.seedMu.Lock()
		if s.asking[addr]--; s.asking[addr] == 0 {
			delete(s.asking, addr)
		}
		s.seedMu.Unlock()
	}()
	req := &limiterv1.HandoverRequest{Keys: keys, NewOwner: s.id, RequestId: reqID}
	cctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	for {
		if !s.peers.Ready(addr) {
			// Not connected: a replica that left (or crashed) is usually
			// gone, which one connection attempt tells at once, rather
			// than a call waiting for a connection that never comes.
			if !s.listening(cctx, addr) {
				return nil, ctx.Err() == nil, errors.New("limiter " + addr + " refuses connections")
			}
			// Up, perhaps back on its address: its connection may be
			// waiting out a reconnection backoff.
			s.peers.Reconnect(addr)
		}
		cl, err := s.peers.Replica(addr)
		if err != nil {
			return nil, false, err
		}
		// Not WaitForReady: a connection that fails (the replica stopped
		// serving under the call, or came back on its address) fails the
		// call at once, and the loop looks again.
		resp, err = cl.Handover(s.hopContext(cctx), req)
		if err == nil {
			return resp, false, nil
		}
		if status.Code(err) != codes.Unavailable || cctx.Err() != nil {
			return nil, ctx.Err() == nil && !s.listening(ctx, addr), err
		}
		select {
		case <-cctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// listening reports whether anything accepts a TCP connection on addr
// within goneProbe. An address that is not host:port is taken as up.
func (s *Server) listening(ctx context.Context, addr string) bool {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return true
	}
	d := net.Dialer{Timeout: goneProbe}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// forwardMoved sends items[idx], whose keys this replica handed over, to
// their holders; the results go to out.
func (s *Server) forwardMoved(ctx context.Context, items []*limiterv1.CheckItem, idx []int, entities []string, out []*limiterv1.CheckResult) error {
	groups := map[string][]int{}
	for j, i := range idx {
		to := s.table.MovedTo(entities[j])
		if to == "" {
			// Taken back meanwhile: its owner's ring decides again.
			to = s.awayOwner(entities[j])
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
		to := s.awayOwner(entityKey(it))
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
		// again until nothing is held or being taken over (with no other replica there is
		// nobody to hand anything to).
		var pushed, failed int
		warned := map[string]bool{} // a failing replica is logged once
		for {
			p, f := s.push(ctx, warned)
			pushed, failed = pushed+p, failed+f
			// A takeover in flight may still install a key: it is pushed
			// once it has.
			if (s.table.HeldCount() == 0 && !s.takeoversInFlight()) || !s.others() || ctx.Err() != nil {
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
func (s *Server) push(ctx context.Context, warned map[string]bool) (pushed, failed int) {
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
					if !warned[addr] {
						warned[addr] = true
						s.log.Warn("limiter could not push keys to their new owner; waiting for it to pull them",
							slog.String("member", addr), slog.Int("keys", len(batch)), slog.Any("error", err))
					}
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
		return nil, s.toStatus(ctx, err)
	}
	if req.GetNewOwner() == "" {
		return nil, s.toStatus(ctx, fmt.Errorf("%w: new_owner is required", ErrInvalid))
	}
	s.serving.Add(1)
	defer s.serving.Done()
	taking := s.awaitTakeovers(ctx, req.GetKeys(), req.GetNewOwner())
	states, moved := s.table.Export(s.clock.Now(), req.GetKeys(), req.GetNewOwner(), req.GetRequestId())
	if len(taking) > 0 {
		answered := map[string]bool{}
		for _, st := range states {
			answered[st.GetKey()] = true
		}
		for _, m := range moved {
			answered[m.GetKey()] = true
		}
		for _, k := range taking {
			if !answered[k] {
				// Still being taken over here: "ask me again".
				moved = append(moved, &limiterv1.Moved{Key: k, Owner: s.id})
			}
		}
	}
	s.log.Debug("limiter handing over", slog.String("self", s.id), slog.String("to", req.GetNewOwner()), slog.Any("keys", req.GetKeys()), slog.Int("states", len(states)))
	return &limiterv1.HandoverResponse{States: states, Moved: moved}, nil
}

// awaitTakeovers waits, up to seedWait, for this replica's takeovers
// (pull or ledger seed) of keys in flight, so that a Handover of a key
// being taken over here answers with its state rather than "not here"
// (two replicas taking over the same key at once, while their rings
// disagree, would otherwise both seed it from the ledger). It returns the
// keys still being taken over when the wait ends, which the caller is to
// ask about again.
//
// Two replicas taking over a key at once ask each other: the one with the
// lower ID waits, the other answers at once, so that neither waits for
// the other's answer to its own question.
func (s *Server) awaitTakeovers(ctx context.Context, keys []string, requester string) []string {
	var (
		calls []*seedCall
		ks    []string
	)
	s.seedMu.Lock()
	yield := s.asking[requester] > 0 && requester < s.id
	if !yield {
		for _, k := range keys {
			if c := s.seeding[k]; c != nil {
				calls, ks = append(calls, c), append(ks, k)
			}
		}
	}
	s.seedMu.Unlock()
	if len(calls) == 0 {
		return nil
	}
	t := time.NewTimer(seedWait)
	defer t.Stop()
	for i, c := range calls {
		select {
		case <-c.done:
			continue
		case <-t.C:
		case <-ctx.Done():
		}
		s.seedMu.Lock()
		asking := s.asking[requester] > 0
		s.seedMu.Unlock()
		if asking {
			// This takeover waits for the requester's answer: answer what
			// is here now.
			return nil
		}
		var open []string
		for j := i; j < len(calls); j++ {
			select {
			case <-calls[j].done:
			default:
				open = append(open, ks[j])
			}
		}
		return open
	}
	return nil
}

// takeoversInFlight reports whether a pull or seed is in flight here.
func (s *Server) takeoversInFlight() bool {
	s.seedMu.Lock()
	defer s.seedMu.Unlock()
	return len(s.seeding) > 0
}

// Adopt implements LimiterService.Adopt.
func (s *Server) Adopt(ctx context.Context, req *limiterv1.AdoptRequest) (*limiterv1.AdoptResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	n := s.table.Import(req.GetStates())
	s.handovers.Add(ctx, int64(n))
	return &limiterv1.AdoptResponse{Adopted: int32(n)}, nil
}
