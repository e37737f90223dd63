package ring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Registration keeps one member registered under a lease until Close.
type Registration struct {
	cli    *clientv3.Client
	key    string
	addr   string
	ttl    int64
	log    *slog.Logger
	runCtx context.Context //nolint:containedctx // the keep-alive's lifetime
	cancel context.CancelFunc
	done   chan struct{}
	lease  atomic.Int64
}

// Register puts prefix+id -> addr under a lease of ttl (default 5 s) and
// keeps the lease alive; if the lease is lost (etcd unreachable for longer
// than ttl) it registers again under a new one.
func Register(ctx context.Context, cli *clientv3.Client, prefix string, m Member, ttl time.Duration, logger *slog.Logger) (*Registration, error) {
	if m.ID == "" || m.Addr == "" {
		return nil, errors.New("ring: member needs an id and an address")
	}
	if ttl < time.Second {
		ttl = 5 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Registration{cli: cli, key: prefix + m.ID, addr: m.Addr, ttl: int64(ttl / time.Second), log: logger, done: make(chan struct{})}
	// The keep-alive outlives the call that registered, until Close.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.runCtx = runCtx
	ka, err := r.register(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	r.cancel = cancel
	go r.keep(runCtx, ka)
	return r, nil
}

func (r *Registration) register(ctx context.Context) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	lease, err := r.cli.Grant(ctx, r.ttl)
	if err != nil {
		return nil, fmt.Errorf("ring: grant lease: %w", err)
	}
	if _, err := r.cli.Put(ctx, r.key, r.addr, clientv3.WithLease(lease.ID)); err != nil {
		return nil, fmt.Errorf("ring: register %s: %w", r.key, err)
	}
	r.lease.Store(int64(lease.ID))
	// The keep-alive outlives the call that registered; Close ends it at
	// once (so that Close need not wait for the next keep-alive).
	ka, err := r.cli.KeepAlive(r.runCtx, lease.ID)
	if err != nil {
		return nil, fmt.Errorf("ring: keep lease alive: %w", err)
	}
	return ka, nil
}

func (r *Registration) keep(ctx context.Context, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	defer close(r.done)
	for {
		for range ka {
		}
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("limiter membership lease lost; registering again", slog.String("member", r.key))
		for {
			var err error
			if ka, err = r.register(ctx); err == nil {
				break
			}
			r.log.Warn("limiter membership registration failed", slog.Any("error", err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// Close deregisters the member by revoking its lease. Without etcd quorum
// it gives up after a second: the lease then expires by itself.
func (r *Registration) Close() error {
	r.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := r.cli.Revoke(ctx, clientv3.LeaseID(r.lease.Load()))
	<-r.done
	if err != nil {
		return fmt.Errorf("ring: revoke lease: %w", err)
	}
	return nil
}

// WatchConfig configures a Watcher.
type WatchConfig struct {
	Etcd   *clientv3.Client
	Prefix string // default DefaultPrefix
	Logger *slog.Logger
	// OnChange, if set, is called with each new ring, one call at a time.
	OnChange func(*Ring)
	// ProgressInterval is how often the watcher asks etcd to confirm the
	// watch is current (a progress request); a watch that stays silent
	// for three intervals is taken as broken and the members are listed
	// again. So a ring is never staler than about 3x this interval, even
	// when a watch stream stalls without an error. Default 5 s.
	ProgressInterval time.Duration
}

// Watcher follows the members under a prefix. One watcher serves every
// part of a process that needs the membership (OnChange adds listeners).
type Watcher struct {
	cfg       WatchConfig
	ring      atomic.Pointer[Ring]
	mu        sync.Mutex // orders publishing and adding listeners
	listeners []func(*Ring)
	synced    atomic.Int64 // unix nanos of the last list or watch response
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// Watch lists the members, then follows changes until Close. It returns
// once the first list is known.
func Watch(ctx context.Context, cfg WatchConfig) (*Watcher, error) {
	if cfg.Etcd == nil {
		return nil, errors.New("ring: watch needs an etcd client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = 5 * time.Second
	}
	w := &Watcher{cfg: cfg}
	if cfg.OnChange != nil {
		w.listeners = append(w.listeners, cfg.OnChange)
	}
	members, rev, err := w.list(ctx)
	if err != nil {
		return nil, err
	}
	w.publish(members)
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.cancel = cancel
	w.wg.Go(func() { w.run(runCtx, members, rev) })
	return w, nil
}

// Ring returns the current members.
func (w *Watcher) Ring() *Ring { return w.ring.Load() }

// OnChange adds f to the functions called with each new ring, one call at
// a time; rings published before it was added are not replayed.
func (w *Watcher) OnChange(f func(*Ring)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.listeners = append(w.listeners, f)
}

// Close stops watching.
func (w *Watcher) Close() error {
	w.cancel()
	w.wg.Wait()
	return nil
}

func (w *Watcher) list(ctx context.Context) (map[string]string, int64, error) {
	resp, err := w.cfg.Etcd.Get(ctx, w.cfg.Prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("ring: list members: %w", err)
	}
	members := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		members[strings.TrimPrefix(string(kv.Key), w.cfg.Prefix)] = string(kv.Value)
	}
	w.synced.Store(time.Now().UnixNano())
	return members, resp.Header.Revision, nil
}

func (w *Watcher) publish(members map[string]string) {
	ms := make([]Member, 0, len(members))
	for id, addr := range members {
		ms = append(ms, Member{ID: id, Addr: addr})
	}
	r := New(ms)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ring.Store(r)
	for _, f := range w.listeners {
		f(r)
	}
}

// run follows the prefix from rev. On a compaction, a lost leader, a
// closed channel or a silent watch it lists again and resumes from the
// listed revision, so that no departure is ever skipped.
func (w *Watcher) run(ctx context.Context, members map[string]string, rev int64) {
	for ctx.Err() == nil {
		// Its own metadata gives this watch its own gRPC stream: etcd
		// answers a progress request only when every watch on the stream
		// is current, so another package's lagging watch cannot mute ours.
		wctx := metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(ctx), "x-keygate-ring-watch", w.cfg.Prefix)
		wctx, cancel := context.WithCancel(wctx)
		// From rev, not rev+1: etcd answers progress requests only for
		// watches that start at or below its current revision, and events
		// at rev are already in members, so applying them again is a no-op.
		ch := w.cfg.Etcd.Watch(wctx, w.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
		rev = w.follow(wctx, ch, members, rev)
		cancel()
		for ctx.Err() == nil {
			m, r, err := w.list(ctx)
			if err == nil {
				// A silent watch in a quiet cluster lists the same members:
				// do not make OnChange rescan for nothing.
				if !maps.Equal(members, m) {
					w.publish(m)
				}
				members, rev = m, r
				break
			}
			w.cfg.Logger.Warn("limiter membership list failed", slog.Any("error", err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// follow applies the watch's events to members until the watch fails,
// ends, or answers no progress request for three intervals; it returns
// the last revision seen.
func (w *Watcher) follow(ctx context.Context, ch clientv3.WatchChan, members map[string]string, rev int64) int64 {
	tick := time.NewTicker(w.cfg.ProgressInterval)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return rev
		case <-tick.C:
			if time.Since(last) > 3*w.cfg.ProgressInterval {
				w.cfg.Logger.Warn("limiter membership watch is silent; listing again")
				return rev
			}
			// The context carries the watch's metadata, so the request
			// goes on the watch's own stream.
			if err := w.cfg.Etcd.RequestProgress(ctx); err != nil {
				w.cfg.Logger.Debug("limiter membership progress request failed", slog.Any("error", err))
			}
		case resp, ok := <-ch:
			if !ok {
				return rev
			}
			if err := resp.Err(); err != nil {
				w.cfg.Logger.Warn("limiter membership watch failed; listing again", slog.Any("error", err))
				return rev
			}
			last = time.Now()
			w.synced.Store(last.UnixNano())
			for _, ev := range resp.Events {
				id := strings.TrimPrefix(string(ev.Kv.Key), w.cfg.Prefix)
				if ev.Type == clientv3.EventTypeDelete {
					delete(members, id)
				} else {
					members[id] = string(ev.Kv.Value)
				}
			}
			rev = resp.Header.Revision
			if len(resp.Events) > 0 {
				w.publish(members)
			}
		}
	}
}
