// Package keycache verifies API keys at the edge with a local cache that
// follows the keystore's change stream, so that a disable, expire, rotate or
// delete takes effect within the stream's latency rather than after a TTL.
//
// Positive answers are cached under the SHA-256 of the full key text (never
// the text itself) and answer without a call, with the key's workspace and
// member (its limit levels); an entry is dropped when its key, its
// workspace or its member changes. Expiry and rotation grace are checked against the clock on
// every hit. A cache miss always asks the keystore. The keystore's
// rejections are remembered too, but they only answer when the keystore
// cannot: a key known to be revoked stays rejected through an outage, while
// a key the cache has never seen fails closed (an error, not a rejection).
//
// Keygate keys are checked by format first: a malformed one is rejected
// without a call. Text without keygate's prefix may be a key imported from
// another system (keyformat.PlausibleLegacy): it is looked up, and a
// keystore that does not know it is believed for UnknownTTL, so that
// repeated unknown tokens reach the keystore once per TTL.
//
// A lost keystore degrades the cache, it does not stop it. When the change
// stream ends or errors, or stays silent for MaxStaleness, the cache keeps
// every entry and reopens the stream with backoff from the last revision it
// applied, on whichever keystore replica the connection picks; the changes
// made meanwhile are then applied, so a key revoked while the stream was
// down is rejected once it resumes. Only a RESET (the keystore no longer
// knows the changes since that revision, as after a compaction) drops the
// cache. The cache answers for at most MaxUnconfirmed after the last message
// heard from the stream; past that bound it stops answering and every
// Verify asks the keystore (fail closed: no keystore, no verification) until
// the stream is heard again.
package keycache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/limitpolicy"
	"github.com/keygate/keygate/pkg/keyformat"
)

// ErrInvalidKey is returned, possibly wrapped, for every invalid key:
// malformed, unknown, disabled, expired or deleted.
var ErrInvalidKey = errors.New("invalid API key")

// errSilent ends a stream that was not heard from for MaxStaleness.
var errSilent = errors.New("keycache: key change stream silent")

// keystore is the part of the keystore client the verifier uses.
type keystore interface {
	VerifyKey(ctx context.Context, in *keystorev1.VerifyKeyRequest, opts ...grpc.CallOption) (*keystorev1.VerifyKeyResponse, error)
	WatchKeyChanges(ctx context.Context, in *keystorev1.WatchKeyChangesRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[keystorev1.WatchKeyChangesResponse], error)
}

// Options tune a Verifier.
type Options struct {
	Clock  clock.Clock // nil = clock.Real{}
	Logger *slog.Logger
	// MaxUnconfirmed bounds how long the cache answers after the last
	// message heard from the change stream (the keystore reports progress
	// every second): past it, while the stream is down or silent, every
	// Verify asks the keystore. Default 3m.
	MaxUnconfirmed time.Duration
	// MaxStaleness is how long an open change stream may stay silent
	// before it is taken for lost and reopened; default 5s.
	MaxStaleness time.Duration
	// Timeout bounds a cache miss's call to the keystore, so a stalled
	// keystore fails the request instead of hanging it; default 2s.
	Timeout time.Duration
	// Meter, if set, exports keygate.keycache.unconfirmed_seconds.
	Meter metric.MeterProvider
	// UnknownTTL is how long an imported-style secret the keystore did
	// not know is rejected without asking again; default 30s.
	UnknownTTL time.Duration
}

// maxKeyLen bounds the key text hashed on the stack; longer text is no
// kind of key.
const maxKeyLen = keyformat.MaxLegacyLen

// maxRejected bounds the remembered rejections; past it an arbitrary one
// is forgotten for each new one.
const maxRejected = 10_000

// maxUnknown bounds the remembered unknown imported-style secrets.
const maxUnknown = 10_000

type digest = [sha256.Size]byte

type entry struct {
	ver *Verified
	// Unix nanoseconds after which the entry is invalid; 0 = never.
	expire int64
	// secretExpire is set when the secret is the pre-rotation one.
	secretExpire int64
}

// Verifier is a cached key verifier. Safe for concurrent use.
type Verifier struct {
	ks             keystore
	clock          clock.Clock
	log            *slog.Logger
	maxUnconfirmed int64
	maxStale       int64
	timeout        time.Duration
	// Reconnection backoff of the change stream.
	minBackoff, maxBackoff time.Duration

	mu      sync.RWMutex
	entries map[digest]entry
	// rejected maps secrets the keystore rejected to their key's id.
	rejected map[digest]string
	// byKey lists the digests of entries and rejections by key id.
	byKey map[string][]digest
	// unknown holds imported-style secrets the keystore did not know.
	unknown *unknown
	// gen counts invalidations; an answer fetched before one is not cached.
	gen uint64
	// synced is set by the first RESET: from then on the cache stands for
	// revision rev plus what was fetched since.
	synced bool
	// rev is the revision the stream resumes after.
	rev int64

	// lastHeard is the clock's Unix nanoseconds at the last stream message
	// (at New before the first).
	lastHeard atomic.Int64
	// streaming is set while a stream is open and has been heard from.
	streaming atomic.Bool
	// pastBound is set once the bound's passing is logged, until the stream
	// is heard again.
	pastBound atomic.Bool
}

// New returns a Verifier; call Run to follow the change stream. Until the
// stream is up, every Verify asks the keystore.
func New(client keystorev1.KeystoreServiceClient, opts Options) *Verifier {
	v := &Verifier{
		ks:             client,
		clock:          opts.Clock,
		log:            opts.Logger,
		maxUnconfirmed: int64(opts.MaxUnconfirmed),
		maxStale:       int64(opts.MaxStaleness),
		timeout:        opts.Timeout,
		minBackoff:     50 * time.Millisecond,
		maxBackoff:     5 * time.Second,
		entries:        map[digest]entry{},
		rejected:       map[digest]string{},
		byKey:          map[string][]digest{},
	}
	if v.clock == nil {
		v.clock = clock.Real{}
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.maxUnconfirmed <= 0 {
		v.maxUnconfirmed = int64(3 * time.Minute)
	}
	if v.maxStale <= 0 {
		v.maxStale = int64(5 * time.Second)
	}
	if v.timeout <= 0 {
		v.timeout = 2 * time.Second
	}
	ttl := opts.UnknownTTL
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	v.unknown = newUnknown(int64(ttl), maxUnknown)
	v.lastHeard.Store(v.clock.Now().UnixNano())
	if opts.Meter != nil {
		if err := v.register(opts.Meter); err != nil {
			v.log.Error("keycache: metrics", "err", err)
		}
	}
	return v
}

func (v *Verifier) register(mp metric.MeterProvider) error {
	_, err := mp.Meter("github.com/keygate/keygate/internal/keycache").Float64ObservableGauge("keygate.keycache.unconfirmed_seconds",
		metric.WithUnit("s"),
		metric.WithDescription("Time since the key cache last heard its change stream, while the stream is down or silent (0 while it is confirmed). Past the configured bound the cache stops answering."),
		metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error {
			o.Observe(v.Unconfirmed().Seconds())
			return nil
		}))
	return err
}

// Unconfirmed is how long the cache has gone unconfirmed: the time since
// the change stream was last heard while it is down or silent, 0 while it
// is up.
func (v *Verifier) Unconfirmed() time.Duration {
	d := v.clock.Now().UnixNano() - v.lastHeard.Load()
	if v.streaming.Load() && d <= v.maxStale {
		return 0
	}
	return time.Duration(max(d, 0))
}

// Verify returns the key that secret belongs to, with its levels. The
// returned value is shared with the cache: do not modify it. Invalid keys
// give ErrInvalidKey; an
// unreachable keystore gives another error, unless the cache can answer:
// within MaxUnconfirmed of the stream's last message, a cached key verifies
// and a key the keystore rejected before stays rejected.
func (v *Verifier) Verify(ctx context.Context, secret string) (*Verified, error) {
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
	synced := v.synced
	gen := v.gen
	v.mu.RUnlock()
	answering := synced && now-v.lastHeard.Load() <= v.maxUnconfirmed
	if hit && answering {
		if (e.expire != 0 && now >= e.expire) || (e.secretExpire != 0 && now >= e.secretExpire) {
			return nil, ErrInvalidKey
		}
		return e.ver, nil
	}
	if synced && !answering {
		v.boundPassed(ctx)
	}
	return v.fetch(ctx, secret, h, gen, answering)
}

// fetch asks the keystore. answering tells whether the cache could answer
// when the keystore cannot.
func (v *Verifier) fetch(ctx context.Context, secret string, h digest, gen uint64, answering bool) (*Verified, error) {
	// Rejected here, without a call: a malformed keygate key, text that
	// is no kind of key, an imported-style secret found unknown lately.
	var id string
	if keyformat.Prefixed(secret) {
		parsed, err := keyformat.Parse(secret)
		if err != nil {
			return nil, ErrInvalidKey
		}
		id = parsed.ID
	} else if !keyformat.PlausibleLegacy(secret) || v.unknown.has(h, v.clock.Now().UnixNano()) {
		return nil, ErrInvalidKey
	}
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	resp, err := v.ks.VerifyKey(ctx, &keystorev1.VerifyKeyRequest{Secret: secret})
	cancel()
	if c := status.Code(err); c == codes.Unauthenticated || c == codes.NotFound {
		if id == "" {
			v.forgetUnknown(h)
			return nil, ErrInvalidKey
		}
		v.reject(h, id, gen)
		return nil, ErrInvalidKey
	}
	if err != nil {
		if answering && v.wasRejected(h) {
			return nil, ErrInvalidKey
		}
		return nil, fmt.Errorf("keycache: keystore unreachable: %w", err)
	}
	k := resp.GetKey()
	e := entry{ver: &Verified{Levels: levels(resp)}}
	if t := k.GetExpireTime(); t != nil {
		e.expire = t.AsTime().UnixNano()
	}
	if t := resp.GetSecretExpireTime(); t != nil {
		e.secretExpire = t.AsTime().UnixNano()
	}
	v.mu.Lock()
	// Skip the insert if anything was invalidated since the lookup: the
	// answer may predate the change. An answer fetched while the stream is
	// down is as safe to keep as the entries: the stream resumes from an
	// earlier revision and replays any later change.
	if v.gen == gen && v.synced {
		delete(v.rejected, h)
		if _, ok := v.entries[h]; !ok {
			v.byKey[k.GetId()] = append(v.byKey[k.GetId()], h)
		}
		v.entries[h] = e
	}
	v.mu.Unlock()
	return e.ver, nil
}

// levels are the key of an answer with the workspace and member it
// carries; one that belongs to another key's workspace or owner is not
// used, so a level is never applied to a key it does not govern.
func levels(resp *keystorev1.VerifyKeyResponse) limitpolicy.Levels {
	k := resp.GetKey()
	l := limitpolicy.Levels{Key: k}
	if ws := resp.GetWorkspace(); ws != nil && ws.GetId() == k.GetWorkspace() {
		l.Workspace = ws
	}
	if m := resp.GetMember(); m != nil && m.GetWorkspace() == k.GetWorkspace() && m.GetMember() == k.GetOwner() {
		l.Member = m
	}
	return l
}

// forgetUnknown records that the keystore does not know the imported-style
// secret h, and drops what was cached for it.
func (v *Verifier) forgetUnknown(h digest) {
	v.unknown.add(h, v.clock.Now().UnixNano())
	v.mu.Lock()
	if e, ok := v.entries[h]; ok {
		delete(v.entries, h)
		v.unindex(e.ver.Levels.Key.GetId(), h)
	}
	v.mu.Unlock()
}

// reject forgets a cached answer the keystore now rejects and remembers
// the rejection.
func (v *Verifier) reject(h digest, id string, gen uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	// Whatever the stream said, the keystore's word is newer.
	delete(v.entries, h)
	if v.gen != gen || !v.synced {
		return
	}
	if _, ok := v.rejected[h]; ok {
		return
	}
	if len(v.rejected) >= maxRejected {
		for old, oldID := range v.rejected {
			delete(v.rejected, old)
			v.unindex(oldID, old)
			break
		}
	}
	v.rejected[h] = id
	v.byKey[id] = append(v.byKey[id], h)
}

// unindex removes h from byKey[id]. Called with mu held.
func (v *Verifier) unindex(id string, h digest) {
	hs := v.byKey[id]
	for i, x := range hs {
		if x == h {
			hs[i] = hs[len(hs)-1]
			hs = hs[:len(hs)-1]
			break
		}
	}
	if len(hs) == 0 {
		delete(v.byKey, id)
		return
	}
	v.byKey[id] = hs
}

func (v *Verifier) wasRejected(h digest) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	_, ok := v.rejected[h]
	return ok
}

// boundPassed logs, once until the stream is heard again, that the cache
// stopped answering.
func (v *Verifier) boundPassed(ctx context.Context) {
	if v.pastBound.Load() {
		return
	}
	d := v.clock.Now().UnixNano() - v.lastHeard.Load()
	if d <= v.maxUnconfirmed || !v.pastBound.CompareAndSwap(false, true) {
		return // heard again meanwhile, or logged
	}
	v.log.WarnContext(ctx, "key cache unconfirmed for longer than its bound; every verification asks the keystore until the change stream resumes",
		"unconfirmed", time.Duration(d).String(),
		"max_unconfirmed", time.Duration(v.maxUnconfirmed).String())
}

// Len reports the number of cached verifications.
func (v *Verifier) Len() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.entries)
}

// Run follows the change stream until ctx ends, reopening it with backoff
// from the last revision applied. It returns ctx's error.
func (v *Verifier) Run(ctx context.Context) error {
	backoff := v.minBackoff
	reported := false
	for {
		heard, err := v.follow(ctx)
		if ctx.Err() != nil {
			v.streaming.Store(false)
			return ctx.Err()
		}
		if heard {
			backoff = v.minBackoff
			reported = false
		}
		if !reported {
			reported = true
			v.mu.RLock()
			synced, rev, n := v.synced, v.rev, len(v.entries)
			v.mu.RUnlock()
			if synced {
				v.log.WarnContext(ctx, "key change stream lost; cached keys keep answering until it resumes or the bound passes",
					"err", err, "revision", rev, "cached", n, "max_unconfirmed", time.Duration(v.maxUnconfirmed).String())
			} else {
				v.log.WarnContext(ctx, "key change stream unavailable; every verification asks the keystore until it is up", "err", err)
			}
		}
		v.streaming.Store(false)
		v.mu.RLock()
		synced := v.synced
		v.mu.RUnlock()
		if synced && v.clock.Now().UnixNano()-v.lastHeard.Load() > v.maxUnconfirmed {
			v.boundPassed(ctx)
		}
		// Jitter spreads the edges' reconnections to a restarted keystore.
		wait := backoff/2 + rand.N(backoff/2+1)
		v.log.DebugContext(ctx, "reopening the key change stream", "err", err, "in", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, v.maxBackoff)
	}
}

// follow reads one change stream, opened after the last revision applied
// (a RESET first when there is none); heard tells whether it got a message,
// so the backoff can start over.
func (v *Verifier) follow(ctx context.Context) (heard bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	v.mu.RLock()
	from := v.rev
	if !v.synced {
		from = 0
	}
	v.mu.RUnlock()
	st, err := v.ks.WatchKeyChanges(ctx, &keystorev1.WatchKeyChangesRequest{StartRevision: from})
	if err != nil {
		return false, err
	}
	var last atomic.Int64 // when this stream was last heard
	last.Store(v.clock.Now().UnixNano())
	go v.watchdog(ctx, cancel, &last)
	for {
		msg, err := st.Recv()
		if err != nil {
			if cause := context.Cause(ctx); errors.Is(cause, errSilent) {
				err = cause
			}
			return heard, err
		}
		now := v.clock.Now().UnixNano()
		last.Store(now)
		first := !heard
		heard = true
		rev := msg.GetRevision()
		switch msg.GetType() {
		case keystorev1.WatchKeyChangesResponse_TYPE_RESET:
			v.reset(rev)
			if first && from == 0 {
				v.log.InfoContext(ctx, "key change stream up", "revision", rev)
			} else {
				v.log.WarnContext(ctx, "key change stream resynced: the changes since the cache's revision are gone (compacted); cache dropped",
					"from_revision", from, "revision", rev)
			}
		case keystorev1.WatchKeyChangesResponse_TYPE_UPDATED, keystorev1.WatchKeyChangesResponse_TYPE_DELETED:
			// Other changes may share the revision: resume before it.
			v.drop(msg.GetKey(), rev-1)
		case keystorev1.WatchKeyChangesResponse_TYPE_WORKSPACE_UPDATED:
			v.dropLevel(msg.GetWorkspace(), "", rev-1)
		case keystorev1.WatchKeyChangesResponse_TYPE_MEMBER_UPDATED:
			v.dropLevel(msg.GetWorkspace(), msg.GetMember(), rev-1)
		case keystorev1.WatchKeyChangesResponse_TYPE_PROGRESS:
			v.advance(rev)
		}
		prev := v.lastHeard.Swap(now)
		if first && from != 0 && msg.GetType() != keystorev1.WatchKeyChangesResponse_TYPE_RESET {
			v.log.InfoContext(ctx, "key change stream resumed; cached keys confirmed",
				"from_revision", from, "unconfirmed", time.Duration(now-prev).String())
		}
		v.pastBound.Store(false)
		v.streaming.Store(true)
	}
}

// watchdog ends the stream when it was not heard from for maxStale: a
// peer that vanished without closing the connection, or a stuck keystore.
func (v *Verifier) watchdog(ctx context.Context, cancel context.CancelCauseFunc, last *atomic.Int64) {
	// Cancelling ends ctx, and with it the loop.
	clock.Every(ctx, min(max(time.Duration(v.maxStale)/5, 10*time.Millisecond), time.Second), func() {
		if v.clock.Now().UnixNano()-last.Load() > v.maxStale {
			cancel(errSilent)
		}
	})
}

// reset drops everything: the cache now stands for revision rev.
func (v *Verifier) reset(rev int64) {
	v.mu.Lock()
	clear(v.entries)
	clear(v.rejected)
	clear(v.byKey)
	v.unknown.clear()
	v.gen++
	v.synced = true
	v.rev = rev
	v.mu.Unlock()
}

// drop forgets what is cached for key id; the stream resumes after rev.
func (v *Verifier) drop(id string, rev int64) {
	v.mu.Lock()
	for _, h := range v.byKey[id] {
		delete(v.entries, h)
		delete(v.rejected, h)
	}
	delete(v.byKey, id)
	v.gen++
	v.rev = max(v.rev, rev)
	v.mu.Unlock()
}

// dropLevel forgets what is cached for every key of workspace ws (member
// "") or every key member owns in ws; the stream resumes after rev. It
// scans the entries rather than keep an index per workspace and member:
// such changes are rare next to the lookups an index would slow down.
// Rejections stay: a level's change makes no rejected key valid.
func (v *Verifier) dropLevel(ws, member string, rev int64) {
	v.mu.Lock()
	for h, e := range v.entries {
		k := e.ver.Levels.Key
		if k.GetWorkspace() == ws && (member == "" || k.GetOwner() == member) {
			delete(v.entries, h)
			v.unindex(k.GetId(), h)
		}
	}
	v.gen++
	v.rev = max(v.rev, rev)
	v.mu.Unlock()
}

// advance records that nothing changed up to rev.
func (v *Verifier) advance(rev int64) {
	v.mu.Lock()
	v.rev = max(v.rev, rev)
	v.mu.Unlock()
}
