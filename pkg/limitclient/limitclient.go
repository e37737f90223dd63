// Package limitclient calls the limiter replicas, sending each item straight
// to the replica that owns its key (rendezvous hashing over the live
// members in etcd) and, when that replica cannot answer, to the next owner
// in rendezvous order, within the caller's deadline.
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
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/pkg/ring"
)

// ErrUnavailable means no limiter replica could answer.
var ErrUnavailable = errors.New("limiter unavailable")

// Config configures a Client.
type Config struct {
	Etcd *clientv3.Client
	// DialOptions for the replicas; default plaintext (loopback, tests).
	DialOptions []grpc.DialOption
	Logger      *slog.Logger
}

// Client routes limiter calls to key owners.
type Client struct {
	cfg     Config
	watcher *ring.Watcher

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // by address
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
	c := &Client{cfg: cfg, conns: make(map[string]*grpc.ClientConn)}
	w, err := ring.Watch(ctx, ring.WatchConfig{Etcd: cfg.Etcd, Logger: cfg.Logger, OnChange: c.prune})
	if err != nil {
		return nil, fmt.Errorf("limitclient: %w", err)
	}
	c.watcher = w
	return c, nil
}

// Close stops following the membership and closes the connections.
func (c *Client) Close() error {
	err := c.watcher.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, cc := range c.conns {
		err = errors.Join(err, cc.Close())
		delete(c.conns, addr)
	}
	return err
}

// prune closes connections to departed members.
func (c *Client) prune(r *ring.Ring) {
	live := make(map[string]bool, r.Len())
	for _, m := range r.Members() {
		live[m.Addr] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, cc := range c.conns {
		if !live[addr] {
			_ = cc.Close()
			delete(c.conns, addr)
		}
	}
}

func (c *Client) conn(addr string) (limiterv1.LimiterServiceClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cc := c.conns[addr]
	if cc == nil {
		var err error
		if cc, err = grpc.NewClient(addr, c.cfg.DialOptions...); err != nil {
			return nil, fmt.Errorf("limiter %s: %w", addr, err)
		}
		c.conns[addr] = cc
	}
	return limiterv1.NewLimiterServiceClient(cc), nil
}

// Check decides items; results are in item order. Items are grouped per
// owner into one call each.
func (c *Client) Check(ctx context.Context, items []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error) {
	out := make([]*limiterv1.CheckResult, len(items))
	err := route(ctx, c, len(items), func(i int) string { return items[i].GetKey() },
		func(ctx context.Context, cl limiterv1.LimiterServiceClient, idx []int) error {
			req := &limiterv1.CheckRequest{Items: make([]*limiterv1.CheckItem, len(idx))}
			for j, i := range idx {
				req.Items[j] = items[i]
			}
			resp, err := cl.Check(ctx, req)
			if err != nil {
				return err
			}
			if len(resp.GetResults()) != len(idx) {
				return status.Errorf(codes.Internal, "limiter answered %d results for %d items", len(resp.GetResults()), len(idx))
			}
			for j, i := range idx {
				out[i] = resp.Results[j]
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return out, nil
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
	err := route(ctx, c, len(s), func(i int) string { return s[i].GetKey() },
		func(ctx context.Context, cl limiterv1.LimiterServiceClient, idx []int) error {
			req := &limiterv1.SettleRequest{Settlements: make([]*limiterv1.Settlement, len(idx))}
			for j, i := range idx {
				req.Settlements[j] = s[i]
			}
			resp, err := cl.Settle(ctx, req)
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
	err := route(ctx, c, len(r), func(i int) string { return r[i].GetKey() },
		func(ctx context.Context, cl limiterv1.LimiterServiceClient, idx []int) error {
			req := &limiterv1.ReleaseRequest{Releases: make([]*limiterv1.Release, len(idx))}
			for j, i := range idx {
				req.Releases[j] = r[i]
			}
			resp, err := cl.Release(ctx, req)
			unknown.Add(resp.GetUnknown())
			return err
		})
	return unknown.Load(), err
}

// route sends n items, grouped by owner, with call; a group whose member
// cannot answer goes again, regrouped, to the next owners in rendezvous
// order, until every item is answered, no member is left, or ctx ends.
func route(ctx context.Context, c *Client, n int, key func(int) string,
	call func(context.Context, limiterv1.LimiterServiceClient, []int) error,
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
		groups := map[ring.Member][]int{}
		for _, i := range pending {
			m, ok := r.OwnerExcept(key(i), skip)
			if !ok {
				if lastErr == nil {
					lastErr = errors.New("no limiter registered")
				}
				return fmt.Errorf("%w: %w", ErrUnavailable, lastErr)
			}
			groups[m] = append(groups[m], i)
		}
		pending = pending[:0]
		var (
			mu       sync.Mutex
			wg       sync.WaitGroup
			fatalErr error
		)
		for m, idx := range groups {
			wg.Go(func() {
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
				c.cfg.Logger.Warn("limiter replica did not answer; trying the next owner", slog.String("member", m.ID), slog.Any("error", err))
				skip[m.ID] = true
				lastErr = err
				pending = append(pending, idx...)
			})
		}
		wg.Wait()
		if fatalErr != nil {
			return fatalErr
		}
	}
	return nil
}

// attempt calls one member. With a deadline, an attempt may use half of
// what is left, so that a hung replica leaves time for the next owner.
func (c *Client) attempt(ctx context.Context, m ring.Member, idx []int,
	call func(context.Context, limiterv1.LimiterServiceClient, []int) error,
) error {
	cl, err := c.conn(m.Addr)
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Until(dl)/2)
		defer cancel()
	}
	return call(ctx, cl, idx)
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
