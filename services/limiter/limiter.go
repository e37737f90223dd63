// Package limiter is the admission service: it decides requests against
// the windows of the keys this replica owns, forwards items for other keys
// to their owners, and seeds day and period totals from the usage ledger.
//
// Handoff. When a key's owner changes, its state moves with it (see
// docs/limiter.md):
//
//   - Pull with fencing. A replica that must decide a key it holds no state
//     for asks for it (Handover): first the key's expected previous holder
//     (the replica it handed the key to, or the key's owner in the last
//     ring replaced, or among the other members), then every replica that
//     may hold it, all at once and again each round (the current members,
//     the members of the rings seen in the last 30 s, every replica a
//     fence named), following fences (moved) and waiting for keys pushed
//     to it. The holder exports the key's whole state (rolling buckets,
//     day and period counters, open reservations) and fences it: from then
//     on it forwards the key's items and settlements to the new holder
//     (with a hop count, at most maxHops), until it owns the key again and
//     pulls it back. Export and decisions take the key's lock, so no two
//     replicas decide a key from the same state. Concurrent first requests
//     wait for one takeover, and a Handover of a key being taken over here
//     waits for that takeover.
//   - A key is seeded from the usage ledger (day and period totals; rolling
//     windows empty) only when every replica that could hold it said, in
//     one round, that it does not, or is gone (nothing accepts a
//     connection on its address). A replica that does not answer is asked
//     again: it is never taken as saying no. So graceful moves (SIGTERM,
//     scaling, rolling restarts) are exact.
//   - Crashes. Every ReplicateEvery (10 ms) a replica sends the state of
//     the keys that changed to each key's next owner (its owner on the
//     ring without this replica), which keeps it as a replica. When the
//     holder crashes, the next owner finds nobody holding the key and
//     starts it from the replica (raised to the ledger's day and period
//     totals) rather than from the ledger alone: a crash loses the
//     decisions of the last interval, not the window.
//   - Leaving (Shutdown, on SIGTERM): the replica deregisters and starts no
//     takeover. It pushes every key it holds, including keys installed by
//     takeovers that were in flight, to its new owner (Adopt), serves
//     pulls of what could not be pushed for up to HandoverDeadline, and
//     forwards every item it still receives to the key's new owner.
//   - A replica that comes back pulls its keys from whoever took them.
//
// State of keys a replica no longer owns is kept until pulled (it is the
// key's only state) or swept when idle; fences are swept after a minute.
package limiter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/limitclient"
	"github.com/keygate/keygate/internal/limitkey"
	"github.com/keygate/keygate/internal/ring"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/services/limiter/internal/window"
)

// Config configures a limiter replica.
type Config struct {
	// Etcd holds the membership; nil runs a stand-alone replica that owns
	// every key.
	Etcd   *clientv3.Client
	Clock  clock.Clock // nil = real
	Logger *slog.Logger
	Meter  metric.MeterProvider // nil = noop
	// Usage seeds day/period totals for keys this replica comes to own
	// (GetTotals); nil = no seeding.
	Usage usagev1.UsageServiceClient
	// AdvertiseAddr is this replica's gRPC address, registered in etcd
	// under a lease; required with Etcd.
	AdvertiseAddr string
	// DialOptions for forwarding to peers; default plaintext.
	DialOptions []grpc.DialOption
	// ServiceToken callers must present (authorization: Bearer); "" = no
	// check. Forwarded calls carry it.
	ServiceToken string
	// PreviousServiceTokens are still accepted while a rotation rolls out.
	PreviousServiceTokens []string
	// ReservationTimeout after which an unsettled reservation counts as its
	// estimate; default 10m.
	ReservationTimeout time.Duration
	// ReplicateEvery is how often the keys that changed are replicated to
	// their next owner (with Etcd); default 10ms. It bounds what a crash
	// of their holder loses.
	ReplicateEvery time.Duration
}

// Server is one limiter replica.
type Server struct {
	limiterv1.UnimplementedLimiterServiceServer

	cfg   Config
	clock clock.Clock
	log   *slog.Logger
	table *window.Table
	// replicas holds the state of keys whose next owner this replica is
	// (with Etcd): where they start if their holder crashes.
	replicas *window.Replicas
	id       string
	tokens   auth.Tokens
	reg      *ring.Registration
	watcher  *ring.Watcher
	peers    *limitclient.Client

	seedMu  sync.Mutex
	seeding map[string]*seedCall
	// asking counts the Handover calls in flight from here, by replica.
	asking map[string]int

	// history holds the rings the watcher replaced, for a grace period:
	// the previous owners a new owner pulls keys' state from.
	histMu   sync.Mutex
	history  []pastRing
	lastRing *ring.Ring
	// closing is set once Shutdown has begun: every item then goes to
	// the key's owner among the other replicas.
	closing      atomic.Bool
	serving      sync.WaitGroup // Handover calls being answered
	shutdownOnce sync.Once
	shutdownErr  error

	names names

	decisions metric.Int64Counter
	alerts    metric.Int64Counter
	// raiseMu makes raises one at a time: whoever holds it has every
	// crossing queued before it started.
	raiseMu   sync.Mutex
	allowOpts []metric.AddOption
	denyOpts  []metric.AddOption
	forwarded metric.Int64Counter
	seeds     metric.Int64Counter
	handovers metric.Int64Counter
	restores  metric.Int64Counter

	// runCtx ends at Close, stopping Run.
	runCtx context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// hopHeader marks a forwarded call: its receiver decides every item
// itself, so an item travels at most one hop even while replicas disagree
// about membership.
const hopHeader = "x-keygate-limiter-hop"

// Errors the gRPC layer maps to status codes.
var (
	// ErrInvalid wraps every malformed item, settlement or release.
	ErrInvalid = errors.New("invalid request")
	// ErrSeed means a key's totals could not be read from the usage ledger,
	// so it cannot be decided safely.
	ErrSeed = errors.New("cannot seed key totals from the usage service")
	// errNoToken means the caller did not present the service token.
	errNoToken = fmt.Errorf("%w: send the limiter service token", auth.ErrUnauthenticated)
	// errClosing means a key was not taken over because the replica is
	// leaving: its items go to the key's owner among the other replicas.
	errClosing = errors.New("limiter replica is leaving")
)

// New starts a replica: it registers in etcd (if configured), follows the
// membership and sweeps idle state in the background until Close.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Meter == nil {
		cfg.Meter = noop.NewMeterProvider()
	}
	if cfg.ReservationTimeout <= 0 {
		cfg.ReservationTimeout = 10 * time.Minute
	}
	if cfg.ReplicateEvery <= 0 {
		cfg.ReplicateEvery = 10 * time.Millisecond
	}
	if cfg.Etcd != nil && cfg.AdvertiseAddr == "" {
		return nil, errors.New("limiter: an advertise address is required to join the membership")
	}
	s := &Server{
		cfg: cfg, clock: cfg.Clock, log: cfg.Logger, id: cfg.AdvertiseAddr,
		tokens:  auth.NewTokens(cfg.ServiceToken, cfg.PreviousServiceTokens...),
		seeding: make(map[string]*seedCall), asking: make(map[string]int),
		table: window.New(window.Config{
			ReservationTimeout: cfg.ReservationTimeout,
			Seeded:             cfg.Usage != nil,
			// The ledger lags the limiter by unsettled reservations and the
			// edge's flush interval: keep idle keys until both have passed.
			Retain: 2 * cfg.ReservationTimeout,
			Track:  cfg.Etcd != nil,
		}),
	}
	if err := s.initMetrics(); err != nil {
		return nil, err
	}
	if cfg.Etcd != nil {
		s.replicas = window.NewReplicas()
		var err error
		if s.watcher, err = ring.Watch(ctx, ring.WatchConfig{Etcd: cfg.Etcd, Logger: cfg.Logger, OnChange: s.membershipChanged}); err != nil {
			return nil, fmt.Errorf("limiter: %w", err)
		}
		// One membership watcher per process: the peers' client shares it.
		if s.peers, err = limitclient.New(ctx, limitclient.Config{Etcd: cfg.Etcd, DialOptions: cfg.DialOptions, Logger: cfg.Logger, Watcher: s.watcher}); err != nil {
			_ = s.watcher.Close()
			return nil, fmt.Errorf("limiter: %w", err)
		}
		seen := s.awaitSelf()
		if s.reg, err = ring.Register(ctx, cfg.Etcd, ring.DefaultPrefix, ring.Member{ID: s.id, Addr: cfg.AdvertiseAddr}, 0, cfg.Logger); err != nil {
			_ = s.watcher.Close()
			_ = s.peers.Close()
			return nil, fmt.Errorf("limiter: %w", err)
		}
		// Clients sharing the watcher route to this replica as soon as New
		// returns.
		select {
		case <-seen:
		case <-ctx.Done():
			_ = s.reg.Close()
			_ = s.watcher.Close()
			_ = s.peers.Close()
			return nil, fmt.Errorf("limiter: waiting to see itself in the membership: %w", ctx.Err())
		}
	}
	s.runCtx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Run does the replica's background work until ctx ends or Close: it
// sweeps idle keys, replicates the keys that change to their next owners
// (with Etcd) and raises alerts into the outbox (with Etcd).
func (s *Server) Run(ctx context.Context) error {
	s.wg.Add(1)
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.runCtx, cancel)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { s.sweep(ctx) })
	if s.replicas != nil {
		wg.Go(func() { s.replicateLoop(ctx) })
	}
	if s.cfg.Etcd != nil {
		wg.Go(func() { s.raiseLoop(ctx) })
	}
	wg.Wait()
	return nil
}

func (s *Server) initMetrics() error {
	m := s.cfg.Meter.Meter("github.com/keygate/keygate/services/limiter")
	var err error
	if s.decisions, err = m.Int64Counter("keygate.limiter.decisions", metric.WithUnit("{decision}"),
		metric.WithDescription("Admission decisions made by this replica.")); err != nil {
		return fmt.Errorf("limiter: metric: %w", err)
	}
	if s.forwarded, err = m.Int64Counter("keygate.limiter.forwarded", metric.WithUnit("{item}"),
		metric.WithDescription("Items forwarded to the replica that owns their key.")); err != nil {
		return fmt.Errorf("limiter: metric: %w", err)
	}
	if s.seeds, err = m.Int64Counter("keygate.limiter.seeds", metric.WithUnit("{key}"),
		metric.WithDescription("Keys whose day and period totals were seeded from the usage ledger.")); err != nil {
		return fmt.Errorf("limiter: metric: %w", err)
	}
	if s.handovers, err = m.Int64Counter("keygate.limiter.handovers", metric.WithUnit("{key}"),
		metric.WithDescription("Keys whose state this replica took over from another replica.")); err != nil {
		return fmt.Errorf("limiter: metric: %w", err)
	}
	if s.alerts, err = m.Int64Counter("keygate.limiter.alerts_raised", metric.WithUnit("{alert}"),
		metric.WithDescription("Threshold crossings this replica put in the alert outbox.")); err != nil {
		return fmt.Errorf("limiter: metric: %w", err)
	}
	if s.restores, err = m.Int64Counter("keygate.limiter.restores", metric.WithUnit("{key}"),
		metric.WithDescription("Keys started from the replica of a holder that is gone (crashed).")); err != nil {
		return fmt.Errorf("limiter: metric: %w", err)
	}
	s.allowOpts = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("decision", "allow")))}
	s.denyOpts = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("decision", "deny")))}
	return nil
}

// awaitSelf returns a channel closed once the watcher's ring has this
// replica.
func (s *Server) awaitSelf() <-chan struct{} {
	seen := make(chan struct{})
	var once sync.Once
	check := func(r *ring.Ring) {
		if _, ok := r.Member(s.id); ok {
			once.Do(func() { close(seen) })
		}
	}
	s.watcher.OnChange(check)
	check(s.watcher.Ring())
	return seen
}

// Membership returns the replica's membership watcher (nil when stand-alone),
// for other parts of the process to share.
func (s *Server) Membership() *ring.Watcher { return s.watcher }

// Register adds the limiter service to a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) { limiterv1.RegisterLimiterServiceServer(r, s) }

// Close shuts the replica down (Shutdown, if not done yet: deregistering
// and handing its keys over) and stops its background work.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*HandoverDeadline)
	err := s.Shutdown(ctx)
	cancel()
	s.cancel()
	s.wg.Wait()
	if s.watcher != nil {
		err = errors.Join(err, s.watcher.Close())
	}
	if s.peers != nil {
		err = errors.Join(err, s.peers.Close())
	}
	return err
}

func (s *Server) sweep(ctx context.Context) {
	clock.Every(ctx, 10*time.Second, func() {
		now := s.clock.Now()
		s.table.Sweep(now)
		if s.replicas != nil {
			s.replicas.Sweep(now.Add(-2 * s.cfg.ReservationTimeout))
		}
	})
}

// local reports whether this replica decides key.
func (s *Server) local(key string, hop bool) bool {
	if s.watcher == nil {
		return true
	}
	if s.closing.Load() {
		return false
	}
	if hop {
		return true
	}
	r := s.watcher.Ring()
	if r.Len() == 0 {
		return true
	}
	m, _ := r.Owner(limitkey.Shard(key))
	return m.ID == s.id
}

func (s *Server) authorize(ctx context.Context) error {
	if s.cfg.ServiceToken == "" {
		return nil
	}
	// Not auth.BearerFromIncoming: ValueFromIncomingContext reads the one
	// header without copying all the metadata on every call.
	var got string
	if v := metadata.ValueFromIncomingContext(ctx, auth.Header); len(v) > 0 {
		got = auth.ParseBearer(v[0])
	}
	if !s.tokens.Match(got) {
		return errNoToken
	}
	return nil
}

func isHop(ctx context.Context) bool {
	return len(metadata.ValueFromIncomingContext(ctx, hopHeader)) > 0
}

// hops returns how many times a call was forwarded: the hop header's
// value (replicas before handovers send "1").
func hops(ctx context.Context) int {
	v := metadata.ValueFromIncomingContext(ctx, hopHeader)
	if len(v) == 0 {
		return 0
	}
	n, err := strconv.Atoi(v[0])
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// maxHops bounds how often an item is forwarded along handed-over keys
// and by a closing replica, while rings disagree.
const maxHops = 4

func (s *Server) hopContext(ctx context.Context) context.Context {
	return s.hopContextN(ctx, 1)
}

func (s *Server) hopContextN(ctx context.Context, n int) context.Context {
	ctx = metadata.AppendToOutgoingContext(ctx, hopHeader, strconv.Itoa(n))
	if s.cfg.ServiceToken != "" {
		ctx = auth.WithBearer(ctx, s.cfg.ServiceToken)
	}
	return ctx
}

// check decides items, forwarding those this replica does not own. The
// results of local decisions live in sl, so they are valid until sl is
// reused.
func (s *Server) check(ctx context.Context, items []*limiterv1.CheckItem, hop bool, sl *slab) ([]*limiterv1.CheckResult, error) {
	out := sl.reset(len(items))
	remote := 0
	for i, it := range items {
		if err := toRequests(it, &sl.reqs[i], &s.names); err != nil {
			return nil, fmt.Errorf("%w: item %d: %w", ErrInvalid, i, err)
		}
		sl.remote[i] = !s.local(sl.reqs[i].r[0].Key, hop)
		if sl.remote[i] {
			remote++
		}
	}
	if remote == 0 {
		// The common case: no index lists, no goroutine.
		return out, s.decideLocal(ctx, items, nil, out, sl)
	}
	localIdx := make([]int, 0, len(items)-remote)
	remoteIdx := make([]int, 0, remote)
	for i := range items {
		if sl.remote[i] {
			remoteIdx = append(remoteIdx, i)
		} else {
			localIdx = append(localIdx, i)
		}
	}
	var (
		wg        sync.WaitGroup
		remoteErr error
	)
	wg.Go(func() {
		sub := make([]*limiterv1.CheckItem, len(remoteIdx))
		for j, i := range remoteIdx {
			sub[j] = items[i]
		}
		s.forwarded.Add(ctx, int64(len(sub)))
		var (
			res []*limiterv1.CheckResult
			err error
		)
		if s.closing.Load() {
			res, err = s.forwardAway(ctx, sub)
		} else {
			res, err = s.peers.Check(s.hopContext(ctx), sub)
		}
		if err != nil {
			remoteErr = err
			return
		}
		for j, i := range remoteIdx {
			out[i] = res[j]
		}
	})
	var err error
	if len(localIdx) > 0 {
		err = s.decideLocal(ctx, items, localIdx, out, sl)
	}
	wg.Wait()
	return out, errors.Join(err, remoteErr)
}

// decideLocal decides items[idx] (every item when idx is nil) into out.
func (s *Server) decideLocal(ctx context.Context, items []*limiterv1.CheckItem, idx []int, out []*limiterv1.CheckResult, sl *slab) error {
	var (
		d        window.Decision
		allow    int64
		deny     int64
		unseeded []int
		moved    []int
		movedBy  []string // the entity found handed over, per moved item
	)
	decide := func(now time.Time, i int) {
		if j, err := s.table.CheckLevels(now, sl.reqs[i].all(), &d); err != nil {
			if name := sl.reqs[i].r[j].Key; err == window.ErrMoved && !s.owns(name) {
				moved, movedBy = append(moved, i), append(movedBy, name)
			} else {
				unseeded = append(unseeded, i)
			}
			return
		}
		if d.Allowed {
			allow++
		} else {
			deny++
		}
		out[i] = sl.fill(i, items[i].GetModel(), &d)
	}
	now := s.clock.Now()
	if idx == nil {
		for i := range items {
			decide(now, i)
		}
	} else {
		for _, i := range idx {
			decide(now, i)
		}
	}
	for attempt := 1; len(unseeded) > 0; attempt++ {
		if attempt > 3 {
			return fmt.Errorf("%w: key kept changing owner", ErrSeed)
		}
		if err := s.seed(ctx, sl.reqs, unseeded); errors.Is(err, errClosing) {
			// Leaving: a key not held here is decided by its new owner.
			for _, i := range unseeded {
				moved, movedBy = append(moved, i), append(movedBy, entityKey(items[i]))
			}
			break
		} else if err != nil {
			return err
		}
		pending := unseeded
		unseeded = nil
		now = s.clock.Now()
		for _, i := range pending {
			decide(now, i)
		}
	}
	if len(moved) > 0 {
		if err := s.forwardMoved(ctx, items, moved, movedBy, out); err != nil {
			return err
		}
	}
	if allow > 0 {
		s.decisions.Add(ctx, allow, s.allowOpts...)
	}
	if deny > 0 {
		s.decisions.Add(ctx, deny, s.denyOpts...)
	}
	return nil
}

// slab holds the result messages of a batch in a few blocks rather than
// several allocations per result, and is reusable from one stream message
// to the next (a message is marshalled before Send returns).
type slab struct {
	cells []cell
	out   []*limiterv1.CheckResult
	// reqs holds each item converted once, remote whether another replica
	// decides it.
	reqs   []itemReqs
	remote []bool
	// quotas and ptrs are handed out in order, d.N per result.
	quotas []quotaCell
	ptrs   []*limiterv1.Quota
	used   int
}

// maxReuse bounds the batch whose results a stream keeps for reuse.
const maxReuse = 256

type cell struct {
	res   limiterv1.CheckResult
	retry durationpb.Duration
}

type quotaCell struct {
	q     limiterv1.Quota
	reset durationpb.Duration
}

// reset makes room for n results and returns the result slice, all nil.
func (sl *slab) reset(n int) []*limiterv1.CheckResult {
	if cap(sl.out) < n || (n <= maxReuse && cap(sl.out) > maxReuse) {
		sl.cells = make([]cell, n)
		sl.out = make([]*limiterv1.CheckResult, n)
		sl.reqs = make([]itemReqs, n)
		sl.remote = make([]bool, n)
		sl.quotas, sl.ptrs = nil, nil
	}
	sl.used = 0
	sl.out, sl.reqs, sl.remote = sl.out[:n], sl.reqs[:n], sl.remote[:n]
	clear(sl.out)
	return sl.out
}

// fill sets item i's result from d. Every field is written, so a reused
// cell carries nothing from its previous result.
func (sl *slab) fill(i int, model string, d *window.Decision) *limiterv1.CheckResult {
	if sl.used+d.N > len(sl.quotas) {
		// Sized as if the rest of the batch had as many windows as this
		// item: batches of one policy shape take one block.
		k := d.N * (len(sl.out) - i)
		sl.quotas = make([]quotaCell, k)
		sl.ptrs = make([]*limiterv1.Quota, k)
		sl.used = 0
	}
	c := &sl.cells[i]
	r := &c.res
	r.Allowed = d.Allowed
	r.DeniedBy, r.DeniedLevel, r.DeniedModel, r.RetryAfter = 0, 0, "", nil
	r.Reported = nil
	if !d.Allowed {
		r.DeniedBy = limiterv1.LimitKind(d.DeniedBy)
		r.DeniedLevel = typev1.LimitLevel(d.DeniedLevel)
		if d.DeniedModel {
			r.DeniedModel = model
		}
		if d.RetryAfter > 0 {
			r.RetryAfter = setDuration(&c.retry, d.RetryAfter)
		}
	}
	qs := sl.quotas[sl.used : sl.used+d.N]
	r.Quotas = sl.ptrs[sl.used : sl.used+d.N : sl.used+d.N]
	sl.used += d.N
	for j := range d.N {
		w := &d.Quotas[j]
		q := &qs[j].q
		q.Kind = limiterv1.LimitKind(w.Kind)
		q.Level = typev1.LimitLevel(w.Level)
		q.Model = ""
		if w.Model {
			q.Model = model
		}
		q.Limit, q.Remaining = w.Limit, w.Remaining
		q.ResetAfter = setDuration(&qs[j].reset, w.ResetAfter)
		r.Quotas[j] = q
	}
	r.Requests, r.Tokens = nil, nil
	if d.Requests >= 0 {
		r.Requests = r.Quotas[d.Requests]
	}
	if d.Tokens >= 0 {
		r.Tokens = r.Quotas[d.Tokens]
	}
	if d.NR > 0 {
		// Rare (a shadow limit is being rolled out): allocated as needed.
		r.Reported = reported(d, model)
	}
	return r
}

func reported(d *window.Decision, model string) []*limiterv1.Reported {
	out := make([]*limiterv1.Reported, d.NR)
	for i, x := range d.Reported[:d.NR] {
		out[i] = &limiterv1.Reported{Level: typev1.LimitLevel(x.Level), Kind: limiterv1.LimitKind(x.Kind)}
		if x.Model {
			out[i].Model = model
		}
	}
	return out
}

func setDuration(p *durationpb.Duration, d time.Duration) *durationpb.Duration {
	p.Seconds = int64(d / time.Second)
	p.Nanos = int32(d % time.Second)
	return p
}

// finish applies settlements or releases, forwarding those for keys this
// replica does not own (by the ring) or has handed over (to their holder).
// It returns how many were unknown, here or at the owners.
func (s *Server) finish(ctx context.Context, n int, key func(int) string, valid func(int) error,
	local func(int) (bool, string), forward func(ctx context.Context, idx []int) (int32, error),
	forwardTo func(ctx context.Context, addr string, idx []int) (int32, error), hop bool,
) (int32, error) {
	for i := range n {
		if key(i) == "" {
			return 0, fmt.Errorf("%w: item %d: key is required", ErrInvalid, i)
		}
		if err := valid(i); err != nil {
			return 0, fmt.Errorf("%w: item %d: %w", ErrInvalid, i, err)
		}
	}
	var (
		unknown int32
		remote  []int
		direct  map[string][]int
	)
	hopsIn := 0
	if hop {
		hopsIn = hops(ctx)
	}
	for i := range n {
		if !s.local(key(i), hop) && hopsIn < maxHops {
			if addr := s.awayOwner(key(i)); addr != "" {
				direct = addTo(direct, addr, i)
			} else {
				remote = append(remote, i)
			}
			continue
		}
		known, to := local(i)
		if to != "" && hopsIn < maxHops && s.peers != nil {
			direct = addTo(direct, to, i)
			continue
		}
		if !known {
			unknown++
		}
	}
	var errs []error
	if len(remote) > 0 {
		s.forwarded.Add(ctx, int64(len(remote)))
		n, err := forward(s.hopContext(ctx), remote)
		unknown += n
		errs = append(errs, err)
	}
	for addr, idx := range direct {
		s.forwarded.Add(ctx, int64(len(idx)))
		n, err := forwardTo(s.hopContextN(ctx, hopsIn+1), addr, idx)
		unknown += n
		errs = append(errs, err)
	}
	return unknown, errors.Join(errs...)
}

func addTo(m map[string][]int, addr string, i int) map[string][]int {
	if m == nil {
		m = map[string][]int{}
	}
	m[addr] = append(m[addr], i)
	return m
}

func (s *Server) settle(ctx context.Context, st []*limiterv1.Settlement, hop bool) (int32, error) {
	return s.finish(ctx, len(st), func(i int) string { return entityKey(st[i]) },
		func(i int) error {
			switch {
			case st[i].GetReservationId() == "":
				return errors.New("reservation_id is required")
			case st[i].GetActualTokens() < 0 || st[i].GetActualCostMicros() < 0:
				return errors.New("actual tokens and cost must not be negative")
			}
			return nil
		},
		func(i int) (bool, string) {
			x := st[i]
			return s.finishLevels(x.GetKey(), x.GetWorkspace(), x.GetMember(), x.GetReservationId(), false, x.GetActualTokens(), x.GetActualCostMicros())
		},
		func(ctx context.Context, idx []int) (int32, error) {
			sub := make([]*limiterv1.Settlement, len(idx))
			for j, i := range idx {
				sub[j] = st[i]
			}
			return s.peers.SettleUnknown(ctx, sub)
		},
		func(ctx context.Context, addr string, idx []int) (int32, error) {
			req := &limiterv1.SettleRequest{Settlements: make([]*limiterv1.Settlement, len(idx))}
			for j, i := range idx {
				req.Settlements[j] = st[i]
			}
			cl, err := s.peers.Replica(addr)
			if err != nil {
				return 0, err
			}
			resp, err := cl.Settle(ctx, req)
			return resp.GetUnknown(), err
		}, hop)
}

func (s *Server) release(ctx context.Context, rs []*limiterv1.Release, hop bool) (int32, error) {
	return s.finish(ctx, len(rs), func(i int) string { return entityKey(rs[i]) },
		func(i int) error {
			if rs[i].GetReservationId() == "" {
				return errors.New("reservation_id is required")
			}
			return nil
		},
		func(i int) (bool, string) {
			x := rs[i]
			return s.finishLevels(x.GetKey(), x.GetWorkspace(), x.GetMember(), x.GetReservationId(), true, 0, 0)
		},
		func(ctx context.Context, idx []int) (int32, error) {
			sub := make([]*limiterv1.Release, len(idx))
			for j, i := range idx {
				sub[j] = rs[i]
			}
			return s.peers.ReleaseUnknown(ctx, sub)
		},
		func(ctx context.Context, addr string, idx []int) (int32, error) {
			req := &limiterv1.ReleaseRequest{Releases: make([]*limiterv1.Release, len(idx))}
			for j, i := range idx {
				req.Releases[j] = rs[i]
			}
			cl, err := s.peers.Replica(addr)
			if err != nil {
				return 0, err
			}
			resp, err := cl.Release(ctx, req)
			return resp.GetUnknown(), err
		}, hop)
}

// finishLevels settles or releases a reservation at its key and, when the
// key's state is here, at the key's levels (a level the item did not have
// knows no such reservation). The key's answer is the settlement's.
func (s *Server) finishLevels(key, workspace, member, id string, release bool, tokens, cost int64) (bool, string) {
	known, to := s.table.Finish(limitkey.Key(workspace, key), id, release, tokens, cost)
	if to != "" || workspace == "" {
		return known, to
	}
	if member != "" {
		s.table.Finish(limitkey.Member(workspace, member), id, release, tokens, cost)
	}
	s.table.Finish(limitkey.Workspace(workspace), id, release, tokens, cost)
	return known, to
}
