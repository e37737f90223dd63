package limiter

import (
	"context"
	"log/slog"
	"sync"
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/limitkey"
)

// Replication bounds what a crash (kill -9) of a key's holder can lose.
// Every ReplicateEvery the holder sends the state of each key that changed
// to the key's next owner on the ring: the owner the ring names once the
// holder is gone. The next owner keeps it as a replica. When it takes a
// key over and nobody holds it (the holder is gone), it starts from the
// replica instead of empty windows, raised to the ledger's day and period
// totals. A crash then loses the decisions of the last interval and the
// replica sends in flight, not a window.

// replicateTimeout bounds one Replicate call: a next owner that does not
// answer gets the keys again with the next changes.
const replicateTimeout = time.Second

func (s *Server) replicateLoop(ctx context.Context) {
	var down peerStates
	clock.Every(ctx, s.cfg.ReplicateEvery, func() { s.replicate(ctx, &down) })
}

// replicate sends the keys that changed since the last call to their next
// owners, one call per replica, in parallel. Keys whose call failed are
// sent again next time.
func (s *Server) replicate(ctx context.Context, down *peerStates) {
	states := s.table.Changed()
	if len(states) == 0 {
		return
	}
	r := s.watcher.Ring()
	self := map[string]bool{s.id: true}
	groups := map[string][]*limiterv1.KeySnapshot{}
	for _, st := range states {
		if m, ok := r.OwnerExcept(limitkey.Shard(st.GetKey()), self); ok {
			groups[m.Addr] = append(groups[m.Addr], st)
		}
	}
	var wg sync.WaitGroup
	for addr, batch := range groups {
		wg.Go(func() {
			err := s.sendReplicas(ctx, addr, batch)
			down.set(s.log, addr, err)
			if err != nil && ctx.Err() == nil {
				keys := make([]string, len(batch))
				for i, st := range batch {
					keys[i] = st.GetKey()
				}
				s.table.Requeue(keys)
			}
		})
	}
	wg.Wait()
}

func (s *Server) sendReplicas(ctx context.Context, addr string, states []*limiterv1.KeySnapshot) error {
	cl, err := s.peers.Replica(addr)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, replicateTimeout)
	defer cancel()
	for start := 0; start < len(states); start += handoverBatch {
		req := &limiterv1.ReplicateRequest{Holder: s.id, States: states[start:min(start+handoverBatch, len(states))]}
		if _, err := cl.Replicate(s.hopContext(cctx), req); err != nil {
			return err
		}
	}
	return nil
}

// Replicate implements LimiterService.Replicate.
func (s *Server) Replicate(ctx context.Context, req *limiterv1.ReplicateRequest) (*limiterv1.ReplicateResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	if s.replicas != nil {
		s.replicas.Put(s.clock.Now(), req.GetStates())
	}
	return &limiterv1.ReplicateResponse{}, nil
}

// peerStates logs a peer that stops taking replicas once, and again when
// it takes them again, rather than on every interval.
type peerStates struct {
	mu   sync.Mutex
	down map[string]bool
}

func (p *peerStates) set(log *slog.Logger, addr string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	was := p.down[addr]
	switch {
	case err != nil && !was:
		if p.down == nil {
			p.down = map[string]bool{}
		}
		p.down[addr] = true
		log.Warn("limiter replica does not take key replicas", slog.String("replica", addr), slog.Any("error", err))
	case err == nil && was:
		delete(p.down, addr)
		log.Info("limiter replica takes key replicas again", slog.String("replica", addr))
	}
}

// takeReplica returns key's replica, if this replica has one.
func (s *Server) takeReplica(key string) *limiterv1.KeySnapshot {
	if s.replicas == nil {
		return nil
	}
	return s.replicas.Take(key)
}
