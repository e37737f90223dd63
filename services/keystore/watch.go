package keystore

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// ErrStreamBroken ends a change stream whose etcd watch failed (compaction,
// lost leader, closed channel); the client reopens it and resets.
var ErrStreamBroken = errors.New("key change stream interrupted; reconnect and reset")

// progressInterval is how often an idle stream reports progress, which
// bounds how stale a cache can be without knowing it.
const progressInterval = time.Second

type changeSender func(*keystorev1.WatchKeyChangesResponse) error

// watchKeyChanges sends a RESET, then every key change after the revision
// the reset stands for, so nothing between the two is skipped.
func (s *Server) watchKeyChanges(ctx context.Context, send changeSender) error {
	resp, err := s.etcd.Get(ctx, keysDir, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStreamBroken, err)
	}
	rev := resp.Header.Revision
	if err := send(&keystorev1.WatchKeyChangesResponse{
		Type: keystorev1.WatchKeyChangesResponse_TYPE_RESET, Revision: rev,
	}); err != nil {
		return err
	}
	return s.followKeys(ctx, rev+1, send)
}

func (s *Server) followKeys(ctx context.Context, from int64, send changeSender) error {
	// Without a leader a member may serve a stale view: fail instead.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.etcd.Watch(wctx, keysDir, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if err := s.etcd.RequestProgress(wctx); err != nil {
				return fmt.Errorf("%w: %w", ErrStreamBroken, err)
			}
		case wr, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("%w: watch closed", ErrStreamBroken)
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("%w: %w", ErrStreamBroken, err)
			}
			if wr.IsProgressNotify() {
				if err := send(&keystorev1.WatchKeyChangesResponse{
					Type: keystorev1.WatchKeyChangesResponse_TYPE_PROGRESS, Revision: wr.Header.Revision,
				}); err != nil {
					return err
				}
				continue
			}
			for _, ev := range wr.Events {
				t := keystorev1.WatchKeyChangesResponse_TYPE_UPDATED
				if ev.Type == clientv3.EventTypeDelete {
					t = keystorev1.WatchKeyChangesResponse_TYPE_DELETED
				}
				if err := send(&keystorev1.WatchKeyChangesResponse{
					Type: t, Key: path.Base(string(ev.Kv.Key)), Revision: ev.Kv.ModRevision,
				}); err != nil {
					return err
				}
			}
		}
	}
}
