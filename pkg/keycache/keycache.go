// Package keycache verifies API keys at the edge with a local cache that
// follows the keystore's change stream, so that a disable, expire, rotate or
// delete takes effect within the stream's latency rather than after a TTL.
//
// Only positive answers are cached, under the SHA-256 of the full key text
// (never the text itself). An entry is dropped when its key changes, and
// everything is dropped when the stream resets or ends. Expiry and rotation
// grace are checked against the clock on every hit. When the stream has not
// been heard from for MaxStaleness, the cache is bypassed.
package keycache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/clock"
	"github.com/keygate/keygate/pkg/keyformat"
)

// ErrInvalidKey is returned, possibly wrapped, for every invalid key:
// malformed, unknown, disabled, expired or deleted.
var ErrInvalidKey = errors.New("invalid API key")

// keystore is the part of the keystore client the verifier uses.
type keystore interface {
	VerifyKey(ctx context.Context, in *keystorev1.VerifyKeyRequest, opts ...grpc.CallOption) (*keystorev1.VerifyKeyResponse, error)
	WatchKeyChanges(ctx context.Context, in *keystorev1.WatchKeyChangesRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[keystorev1.WatchKeyChangesResponse], error)
}

// Options tune a Verifier.
type Options struct {
	Clock  clock.Clock // nil = clock.Real{}
	Logger *slog.Logger
	// MaxStaleness bounds how long the cache is trusted without a message
	// from the change stream; default 5s.
	MaxStaleness time.Duration
	// Timeout bounds a cache miss's call to the keystore, so a stalled
	// keystore fails the request instead of hanging it; default 2s.
	Timeout time.Duration
}

// maxKeyLen bounds the key text hashed on the stack; longer text is not a
// keygate key.
const maxKeyLen = 128

type digest = [sha256.Size]byte

type entry struct {
	key *keystorev1.Key
	// Unix nanoseconds after which the entry is invalid; 0 = never.
	expire int64
	// secretExpire is set when the secret is the pre-rotation one.
	secretExpire int64
}

// Verifier is a cached key verifier. Safe for concurrent use.
type Verifier struct {
	ks       keystore
	clock    clock.Clock
	log      *slog.Logger
	maxStale int64
	timeout  time.Duration

	mu      sync.RWMutex
	entries map[digest]entry
	byKey   map[string][]digest
	// gen counts invalidations; an answer fetched before one is not cached.
	gen uint64
	// healthy is set from a RESET until the stream ends.
	healthy bool
	// lastHeard is the clock's Unix nanoseconds at the last stream message.
	lastHeard atomic.Int64
}

// New returns a Verifier; call Run to follow the change stream. Until the
// stream is up, every Verify asks the keystore.
func New(client keystorev1.KeystoreServiceClient, opts Options) *Verifier {
	v := &Verifier{
		ks:       client,
		clock:    opts.Clock,
		log:      opts.Logger,
		maxStale: int64(opts.MaxStaleness),
		timeout:  opts.Timeout,
		entries:  map[digest]entry{},
		byKey:    map[string][]digest{},
	}
	if v.clock == nil {
		v.clock = clock.Real{}
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.maxStale <= 0 {
		v.maxStale = int64(5 * time.Second)
	}
	if v.timeout <= 0 {
		v.timeout = 2 * time.Second
	}
	return v
}

// Verify returns the key that secret belongs to. The returned Key is shared
// with the cache: do not modify it. Invalid keys give ErrInvalidKey; an
// unreachable keystore gives another error.
func (v *Verifier) Verify(ctx context.Context, secret string) (*keystorev1.Key, error) {
	if len(secret) > maxKeyLen {
		return nil, ErrInvalidKey
	}
	// Hash from a stack copy: no allocation on a hit.
	var buf [maxKeyLen]byte
	n := copy(buf[:], secret)
	h := sha256.Sum256(buf[:n])
	now := v.clock.Now().UnixNano()

	v.mu.RLock()
	e, hit := v.entries[h]
	usable := v.healthy && now-v.lastHeard.Load() <= v.maxStale
	gen := v.gen
	v.mu.RUnlock()
	if hit && usable {
		if (e.expire != 0 && now >= e.expire) || (e.secretExpire != 0 && now >= e.secretExpire) {
			return nil, ErrInvalidKey
		}
		return e.key, nil
	}
	return v.fetch(ctx, secret, h, gen, usable)
}

func (v *Verifier) fetch(ctx context.Context, secret string, h digest, gen uint64, cache bool) (*keystorev1.Key, error) {
	// A malformed key is rejected here, without a call.
	if _, err := keyformat.Parse(secret); err != nil {
		return nil, ErrInvalidKey
	}
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	resp, err := v.ks.VerifyKey(ctx, &keystorev1.VerifyKeyRequest{Secret: secret})
	cancel()
	if status.Code(err) == codes.Unauthenticated {
		return nil, ErrInvalidKey
	}
	if err != nil {
		return nil, fmt.Errorf("keycache: keystore unreachable: %w", err)
	}
	k := resp.GetKey()
	if !cache {
		return k, nil
	}
	e := entry{key: k}
	if t := k.GetExpireTime(); t != nil {
		e.expire = t.AsTime().UnixNano()
	}
	if t := resp.GetSecretExpireTime(); t != nil {
		e.secretExpire = t.AsTime().UnixNano()
	}
	v.mu.Lock()
	// Skip the insert if anything was invalidated since the lookup: the
	// answer may predate the change.
	if v.gen == gen && v.healthy {
		if _, ok := v.entries[h]; !ok {
			v.entries[h] = e
			v.byKey[k.GetId()] = append(v.byKey[k.GetId()], h)
		}
	}
	v.mu.Unlock()
	return k, nil
}

// Len reports the number of cached verifications.
func (v *Verifier) Len() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.entries)
}

// Run follows the change stream until ctx ends, reconnecting with backoff.
// It returns ctx's error.
func (v *Verifier) Run(ctx context.Context) error {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	for {
		reset, err := v.follow(ctx)
		v.setHealthy(false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if reset {
			backoff = minBackoff
		}
		v.log.WarnContext(ctx, "key change stream ended; the cache is bypassed until it resumes", "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// follow reads one change stream; reset tells whether it got as far as a
// RESET, so the backoff can start over.
func (v *Verifier) follow(ctx context.Context) (reset bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := v.ks.WatchKeyChanges(ctx, &keystorev1.WatchKeyChangesRequest{})
	if err != nil {
		return false, err
	}
	for {
		msg, err := st.Recv()
		if err != nil {
			return reset, err
		}
		v.lastHeard.Store(v.clock.Now().UnixNano())
		switch msg.GetType() {
		case keystorev1.WatchKeyChangesResponse_TYPE_RESET:
			reset = true
			v.setHealthy(true)
		case keystorev1.WatchKeyChangesResponse_TYPE_UPDATED, keystorev1.WatchKeyChangesResponse_TYPE_DELETED:
			v.drop(msg.GetKey())
		}
	}
}

// setHealthy drops everything and marks whether the stream is trusted.
func (v *Verifier) setHealthy(ok bool) {
	v.mu.Lock()
	clear(v.entries)
	clear(v.byKey)
	v.gen++
	v.healthy = ok
	v.mu.Unlock()
}

func (v *Verifier) drop(id string) {
	v.mu.Lock()
	for _, h := range v.byKey[id] {
		delete(v.entries, h)
	}
	delete(v.byKey, id)
	v.gen++
	v.mu.Unlock()
}
