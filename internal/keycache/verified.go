package keycache

import (
	"sync"
	"sync/atomic"
	"time"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/limitpolicy"
)

// Verified is a verified key with its workspace and member (the levels its
// requests are decided against), and the Check item templates built from
// them, one per model. It lives as long as the key's cache entry: any change
// of the key, its workspace or its member drops the entry, and with it the
// templates. Shared with the cache: read only. The zero value with Levels
// set is ready to use.
type Verified struct {
	Levels limitpolicy.Levels

	// items maps a model to its template. It is copied on write: a model
	// is built once per entry, then read on every request without a lock.
	items atomic.Pointer[map[string]template]
	mu    sync.Mutex // serialises writers of items
}

// template is a Check item template and when it stops being valid (an
// override in force ends; Unix ns, 0 = never).
type template struct {
	item  *limiterv1.CheckItem
	until int64
}

// Item is the Check item template for model at now (limitpolicy.Item),
// built once per model and rebuilt when an override it applied expires, so
// the override reverts at that instant. The template is shared: the caller
// copies it to set the reservation id and the estimates, and modifies
// nothing it points to.
func (v *Verified) Item(model string, now time.Time) (*limiterv1.CheckItem, error) {
	ns := now.UnixNano()
	if m := v.items.Load(); m != nil {
		if t, ok := (*m)[model]; ok && (t.until == 0 || ns < t.until) {
			return t.item, nil
		}
	}
	it, err := limitpolicy.Item(v.Levels, model, now)
	if err != nil {
		return nil, err
	}
	t := template{item: it}
	if e := limitpolicy.Expiry(v.Levels, now); !e.IsZero() {
		t.until = e.UnixNano()
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	old := v.items.Load()
	next := make(map[string]template, 1)
	if old != nil {
		for k, x := range *old {
			next[k] = x
		}
	}
	next[model] = t
	v.items.Store(&next)
	return it, nil
}
