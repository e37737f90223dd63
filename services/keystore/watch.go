package keystore

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// ErrStreamBroken ends a change stream whose etcd watch failed (lost
// leader, closed channel); the client reopens it from its last revision.
var ErrStreamBroken = errors.New("key change stream interrupted; reconnect and resume")

// progressInterval is how often an idle stream reports progress, which
// bounds how stale a cache can be without knowing it.
const progressInterval = time.Second

type changeSender func(*keystorev1.WatchKeyChangesResponse) error

// watchKeyChanges streams the key changes after revision start. With start
// 0, or when the changes after start are no longer known (compacted, or a
// revision etcd has not reached, as after a restore from backup), it first
// sends a RESET at the current revision, then every change after it, so
// nothing between the two is skipped. A watch compacted away mid-stream
// resets the same way instead of ending the stream.
func (s *Server) watchKeyChanges(ctx context.Context, start int64, send changeSender) error {
	if start < 0 {
		return invalid("start_revision", "must not be negative")
	}
	for {
		head, err := s.keysHead(ctx)
		if err != nil {
			return err
		}
		if start == 0 || start > head {
			if err := send(&keystorev1.WatchKeyChangesResponse{
				Type: keystorev1.WatchKeyChangesResponse_TYPE_RESET, Revision: head,
			}); err != nil {
				return err
			}
			start = head
		}
		err = s.followKeys(ctx, start, send)
		if !errors.Is(err, rpctypes.ErrCompacted) {
			return err
		}
		// The changes since start are gone: the client must start over.
		s.log.InfoContext(ctx, "key changes after the stream's revision were compacted; resetting the stream", "revision", start)
		start = 0
	}
}

// keysHead is etcd's current revision, read through a linearizable count
// of the keys.
func (s *Server) keysHead(ctx context.Context) (int64, error) {
	resp, err := s.etcd.Get(ctx, keysDir, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrStreamBroken, err)
	}
	return resp.Header.Revision, nil
}

// followKeys sends the key changes after revision after, and progress.
// The etcd watch starts at after itself, whose changes are skipped: etcd
// reports no progress to a watch that starts past its current revision,
// which would leave an idle stream silent.
func (s *Server) followKeys(ctx context.Context, after int64, send changeSender) error {
	// Without a leader a member may serve a stale view: fail instead.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// One watch over the range from the keys to the level markers, so that
	// both arrive in revision order; what lies between is skipped.
	wch := s.etcd.Watch(wctx, keysDir, clientv3.WithRange(clientv3.GetPrefixRangeEnd(levelDir)),
		clientv3.WithRev(after), clientv3.WithProgressNotify())
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
				if ev.Kv.ModRevision <= after {
					continue
				}
				m := changeOf(ev)
				if m == nil {
					continue
				}
				if err := send(m); err != nil {
					return err
				}
			}
		}
	}
}

// changeOf is the stream message for one etcd event: a key's change, or a
// level marker's (a workspace's or member's); nil for anything else.
func changeOf(ev *clientv3.Event) *keystorev1.WatchKeyChangesResponse {
	k, rev := string(ev.Kv.Key), ev.Kv.ModRevision
	if id, ok := strings.CutPrefix(k, keysDir); ok {
		t := keystorev1.WatchKeyChangesResponse_TYPE_UPDATED
		if ev.Type == clientv3.EventTypeDelete {
			t = keystorev1.WatchKeyChangesResponse_TYPE_DELETED
		}
		return &keystorev1.WatchKeyChangesResponse{Type: t, Key: path.Base(id), Revision: rev}
	}
	level, ok := strings.CutPrefix(k, levelDir)
	if !ok {
		return nil
	}
	// level/<ws>/w or level/<ws>/m/<member>; workspace ids hold no '/'.
	ws, rest, _ := strings.Cut(level, "/")
	if member, ok := strings.CutPrefix(rest, "m/"); ok {
		return &keystorev1.WatchKeyChangesResponse{Type: keystorev1.WatchKeyChangesResponse_TYPE_MEMBER_UPDATED,
			Workspace: ws, Member: member, Revision: rev}
	}
	if rest != "w" {
		return nil
	}
	return &keystorev1.WatchKeyChangesResponse{Type: keystorev1.WatchKeyChangesResponse_TYPE_WORKSPACE_UPDATED,
		Workspace: ws, Revision: rev}
}
