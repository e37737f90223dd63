// Package limitclient calls the limiter replicas, sending each item straight
// to the replica that owns its key (rendezvous hashing over the live
// members in etcd) and, when that replica cannot answer, to the next owner
// in rendezvous order, within the caller's deadline.
//
// Check coalesces concurrent callers: their items go to each owner
// together, in one message of one long-lived CheckStream per owner, since
// per-call gRPC overhead, not the decision, is what limits throughput.
package limitclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/limitkey"
	"github.com/keygate/keygate/internal/ring"
)

// ErrUnavailable means no limiter replica could answer.
var ErrUnavailable = errors.New("limiter unavailable")

// Config configures a Client.
type Config struct {
	Etcd *clientv3.Client
	// DialOptions for the replicas; default plaintext (loopback, tests).
	DialOptions []grpc.DialOption
	Logger      *slog.Logger
	// Local is this process's own limiter replica, if it runs one.
	Local *Local
	// Watcher is the process's membership watcher, shared; nil = the
	// client follows the membership itself.
	Watcher *ring.Watcher
}

// Client routes limiter calls to key owners.
type Client struct {
	cfg        Config
	watcher    *ring.Watcher
	ownWatcher bool // started by New, so closed by Close

	mu    sync.Mutex
	peers map[string]*peer // by address
	// down holds the members whose last call failed, so that a failing
	// member is logged when it fails and when it answers again, not on
	// every call; nDown mirrors its size for the hot path.
	down  map[string]bool
	nDown atomic.Int32
	// warned is when each member's latest warning was logged: a member
	// that keeps failing and answering is warned about once a minute.
	warned map[string]time.Time

	// closing ends the retirement of departed members' connections (Close).
	closing  chan struct{}
	retiring sync.WaitGroup
}

// RetireAfter is how long the connection of a member that left the
// membership stays open for the unary calls still in flight on it: a
// departing limiter answers handovers (whose answer carries the only copy
// of a key's state) and forwarded checks while it drains. Its check
// stream is closed at once.
const RetireAfter = 10 * time.Second

// peer is one replica's connection and its CheckStream lane; the
// in-process replica has neither.
type peer struct {
	cc     *grpc.ClientConn
	client limiterv1.LimiterServiceClient
	lane   *lane
}

// state is the connection's; the in-process replica is always ready.
func (p *peer) state() connectivity.State {
	if p.cc == nil {
		return connectivity.Ready
	}
	return p.cc.GetState()
}

func (p *peer) close() error {
	if p.cc == nil {
		return nil
	}
	// The connection first: that ends a stream Send or open blocked on it.
	err := p.cc.Close()
	p.lane.close()
	return err
}

// New follows the limiter membership; it returns once the members are
// listed.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.DialOptions) == 0 {
		cfg.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	c := &Client{
		cfg: cfg, peers: make(map[string]*peer), down: make(map[string]bool), warned: make(map[string]time.Time),
		closing: make(chan struct{}),
	}
	if cfg.Watcher != nil {
		c.watcher = cfg.Watcher
		cfg.Watcher.OnChange(c.prune)
		return c, nil
	}
	w, err := ring.Watch(ctx, ring.WatchConfig{Etcd: cfg.Etcd, Logger: cfg.Logger, OnChange: c.prune})
	if err != nil {
		return nil, fmt.Errorf("limitclient: %w", err)
	}
	c.watcher, c.ownWatcher = w, true
	return c, nil
}

// Close stops following the membership and closes the connections.
func (c *Client) Close() error {
	var err error
	if c.ownWatcher {
		err = c.watcher.Close()
	}
	c.mu.Lock()
	for addr, p := range c.peers {
		err = errors.Join(err, p.close())
		delete(c.peers, addr)
	}
	c.mu.Unlock()
	close(c.closing)
	c.retiring.Wait()
	return err
}

// retire closes a departed member's check stream now and its connection
// after RetireAfter (or at Close): a call in flight on it, such as a
// handover whose answer is a key's only state, is not cut.
func (c *Client) retire(p *peer) {
	if p.cc == nil {
		return
	}
	c.retiring.Go(func() {
		lane := make(chan struct{})
		go func() { p.lane.close(); close(lane) }()
		t := time.NewTimer(RetireAfter)
		select {
		case <-t.C:
		case <-c.closing:
		}
		t.Stop()
		// The connection last: that also ends a stream Send blocked on it.
		_ = p.cc.Close()
		<-lane
	})
}

// prune retires connections and streams to departed members, and
// connections waiting out a reconnection backoff.
func (c *Client) prune(r *ring.Ring) {
	select {
	case <-c.closing:
		return // a shared watcher outlives this client
	default:
	}
	live := make(map[string]bool, r.Len())
	for _, m := range r.Members() {
		live[m.Addr] = true
	}
	var gone []*peer
	c.mu.Lock()
	for addr, p := range c.peers {
		if !live[addr] {
			gone = append(gone, p)
			delete(c.peers, addr)
			continue
		}
		// A member may have come back on its address (a restart) while
		// its connection waits out a reconnection backoff: a fresh one
		// tries now. (Not ResetConnectBackoff: it reads the connection's
		// subchannel map unlocked, racing with a subchannel being made.)
		if p.state() == connectivity.TransientFailure {
			gone = append(gone, p)
			delete(c.peers, addr)
		}
	}
	for id := range c.down {
		if _, ok := r.Member(id); !ok {
			delete(c.down, id)
		}
	}
	for id := range c.warned {
		if _, ok := r.Member(id); !ok {
			delete(c.warned, id)
		}
	}
	c.nDown.Store(int32(len(c.down)))
	c.mu.Unlock()
	for _, p := range gone {
		c.retire(p)
	}
}

func (c *Client) peer(addr string) (*peer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[addr]
	if p == nil && c.cfg.Local != nil && addr == c.cfg.Local.Addr {
		l := newLocalClient(c.cfg.Local)
		if c.cfg.Local.Tracer != nil {
			l.tracer = c.cfg.Local.Tracer.Tracer("github.com/keygate/keygate/internal/limitclient")
		}
		p = &peer{client: l}
		c.peers[addr] = p
	}
	if p == nil {
		cc, err := grpc.NewClient(addr, c.cfg.DialOptions...)
		if err != nil {
			return nil, fmt.Errorf("limiter %s: %w", addr, err)
		}
		cl := limiterv1.NewLimiterServiceClient(cc)
		p = &peer{cc: cc, client: cl, lane: newLane(addr, cl)}
		c.peers[addr] = p
	}
	return p, nil
}

// Check decides items; results are in item order. Items are grouped per
// owner; each group joins the other callers' items in that owner's next
// stream message. A context with outgoing metadata (a limiter's forwarded
// call carries its hop header) goes in a unary call of its own, since a
// stream carries only the metadata it was opened with.
func (c *Client) Check(ctx context.Context, items []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error) {
	// Calls with their own metadata, and requests whose trace is sampled,
	// go unary: a shared stream carries neither, and a sampled request's
	// trace should show the limiter's work. Unsampled requests share the
	// stream, which is what makes a busy edge cheap.
	_, unary := metadata.FromOutgoingContext(ctx)
	unary = unary || trace.SpanContextFromContext(ctx).IsSampled()
	out := make([]*limiterv1.CheckResult, len(items))
	err := route(ctx, c, len(items), func(i int) string { return limitkey.Route(items[i].GetKey(), items[i].GetWorkspace()) },
		func(ctx context.Context, p *peer, idx []int) error {
			sub := items
			if !identity(idx, len(items)) {
				sub = make([]*limiterv1.CheckItem, len(idx))
				for j, i := range idx {
					sub[j] = items[i]
				}
			}
			var (
				res []*limiterv1.CheckResult
				err error
			)
			direct := unary || p.lane == nil // the in-process replica: a plain call
			if !direct {
				res, err = p.lane.check(ctx, sub)
			}
			if direct || errors.Is(err, errBatch) {
				res, err = checkUnary(ctx, p.client, sub)
			}
			if err != nil {
				return err
			}
			for j, i := range idx {
				out[i] = res[j]
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// identity reports whether idx is 0..n-1 in order: the common single
// owner case, which needs no copy of the items.
func identity(idx []int, n int) bool {
	if len(idx) != n {
		return false
	}
	for j, i := range idx {
		if i != j {
			return false
		}
	}
	return true
}

func checkUnary(ctx context.Context, cl limiterv1.LimiterServiceClient, items []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error) {
	resp, err := cl.Check(ctx, &limiterv1.CheckRequest{Items: items})
	if err != nil {
		return nil, err
	}
	if len(resp.GetResults()) != len(items) {
		return nil, status.Errorf(codes.Internal, "limiter answered %d results for %d items", len(resp.GetResults()), len(items))
	}
	return resp.Results, nil
}

// Settle replaces reservations' estimates with actual usage.
func (c *Client) Settle(ctx context.Context, s []*limiterv1.Settlement) error {
	_, err := c.SettleUnknown(ctx, s)
	return err
}

// SettleUnknown is Settle that also returns how many settlements no owner
// knew (expired, or lost in a handoff).
func (c *Client) SettleUnknown(ctx context.Context, s []*limiterv1.Settlement) (int32, error) {
	var unknown atomic.Int32
	err := route(ctx, c, len(s), func(i int) string { return limitkey.Route(s[i].GetKey(), s[i].GetWorkspace()) },
		func(ctx context.Context, p *peer, idx []int) error {
			req := &limiterv1.SettleRequest{Settlements: make([]*limiterv1.Settlement, len(idx))}
			for j, i := range idx {
				req.Settlements[j] = s[i]
			}
			resp, err := p.client.Settle(ctx, req)
			unknown.Add(resp.GetUnknown())
			return err
		})
	return unknown.Load(), err
}

// Release frees reservations whose upstream call failed.
func (c *Client) Release(ctx context.Context, r []*limiterv1.Release) error {
	_, err := c.ReleaseUnknown(ctx, r)
	return err
}

// ReleaseUnknown is Release that also returns how many releases no owner
// knew.
func (c *Client) ReleaseUnknown(ctx context.Context, r []*limiterv1.Release) (int32, error) {
	var unknown atomic.Int32
	err := route(ctx, c, len(r), func(i int) string { return limitkey.Route(r[i].GetKey(), r[i].GetWorkspace()) },
		func(ctx context.Context, p *peer, idx []int) error {
			req := &limiterv1.ReleaseRequest{Releases: make([]*limiterv1.Release, len(idx))}
			for j, i := range idx {
				req.Releases[j] = r[i]
			}
			resp, err := p.client.Release(ctx, req)
			unknown.Add(resp.GetUnknown())
			return err
		})
	return unknown.Load(), err
}

// Explain asks the owner of the item's key for its live limits.
func (c *Client) Explain(ctx context.Context, it *limiterv1.CheckItem) (*limiterv1.ExplainResponse, error) {
	var out *limiterv1.ExplainResponse
	err := route(ctx, c, 1, func(int) string { return limitkey.Route(it.GetKey(), it.GetWorkspace()) },
		func(ctx context.Context, p *peer, _ []int) error {
			resp, err := p.client.Explain(ctx, &limiterv1.ExplainRequest{Item: it})
			out = resp
			return err
		})
	return out, err
}

// route sends n items, grouped by owner, with call; a group whose member
// cannot answer goes again, regrouped, to the next owners in rendezvous
// order, until every item is answered, no member is left, or ctx ends.
func route(ctx context.Context, c *Client, n int, key func(int) string,
	call func(context.Context, *peer, []int) error,
) error {
	if n == 0 {
		return nil
	}
	r := c.watcher.Ring()
	skip := map[string]bool{}
	pending := make([]int, n)
	for i := range pending {
		pending[i] = i
	}
	var lastErr error
	for len(pending) > 0 {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(err, lastErr))
		}
		groups, ok := groupByOwner(r, skip, pending, key)
		if !ok {
			// Every member of this ring failed. While members come and go
			// (a rolling restart) the next ring may have one that answers:
			// route the rest afresh on it.
			if nr := c.nextRing(ctx, r); nr != nil {
				r, skip = nr, map[string]bool{}
				continue
			}
			if lastErr == nil {
				lastErr = errors.New("no limiter registered")
			}
			return fmt.Errorf("%w: %w", ErrUnavailable, lastErr)
		}
		pending = pending[:0]
		var (
			mu       sync.Mutex
			wg       sync.WaitGroup
			fatalErr error
		)
		one := func(m ring.Member, idx []int) {
			err := c.attempt(ctx, m, idx, call)
			if err == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if !retryable(ctx, err) {
				fatalErr = err
				return
			}
			c.markDown(m, err)
			skip[m.ID] = true
			lastErr = err
			pending = append(pending, idx...)
		}
		for m, idx := range groups {
			if len(groups) == 1 {
				one(m, idx) // the common case: no goroutine to wait for
				continue
			}
			wg.Go(func() { one(m, idx) })
		}
		wg.Wait()
		if fatalErr != nil {
			return fatalErr
		}
	}
	return nil
}

// groupByOwner groups the pending items by their owner among the members
// not skipped; false when an item has none.
func groupByOwner(r *ring.Ring, skip map[string]bool, pending []int, key func(int) string) (map[ring.Member][]int, bool) {
	groups := map[ring.Member][]int{}
	for _, i := range pending {
		m, ok := r.OwnerExcept(key(i), skip)
		if !ok {
			return nil, false
		}
		groups[m] = append(groups[m], i)
	}
	return groups, true
}

// ringWait bounds how long a call whose every member failed waits for the
// membership to change.
const ringWait = time.Second

// nextRing waits (up to ringWait, within ctx) for a ring other than r and
// returns it; nil if none came.
func (c *Client) nextRing(ctx context.Context, r *ring.Ring) *ring.Ring {
	deadline := time.Now().Add(ringWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if nr := c.watcher.Ring(); nr != r && nr.Len() > 0 {
			return nr
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// attempt calls one member. With a deadline, an attempt may use half of
// what is left, so that a hung replica leaves time for the next owner.
func (c *Client) attempt(ctx context.Context, m ring.Member, idx []int,
	call func(context.Context, *peer, []int) error,
) error {
	p, err := c.peer(m.Addr)
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Until(dl)/2)
		defer cancel()
	}
	err = call(ctx, p, idx)
	if err == nil && c.nDown.Load() > 0 {
		c.markUp(m)
	}
	return err
}

// markDown logs a member that stopped answering, once until it answers
// again or leaves the membership.
func (c *Client) markDown(m ring.Member, err error) {
	c.mu.Lock()
	first := !c.down[m.ID] && time.Since(c.warned[m.ID]) > time.Minute
	c.down[m.ID] = true
	if first {
		c.warned[m.ID] = time.Now()
	}
	c.nDown.Store(int32(len(c.down)))
	c.mu.Unlock()
	if first {
		c.cfg.Logger.Warn("limiter replica did not answer; trying the next owner until it does", slog.String("member", m.ID), slog.Any("error", err))
	}
}

func (c *Client) markUp(m ring.Member) {
	c.mu.Lock()
	// Told only if its failure was.
	was := c.down[m.ID] && time.Since(c.warned[m.ID]) < time.Minute
	delete(c.down, m.ID)
	c.nDown.Store(int32(len(c.down)))
	c.mu.Unlock()
	if was {
		c.cfg.Logger.Info("limiter replica answers again", slog.String("member", m.ID))
	}
}

// retryable reports whether another replica might answer: the replica was
// unreachable or timed out while the caller still has time.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Internal, codes.Unknown:
		return true
	}
	return false
}

// Reconnect replaces this client's connection to addr, if it is not up,
// by a fresh one that connects at once: the old one may be waiting out a
// reconnection backoff, or an attempt that began before a replica came
// back on its address. The old one is retired (RetireAfter).
func (c *Client) Reconnect(addr string) {
	c.mu.Lock()
	p := c.peers[addr]
	if p != nil && p.state() != connectivity.Ready {
		delete(c.peers, addr)
	} else {
		p = nil
	}
	c.mu.Unlock()
	if p != nil {
		c.retire(p)
	}
}

// Ready reports whether this client has a connection to addr that is up.
func (c *Client) Ready(addr string) bool {
	c.mu.Lock()
	p := c.peers[addr]
	c.mu.Unlock()
	return p != nil && p.state() == connectivity.Ready
}

// Replica returns the client of the replica at addr, over this client's
// connection to it: the limiter replicas use it to call one another
// directly (handovers, and items of keys handed over). The connection of
// an address that is not a member is retired at the next membership change
// (closed RetireAfter later).
func (c *Client) Replica(addr string) (limiterv1.LimiterServiceClient, error) {
	p, err := c.peer(addr)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return p.client, nil
}
