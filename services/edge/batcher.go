package edge

import (
	"context"
	"time"
)

// batcher paces a background sender (usage records, settlements): it is
// woken for a queue's first item or a full batch only, since a wakeup per
// request costs more than the item, and a small batch lingers for more.
type batcher struct {
	wake  chan struct{}
	full  int           // a batch this large goes at once
	delay time.Duration // how long a smaller one waits
	t     *time.Timer
}

func newBatcher(full int, delay time.Duration) *batcher {
	return &batcher{wake: make(chan struct{}, 1), full: full, delay: delay}
}

// queued tells the sender that its queue now holds n items.
func (b *batcher) queued(n int) {
	if n == 1 || n == b.full {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

// next waits until size() has a batch to send: something, after the
// delay, or a full batch at once. It reports false once ctx ended: what
// is queued then is the flush's at Close.
func (b *batcher) next(ctx context.Context, size func() int) bool {
	for size() == 0 {
		select {
		case <-ctx.Done():
			return false
		case <-b.wake:
		}
	}
	if b.t == nil {
		b.t = time.NewTimer(b.delay)
	} else {
		b.t.Reset(b.delay)
	}
	for size() < b.full {
		select {
		case <-b.t.C:
			return true
		case <-ctx.Done():
			return false
		case <-b.wake:
		}
	}
	return ctx.Err() == nil
}
